"""Statistics of how a metric changes along an axis (parameters, FLOPs or training steps).

Pure numpy/pandas: curves in, numbers or tables out.

- Where and how fast: `transition_point` (mid-range crossing, in log x), `sharpness` (largest
  change per decade of x).
- How sudden, scale-free: BIG-bench's `linearity` and `breakthroughness` (Srivastava et al.
  2022); `emergence_score` (Schaeffer et al. 2023) is the same formula as breakthroughness.
- Phenomenon-specific: `grokking_steps` (Power et al. 2022), the lead of the restricted loss
  over test accuracy (Nanda et al. 2023, analysis.progress.lead), `phase_change_step` of the
  induction loss and whether it coincides with the prefix-matching rise (Olsson et al. 2022),
  `plateau_drop` of a loss that plateaus and then drops abruptly (Barak et al. 2022).
- Seeds: `bootstrap_ci`. `summarize` turns a scores table into a table of all of these.

Curves are given in axis order; points with a NaN value are dropped, and on log axes so are
points with x <= 0 (e.g. step 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import progress
from analysis.mechanistic import POSITION_PREFIX

# Columns of the scores table that are not run coordinates (see analysis.runs.score).
TABLE_COLUMNS = ("run", "params", "non_embedding_params", "step", "tokens", "flops", "metric",
                 "value")
# Coordinates that set a model's size: they vary along the params and FLOPs axes.
SIZE_COORDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "model")
# Nanda et al.'s progress measures: restricted loss halves well before test accuracy moves.
PROGRESS_EVENTS = ("restricted_halved_step", "lead_steps", "lead_evaluations", "excluded_ratio")
# Per-head scores feed heatmaps, per-position ones forecasts, not curve statistics.
PER_HEAD_PREFIX = "prefix_matching/"
PER_POSITION_PREFIX = POSITION_PREFIX


def _curve(x, y, log_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as float arrays sorted by x, without points where y (a curve [n] or several
    [n, k]) is NaN, nor x <= 0 when log_x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(y) if y.ndim == 1 else np.isfinite(y).all(axis=1)
    keep = np.isfinite(x) & finite & ((x > 0) if log_x else True)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _trend(y: np.ndarray) -> float:
    """+1 if the curve's maximum comes after its minimum (it rises), -1 if before, 0 if flat."""
    return float(np.sign(np.argmax(y) - np.argmin(y)))


def transition_point(x, y) -> float:
    """The x where y first crosses the middle of its range in its overall direction,
    interpolated linearly in log x; NaN for a flat curve or fewer than two points."""
    x, y = _curve(x, y)
    if len(y) < 2 or y.max() == y.min():
        return float("nan")
    z = _trend(y) * (y - (y.max() + y.min()) / 2)  # negative before the crossing
    i = int(np.flatnonzero((z[:-1] < 0) & (z[1:] >= 0))[0])
    t = -z[i] / (z[i + 1] - z[i])
    log_x = np.log10(x)
    return float(10 ** (log_x[i] + t * (log_x[i + 1] - log_x[i])))


def sharpness(x, y) -> float:
    """Largest change of y per decade of x between neighbouring points, in y's overall direction
    (so positive for a rising accuracy and for a falling loss alike)."""
    x, y = _curve(x, y)
    if len(y) < 2:
        return float("nan")
    return float(np.max(_trend(y) * np.diff(y) / np.diff(np.log10(x))))


def _jump(y: np.ndarray) -> float:
    """BIG-bench's I = sign(argmax y - argmin y) * (max y - min y)."""
    return _trend(y) * (y.max() - y.min())


def _relative_jump(y, average) -> float:
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) < 2:
        return float("nan")
    jump = _jump(y)
    if jump == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        return float(jump / np.sqrt(average(np.diff(y) ** 2)))


def linearity(y) -> float:
    """I / root-mean-square of successive differences (BIG-bench): high when y climbs in
    equal steps. y in axis order."""
    return _relative_jump(y, np.mean)


def breakthroughness(y) -> float:
    """I / root-median-square of successive differences (BIG-bench): high when most steps are
    small and a few are large (inf when all but one step are flat). y in axis order."""
    return _relative_jump(y, np.median)


