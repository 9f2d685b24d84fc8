"""Statistics of how a metric changes along an axis (parameters, FLOPs or training steps), of
one curve (one seed); analysis.summary takes them over seeds.

Pure numpy/pandas: curves in, numbers or tables out.

- Where and how fast: `transition_point` (mid-range crossing, in log x), `sharpness` (largest
  change per decade of x).
- How sudden, scale-free: BIG-bench's `linearity` and `breakthroughness` (Srivastava et al.
  2022); `emergence_score` (Schaeffer et al. 2023) is the same formula as breakthroughness.
  `curve_statistics` gives none of the four below MIN_POINTS distinct x values.
- Phenomenon-specific: `grokking_steps` (Power et al. 2022), the lead of the restricted loss
  over test accuracy (Nanda et al. 2023, analysis.progress.lead), `phase_change` of the
  induction loss, `head_formation_step` and whether the two coincide (Olsson et al. 2022),
  `plateau_drop` of a loss that plateaus and then drops abruptly (Barak et al. 2022).

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
                 "value", "finite_train_set")
# Coordinates that set a model's size: they vary along the params and FLOPs axes.
SIZE_COORDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "model")
# Nanda et al.'s progress measures: restricted loss halves well before test accuracy moves.
PROGRESS_EVENTS = ("restricted_halved_step", "lead_steps", "lead_evaluations", "excluded_ratio")
# Per-head scores feed heatmaps, per-position ones forecasts, not curve statistics.
PER_HEAD_PREFIX = "prefix_matching/"
PER_POSITION_PREFIX = POSITION_PREFIX
# Distinct x values (rungs, evaluations) below which a curve statistic is no number: with three
# points, every monotone curve has linearity = breakthroughness = sqrt 2.
MIN_POINTS = 5
# A phase change: a fall of at least half the curve's total fall and half its initial value,
# within a fifth of the steps the curve spans (see phase_change). A fifth holds the induction
# loss's fall at 1,500 steps (~300 steps, 3.4 -> 0.1), where a tenth cuts it in two.
PHASE_CHANGE_WINDOW = 0.2
PHASE_CHANGE_FALL = 0.5
# An induction head has formed once max prefix matching reaches 0.5 (a head attending half its
# weight to the token after the previous occurrence); it coincides with the phase change when
# it forms within the window widened by 5% of the steps spanned on each side.
HEAD_THRESHOLD = 0.5
COINCIDENCE_TOLERANCE = 0.05


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


def _crossing(x, y) -> tuple[np.ndarray, int, float] | None:
    """(x, i, t): y first crosses the middle of its range, in its overall direction, between
    points i and i + 1, a fraction t of the way; None for a flat curve or under two points."""
    x, y = _curve(x, y)
    if len(y) < 2 or y.max() == y.min():
        return None
    z = _trend(y) * (y - (y.max() + y.min()) / 2)  # negative before the crossing
    i = int(np.flatnonzero((z[:-1] < 0) & (z[1:] >= 0))[0])
    return x, i, float(-z[i] / (z[i + 1] - z[i]))


def transition_point(x, y) -> float:
    """The x where y first crosses the middle of its range in its overall direction,
    interpolated linearly in log x; NaN for a flat curve or fewer than two points. Between two
    rungs the interpolation places the crossing by how far each sits from mid-range, not by
    any measurement in the gap: `crossing_rungs` says what the ladder resolves."""
    found = _crossing(x, y)
    if found is None:
        return float("nan")
    x, i, t = found
    log_x = np.log10(x)
    return float(10 ** (log_x[i] + t * (log_x[i + 1] - log_x[i])))


def crossing_rungs(x, y) -> tuple[float, float]:
    """The two neighbouring x values (rungs, evaluations) between which y first crosses the
    middle of its range: all a ladder can say about where a step happens; NaNs as
    transition_point."""
    found = _crossing(x, y)
    if found is None:
        return float("nan"), float("nan")
    x, i, _ = found
    return float(x[i]), float(x[i + 1])


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


def running_median(y: np.ndarray) -> np.ndarray:
    """y through a running median of three evaluations (edges kept): a spike at one evaluation
    (an Adam instability, up or down) goes, a change that lasts two evaluations or more stays."""
    y = np.array(y, dtype=float)
    if len(y) >= 3:
        y[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return y


def phase_change(steps, loss, window: float = PHASE_CHANGE_WINDOW,
                 fall: float = PHASE_CHANGE_FALL) -> dict[str, float]:
    """The phase change of a loss (>= 0, falling towards 0) against steps, or none.

    Rule, on the loss through `running_median`: a phase change is the largest fall within a
    window spanning `window` (a fraction) of the steps the curve spans (at least one evaluation
    interval), named only where that fall is at least `fall` of the curve's total fall
    (initial - final) AND at least `fall` of its initial value: most of what the curve ever
    falls, and large in absolute terms, in a short time. The second condition keeps a model
    that barely learns (a small total fall, most of it early) from having a "phase change".
    `start` and `end` are the window's evaluations, trimmed of flat ends; `step` is where the
    loss crosses the middle of the fall (linear interpolation). Always returned: `largest_fall`
    (in any window) and `required_fall`; `step`, `start`, `end` are NaN where there is no phase
    change or fewer than MIN_POINTS evaluations.
    """
    x, y = _curve(steps, loss, log_x=False)
    none = {"step": float("nan"), "start": float("nan"), "end": float("nan")}
    if len(y) < MIN_POINTS:
        return {**none, "largest_fall": float("nan"), "required_fall": float("nan")}
    y = running_median(y)
    width = max(window * (x[-1] - x[0]), float(np.min(np.diff(x))))
    best, i, j = -np.inf, 0, 0
    for a in range(len(x)):
        reach = np.flatnonzero((x >= x[a]) & (x <= x[a] + width))
        b = int(reach[np.argmin(y[reach])])
        if y[a] - y[b] > best:
            best, i, j = y[a] - y[b], a, b
    while i < j and y[i + 1] >= y[i]:  # trim flat or rising ends: the window is where it falls
        i += 1
    while j > i and y[j - 1] <= y[j]:
        j -= 1
    required = fall * max(y[0] - y[-1], y[0])
    found = {"largest_fall": float(best), "required_fall": float(required)}
    if best < required or best <= 0:
        return {**none, **found}
    middle = (y[i] + y[j]) / 2
    k = i + int(np.flatnonzero(y[i:j + 1] <= middle)[0])  # first evaluation at or past it
    t = (y[k - 1] - middle) / (y[k - 1] - y[k])
    return {"step": float(x[k - 1] + t * (x[k] - x[k - 1])), "start": float(x[i]),
            "end": float(x[j]), **found}


def head_formation_step(steps, prefix_matching, threshold: float = HEAD_THRESHOLD) -> float:
    """First evaluation where max prefix matching (through `running_median`) reaches
    `threshold`: an induction head has formed (Olsson et al. 2022). NaN if it never does."""
    x, y = _curve(steps, prefix_matching, log_x=False)
    reached = np.flatnonzero(running_median(y) >= threshold)
    return float(x[reached[0]]) if len(reached) else float("nan")


def phase_change_coincides(change: dict[str, float], head_step: float,
                           tolerance: float) -> float:
    """1.0 if the head forms within the phase change's window widened by `tolerance` steps on
    each side, 0.0 if not, NaN where there is no phase change or no head to compare."""
    if not (np.isfinite(change["step"]) and np.isfinite(head_step)):
        return float("nan")
    return float(change["start"] - tolerance <= head_step <= change["end"] + tolerance)


def plateau_drop(steps, loss, band: float = 0.1) -> dict[str, float]:
    """A plateau, then an abrupt drop, in a falling curve against steps (Barak et al. 2022's
    sparse parity). `drop_end` is the first step where the loss comes within `band` of its range
    of its minimum; the plateau is the median loss before it; `drop_start` is the last step
    before drop_end where the loss is still within `band` (of the plateau-to-minimum fall) of
    the plateau. `abruptness` = (drop_start - first step) / (drop_end - drop_start): the plateau's
    length in units of the drop's; about 1 for a linear or exponential fall, far above 1 for a
    long plateau ended by a sudden drop. NaN where the loss never falls.

    All of this reads the curve through `running_median`, so a spike at a single evaluation
    neither stretches the range nor ends the plateau.
    """
    x, y = _curve(steps, loss, log_x=False)
    y = running_median(y)
    end = int(np.flatnonzero(y <= y.min() + band * (y.max() - y.min()))[0]) if len(y) else 0
    if end == 0:  # no point before the floor: the curve does not fall
        return {"drop_start": float("nan"), "drop_end": float("nan"), "abruptness": float("nan")}
    plateau = np.median(y[:end])
    start = int(np.flatnonzero(y[:end] >= plateau - band * (plateau - y.min()))[-1])
    return {"drop_start": float(x[start]), "drop_end": float(x[end]),
            "abruptness": float((x[start] - x[0]) / (x[end] - x[start]))}


def _too_few(n: int, unit: str, statistic: str) -> str:
    """e.g. "3 rungs: too few for breakthroughness (needs 5)"."""
    unit = unit.removesuffix("s") if n == 1 else unit
    return f"{n} {unit}: too few for {statistic} (needs {MIN_POINTS})"


def across(x: np.ndarray, y: np.ndarray, unit: str) -> dict[str, tuple[float, str]]:
    """transition, sharpness, linearity, breakthroughness of one curve; no number (and why)
    below MIN_POINTS distinct x: any monotone 3-point curve has breakthroughness sqrt 2."""
    x, y = _curve(x, y, log_x=False)
    functions = {"transition": lambda: transition_point(x, y), "sharpness": lambda: sharpness(x, y),
                 "linearity": lambda: linearity(y), "breakthroughness": lambda: breakthroughness(y)}
    n = len(np.unique(x))
    if n < MIN_POINTS:
        return {name: (float("nan"), _too_few(n, unit, name)) for name in functions}
    return {name: (function(), "") for name, function in functions.items()}


def _induction(x: np.ndarray, wide: pd.DataFrame) -> dict[tuple[str, str], tuple[float, str]]:
    """The phase change of the induction loss (`phase_change_step`, `_start`, `_end`,
    `_largest_fall`, `_required_fall`), the head's formation and whether they coincide
    (within COINCIDENCE_TOLERANCE of the steps spanned)."""
    change = phase_change(x, wide["induction_loss"])
    found = np.isfinite(change["step"])
    if found:
        why = ""
    elif np.isfinite(change["required_fall"]):
        largest, required = change["largest_fall"], change["required_fall"]
        why = f"none: largest fall {largest:.3g}, needs {required:.3g}"
    else:
        why = _too_few(len(x), "evaluations", "a phase change")
    stats = {("induction_loss", f"phase_change_{name}"):
             (value, why if name in ("step", "start", "end") else "")
             for name, value in change.items()}
    if "prefix_matching_max" in wide.columns:
        head = head_formation_step(x, wide["prefix_matching_max"])
        peak = np.nanmax(wide["prefix_matching_max"].to_numpy(dtype=float))
        stats[("prefix_matching_max", "head_formation_step")] = (
            head, "" if np.isfinite(head) else
            f"none: max prefix matching peaks at {peak:.2f} (< {HEAD_THRESHOLD})")
        tolerance = COINCIDENCE_TOLERANCE * (x.max() - x.min())
        coincides = phase_change_coincides(change, head, tolerance)
        stats[("induction_loss", "coincides_with_prefix_matching")] = (
            coincides, "" if np.isfinite(coincides) else
            "no phase change" if not found else "no induction head")
    return stats


def curve_statistics(wide: pd.DataFrame, axis: str,
                     finite: bool = True) -> dict[tuple[str, str], tuple[float, str]]:
    """{(metric, statistic): (value, why there is none)} for one curve: a table with one column
    per metric, indexed by the axis (`params`, `flops` or `step`). The reason is "" where there
    is a value; a detector that finds nothing gives NaN and a reason starting "none". Grokking
    and the progress measures only where the run has a `finite` training set: with fresh
    problems every step there is nothing to memorize."""
    x = wide.index.to_numpy(dtype=float)
    unit = "evaluations" if axis == "step" else "rungs"
    stats = {(metric, name): value for metric in wide.columns
             for name, value in across(x, wide[metric], unit).items()}
    if axis != "step":
        return stats
    if "eval/loss" in wide.columns:
        for name, value in plateau_drop(x, wide["eval/loss"]).items():
            stats[("eval/loss", name)] = (value, "" if np.isfinite(value) else "none: no fall")
    if finite and {"train_eval/exact_match", "eval/exact_match"} <= set(wide.columns):
        grok = grokking_steps(x, wide["train_eval/exact_match"], wide["eval/exact_match"])
        never = {"memorization_step": "none: train accuracy never reaches 0.99",
                 "generalization_step": "none: test accuracy never reaches 0.99",
                 "ratio": "none: an accuracy never reaches 0.99"}
        for name, value in grok.items():
            stats[("eval/exact_match", name if name != "ratio" else "grokking_ratio")] = (
                value, "" if np.isfinite(value) else never[name])
    if finite and {"restricted_loss", "excluded_loss", "train_eval/exact_match",
                   "eval/exact_match"} <= set(wide.columns):
        for name, value in progress.lead(wide).items():
            if name in PROGRESS_EVENTS:
                stats[("restricted_loss", name)] = (value, "" if np.isfinite(value) else (
                    "none: not memorized, restricted loss never halves, or test accuracy never "
                    "reaches 0.95"))
    if "induction_loss" in wide.columns:
        stats |= _induction(x, wide)
    return stats