# Schaeffer et al. 2023's emergence score, sign(argmax - argmin) (max - min) /
# sqrt(median((y_i - y_{i-1})^2)), is BIG-bench's breakthroughness.
emergence_score = breakthroughness


def grokking_steps(steps, train_acc, test_acc, threshold: float = 0.99) -> dict[str, float]:
    """First step where train accuracy reaches `threshold` (memorization), first step where
    test accuracy does (generalization), and their ratio: the delay grokking is named for.
    NaN where a threshold is never reached."""

    def first_reach(acc) -> float:
        x, y = _curve(steps, acc, log_x=False)
        reached = np.flatnonzero(y >= threshold)
        return float(x[reached[0]]) if len(reached) else float("nan")

    memorization, generalization = first_reach(train_acc), first_reach(test_acc)
    ratio = generalization / memorization if memorization > 0 else float("nan")
    return {"memorization_step": memorization, "generalization_step": generalization,
            "ratio": ratio}


def _steepest(x: np.ndarray, y: np.ndarray, log: bool) -> int | None:
    """Index i of the segment (x[i], x[i+1]) where y falls fastest; None if y never falls."""
    if len(y) < 2:
        return None
    slopes = np.diff(y) / (np.diff(np.log(x)) if log else np.diff(x))
    i = int(np.argmin(slopes))
    return i if slopes[i] < 0 else None


def phase_change_step(steps, loss, log: bool = True) -> float:
    """Middle of the segment between checkpoints where `loss` falls fastest (NaN if it never
    falls).

    Per log-step by default (midpoint: the geometric mean of the two steps): scale-free, so it
    treats log-spaced checkpoints (Pythia's 0, 1, 2, 4, ...) and evenly spaced ones alike, and
    is not drawn to the large early drop from the initial loss. log=False: per step."""
    x, y = _curve(steps, loss, log_x=log)
    i = _steepest(x, y, log)
    if i is None:
        return float("nan")
    return float(np.sqrt(x[i] * x[i + 1]) if log else (x[i] + x[i + 1]) / 2)


def phase_change_coincides(steps, loss, prefix_matching, tolerance: int = 1,
                           log: bool = True) -> bool:
    """Whether the loss falls and prefix matching rises, with the steepest fall and the
    steepest rise within `tolerance` checkpoint intervals of each other (Olsson et al. 2022's
    co-occurrence of the phase change and induction-head formation)."""
    x, both = _curve(steps, np.stack([loss, prefix_matching], axis=1), log_x=log)
    drop, rise = _steepest(x, both[:, 0], log), _steepest(x, -both[:, 1], log)
    return drop is not None and rise is not None and abs(drop - rise) <= tolerance


def plateau_drop(steps, loss, band: float = 0.1) -> dict[str, float]:
    """A plateau, then an abrupt drop, in a falling curve against steps (Barak et al. 2022's
    sparse parity). `drop_end` is the first step where the loss comes within `band` of its range
    of its minimum; the plateau is the median loss before it; `drop_start` is the last step
    before drop_end where the loss is still within `band` (of the plateau-to-minimum fall) of
    the plateau. `abruptness` = (drop_start - first step) / (drop_end - drop_start): the plateau's
    length in units of the drop's; about 1 for a linear or exponential fall, far above 1 for a
    long plateau ended by a sudden drop. NaN where the loss never falls.

    All of this reads the curve through a running median of three evaluations, so a spike at a
    single evaluation (an Adam instability, up or down) neither stretches the range nor ends the
    plateau; a change that lasts two evaluations or more is kept, edges and all.
    """
    x, y = _curve(steps, loss, log_x=False)
    if len(y) >= 3:
        y[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    end = int(np.flatnonzero(y <= y.min() + band * (y.max() - y.min()))[0]) if len(y) else 0
    if end == 0:  # no point before the floor: the curve does not fall
        return {"drop_start": float("nan"), "drop_end": float("nan"), "abruptness": float("nan")}
    plateau = np.median(y[:end])
    start = int(np.flatnonzero(y[:end] >= plateau - band * (plateau - y.min()))[-1])
    return {"drop_start": float(x[start]), "drop_end": float(x[end]),
            "abruptness": float((x[start] - x[0]) / (x[end] - x[start]))}


def bootstrap_ci(values, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of `values` (e.g. one number per seed) and its 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    resampled = np.random.default_rng(seed).choice(values, size=(n, len(values))).mean(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def curve_statistics(wide: pd.DataFrame, axis: str) -> dict[tuple[str, str], float]:
    """{(metric, statistic): value} for a table with one column per metric, indexed by the
    axis (`params`, `flops` or `step`) in increasing order."""
    x = wide.index.to_numpy(dtype=float)
    stats = {}
    for metric in wide.columns:
        y = wide[metric].to_numpy(dtype=float)
        _, in_order = _curve(x, y, log_x=False)
        stats[(metric, "transition")] = transition_point(x, y)
        stats[(metric, "sharpness")] = sharpness(x, y)
        stats[(metric, "linearity")] = linearity(in_order)
        stats[(metric, "breakthroughness")] = breakthroughness(in_order)
    if axis != "step":
        return stats
    if "eval/loss" in wide.columns:
        for name, value in plateau_drop(x, wide["eval/loss"]).items():
            stats[("eval/loss", name)] = value
    if {"train_eval/exact_match", "eval/exact_match"} <= set(wide.columns):
        grok = grokking_steps(x, wide["train_eval/exact_match"], wide["eval/exact_match"])
        for name, value in grok.items():
            stats[("eval/exact_match", name if name != "ratio" else "grokking_ratio")] = value
    if {"restricted_loss", "excluded_loss", "train_eval/exact_match",
            "eval/exact_match"} <= set(wide.columns):
        for name, value in progress.lead(wide).items():
            if name in PROGRESS_EVENTS:
                stats[("restricted_loss", name)] = value
    if "induction_loss" in wide.columns:
        stats[("induction_loss", "phase_change_step")] = phase_change_step(
            x, wide["induction_loss"])
        if "prefix_matching_max" in wide.columns:
            stats[("induction_loss", "coincides_with_prefix_matching")] = float(
                phase_change_coincides(x, wide["induction_loss"], wide["prefix_matching_max"]))
    return stats


def _wide(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One column per metric, one row per axis value (mean over duplicates, e.g. seeds)."""
    return table.pivot_table(index=axis, columns="metric", values="value", aggfunc="mean")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Emergence statistics of a scores table (see analysis.runs.score), one row per
    (series, metric, axis, statistic).

    Along `params` and `flops`: each run's last checkpoint, one series per combination of the
    coordinates that do not set the model's size or seed. Along `step`: one series per run
    configuration up to its seed. `value` is the statistic of the seed-averaged curve;
    `seed_mean`, `ci_low`, `ci_high` summarize the per-seed statistics (bootstrap_ci)."""
    df = df[~df["metric"].str.startswith((PER_HEAD_PREFIX, PER_POSITION_PREFIX))]
    coords = [c for c in df.columns if c not in TABLE_COLUMNS]
    last = df[df["step"] == df.groupby("run")["step"].transform("max")]
    rows = []
    for axis, table, exclude in (("params", last, SIZE_COORDS), ("flops", last, SIZE_COORDS),
                                 ("step", df, ())):
        keys = [c for c in coords if c not in exclude and c != "seed"]
        groups = table.groupby(keys, dropna=False) if keys else [((), table)]
        for key, series in groups:
            key = key if isinstance(key, tuple) else (key,)
            seeds = series.groupby("seed", dropna=False) if "seed" in series else [(0, series)]
            per_seed = [curve_statistics(_wide(s, axis), axis) for _, s in seeds]
            for (metric, statistic), value in curve_statistics(_wide(series, axis), axis).items():
                ci = bootstrap_ci([stats.get((metric, statistic)) for stats in per_seed])
                rows.append({**dict(zip(keys, key, strict=True)), "axis": axis,
                             "metric": metric, "statistic": statistic, "value": value,
                             "seed_mean": ci["mean"], "ci_low": ci["low"], "ci_high": ci["high"],
                             "n_seeds": len(per_seed)})
    return pd.DataFrame(rows)
