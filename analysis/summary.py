"""Emergence statistics over seeds: the tidy summary table and a way to read it. The verdicts and
findings are each phenomenon's (analysis.phenomena).

Every statistic of analysis.emergence is computed per seed (each seed's ladder of runs against
parameters or FLOPs, each run's curve against steps), then averaged over the seeds that have a
value, with a 95% t-interval over them (`t_interval`; on a log scale for ratios, cut at zero for
steps). Against size, `summarize(..., over="mean")` instead takes each statistic of the curve of
seed means with a bootstrap over the seeds of each rung (`of_mean_curve`), as BIG-bench computed
them on aggregate curves. Measured on the demo ladder's seed sets 0-4 and 5-9
(docs/experiments.md), the per-seed verdict on exact match held (sudden on both) where the
mean-curve one did not: where seeds solve the task at different rungs, their mean is a
staircase, not a step. summary.csv, one row per statistic:

| column | meaning |
|---|---|
| run coordinates (task, n_layers, ...) | the series: what the statistic is of, up to the seed |
| `axis` | `params`, `flops` (each run's last checkpoint) or `step` |
| `metric`, `statistic` | e.g. `eval/exact_match`, `breakthroughness` |
| `value` | mean over the seeds that have a value (geometric mean for breakthroughness) |
| `low`, `high` | the 95% t-interval of that mean (of the mean log for breakthroughness, a ratio |
| | that varies over seeds by factors); empty with one seed |
| `n_seeds` | seeds with a value |
| `n_points` | distinct x values of the curve (rungs or evaluations), largest over seeds |
| `note` | why there is no value ("3 rungs: too few for breakthroughness (needs 5)", |
| | "none: ..."), or in how many seeds there is none |

Read one statistic with `estimate(summary, "eval/exact_match", "breakthroughness")`, which
returns (value, low, high); coordinates narrow it, e.g. `n_layers=2`. The transition of exact
match on each slice of the eval set (analysis.phenomena.subskills.report.slice_transitions) is
there too, as metric `eval/exact_match@<slice>`: which sub-skill appears at which size or step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis import emergence, phenomena
from analysis.emergence import SIZE_COORDS, TABLE_COLUMNS, curve_statistics

COLUMNS = ("axis", "metric", "statistic", "value", "low", "high", "n_seeds", "n_points", "note")
# Two-sided 95% quantiles of Student's t with 1..30 degrees of freedom (the normal's 1.96 beyond).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
INTERVAL = "95% t-interval over seeds"


class Estimate(NamedTuple):
    value: float
    low: float
    high: float


def t_interval(values) -> dict[str, float]:
    """Mean of the non-NaN `values` (one per seed) and its 95% Student-t interval,
    mean +- t(0.975, n-1) s / sqrt(n); NaN bounds below two values or with an infinite one.
    A t-interval, not a bootstrap: with 2-5 seeds a percentile bootstrap cannot be wider than
    the seeds' range and covers the mean far less often than it claims; t stays honest (wide)
    at few seeds."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]  # inf stays: breakthroughness with all steps but one flat
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2 or not np.isfinite(values).all():
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    t = T_975[n - 2] if n - 1 <= len(T_975) else 1.96
    half = t * values.std(ddof=1) / np.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def log_t_interval(values) -> dict[str, float]:
    """For a ratio statistic whose seeds share a sign: the geometric mean of the non-NaN
    `values` and the t-interval of the mean log |value|, mapped back (with the sign). Such
    statistics (breakthroughness divides by the typical step of the curve, which a plateau
    makes tiny) spread over seeds by factors, not by amounts: one seed at 250 beside two at
    40-60 makes an additive interval reach below zero, a multiplicative one does not. With
    mixed signs or a zero, the ordinary t-interval."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values) or not np.isfinite(values).all() or not (
            (values > 0).all() or (values < 0).all()):
        return t_interval(values)
    sign = 1.0 if values[0] > 0 else -1.0
    logs = t_interval(np.log(sign * values))
    low, high = sorted(sign * np.exp([logs["low"], logs["high"]]))  # NaN stays NaN
    return {"mean": sign * np.exp(logs["mean"]), "low": low, "high": high, "n": logs["n"]}


# Ratio statistics, summarized over seeds on a log scale (log_t_interval).
LOG_SCALE = ("breakthroughness",)


# Statistics that cannot be negative (steps, x values, a plateau's length in drops): their
# t-interval is cut at zero. The true mean lies in the range, so the cut interval covers it as
# often as the whole one does, and never names an impossible value.
# Each phenomenon names its own (NON_NEGATIVE of analysis.phenomena).
NON_NEGATIVE = ("transition",)


def _over_seeds(per_seed: list[tuple[float, str]], statistic: str = "") -> dict:
    """One summary row's value, interval and note from each seed's (value, why none)."""
    over = log_t_interval if statistic in LOG_SCALE else t_interval
    interval = over([value for value, _ in per_seed])
    if statistic in (*NON_NEGATIVE, *phenomena.gather("NON_NEGATIVE")) and interval["low"] < 0:
        interval["low"] = 0.0
    missing = [why for value, why in per_seed if np.isnan(value)]
    note = missing[0] if missing else ""
    if missing and interval["n"]:
        note = f"none in {len(missing)} of {len(per_seed)} seeds ({note})"
    return {"value": interval["mean"], "low": interval["low"], "high": interval["high"],
            "n_seeds": interval["n"], "note": note}


def _wide(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One column per metric, one row per axis value (mean over duplicates)."""
    return table.pivot_table(index=axis, columns="metric", values="value", aggfunc="mean")


# Resamples of the seeds of each rung behind the interval of a statistic of the seed-mean curve.
BOOTSTRAP = 500


def of_mean_curve(series: pd.DataFrame, axis: str) -> dict[tuple[str, str], dict]:
    """Each curve statistic of the seed-mean curve (every rung's mean over its seeds, as
    BIG-bench computed them on aggregate curves), with a percentile interval over BOOTSTRAP
    curves whose rungs each average a resample of their own seeds. A seed that solves a rung
    early or fails one moves the mean by 1/n of its jump, where it can move a ratio computed
    per seed by factors."""
    unit = "rungs"
    rng = np.random.default_rng(0)
    rows = {}
    for metric, table in series.groupby("metric"):
        by_x = [group["value"].to_numpy(dtype=float) for _, group in table.groupby(axis)]
        x = np.array(sorted(table[axis].unique()), dtype=float)
        stats = emergence.across(x, np.array([v.mean() for v in by_x]), unit)
        draws = [emergence.across(x, np.array([rng.choice(v, len(v)).mean() for v in by_x]),
                                  unit) for _ in range(BOOTSTRAP)]
        for name, (value, why) in stats.items():
            boot = np.array([d[name][0] for d in draws])
            boot = boot[~np.isnan(boot)]
            spread = len(boot) and not np.isnan(value) and min(len(v) for v in by_x) > 1
            # nearest, not interpolated: a draw can be inf (all steps but one flat)
            low, high = (np.percentile(boot, [2.5, 97.5], method="nearest") if spread
                         else (np.nan, np.nan))
            rows[(metric, name)] = {"value": value, "low": float(low), "high": float(high),
                                    "n_seeds": min(len(v) for v in by_x), "note": why,
                                    "n_points": len(x)}
    return rows


def summarize(df: pd.DataFrame, over: str = "seeds") -> pd.DataFrame:
    """The summary table (module docstring) of a scores table (see analysis.runs.score).

    Along `params` and `flops`: each run's last checkpoint, one series per combination of the
    coordinates that do not set the model's size or seed; `over="seeds"` (the default) takes
    each seed's statistic, then their mean and t-interval, `over="mean"` each statistic of the
    seed-mean curve with a bootstrap interval (`of_mean_curve`). Along `step`: one
    series per run configuration up to its seed, statistics per seed, then over seeds.
    Grokking's detectors run only on series whose runs have a finite training set, where the
    table says (its `finite_train_set` column, `mark_training_sets`)."""
    if over not in ("mean", "seeds"):
        raise ValueError(f"over={over!r}: expected 'mean' or 'seeds'")
    df = df[~df["metric"].str.startswith(phenomena.gather("EXCLUDED"))]
    coords = [c for c in df.columns if c not in TABLE_COLUMNS]
    last = df[df["step"] == df.groupby("run")["step"].transform("max")]
    rows = []
    for axis, table, exclude in (("params", last, SIZE_COORDS), ("flops", last, SIZE_COORDS),
                                 ("step", df, ())):
        keys = [c for c in coords if c not in exclude and c != "seed"]
        groups = table.groupby(keys, dropna=False) if keys else [((), table)]
        for key, series in groups:
            key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            if axis != "step" and over == "mean":
                rows += [{**key, "axis": axis, "metric": metric, "statistic": statistic, **row}
                         for (metric, statistic), row in of_mean_curve(series, axis).items()]
                continue
            finite = ("finite_train_set" not in series
                      or bool(series["finite_train_set"].all()))
            seeds = series.groupby("seed", dropna=False) if "seed" in series else [(0, series)]
            curves = [_wide(s, axis) for _, s in seeds]
            per_seed = [curve_statistics(curve, axis, finite) for curve in curves]
            n_points = max(curve.index.nunique() for curve in curves)
            names = dict.fromkeys(name for stats in per_seed for name in stats)
            for metric, statistic in names:
                values = [stats.get((metric, statistic), (float("nan"), "not measured"))
                          for stats in per_seed]
                rows.append({**key, "axis": axis, "metric": metric, "statistic": statistic,
                             **_over_seeds(values, statistic), "n_points": n_points})
    return pd.DataFrame(rows, columns=[*dict.fromkeys(
        [c for row in rows for c in row if c not in COLUMNS]), *COLUMNS])


def mark_training_sets(df: pd.DataFrame, runs) -> pd.DataFrame:
    """`df` with a `finite_train_set` column: whether each run trains on a finite set (a pool,
    a train fraction) that it could memorize, or on fresh problems every step; runs whose task
    cannot be built are left unknown (and measured)."""
    from analysis.runs import BAD_ITEM  # runs load models and tasks; the rest here is pure

    finite = {}
    for run in runs:
        try:
            finite[run.name] = run.task().train_set() is not None
        except BAD_ITEM:
            continue
    return df.assign(finite_train_set=df["run"].map(finite).fillna(True).astype(bool))


def select(summary: pd.DataFrame, metric: str, statistic: str, axis: str | None = None,
           **coords) -> pd.DataFrame:
    """The rows of `summary` for (metric, statistic), on `axis` if given, with these
    coordinate values."""
    rows = summary[(summary["metric"] == metric) & (summary["statistic"] == statistic)]
    if axis is not None:
        rows = rows[rows["axis"] == axis]
    for name, value in coords.items():
        rows = rows[rows[name] == value]
    return rows


def estimate(summary: pd.DataFrame, metric: str, statistic: str, axis: str | None = None,
             **coords) -> Estimate:
    """(value, low, high) of the one row `select` finds; ValueError if not exactly one."""
    rows = select(summary, metric, statistic, axis, **coords)
    if len(rows) != 1:
        raise ValueError(f"{len(rows)} rows for {metric} {statistic} axis={axis} {coords}; "
                         "narrow it with axis= or coordinates")
    row = rows.iloc[0]
    return Estimate(float(row["value"]), float(row["low"]), float(row["high"]))


def find_row(rows: pd.DataFrame, metric: str, statistic: str):
    """The first of `rows` for (metric, statistic), or None."""
    found = rows[(rows["metric"] == metric) & (rows["statistic"] == statistic)]
    return found.iloc[0] if len(found) else None


def number(value: float) -> str:
    """3 significant digits; steps and parameter counts from 1,000 to 10 million in full."""
    if np.isfinite(value) and 1000 <= abs(value) < 1e7:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def describe(row, seeds: bool = True) -> str:
    """A summary row as text: "9.1 [6.2, 12.0], 3 seeds", "9.1 (1 seed)", or its note; without
    the number of seeds if not `seeds`."""
    if np.isnan(row["value"]):
        return row["note"] if isinstance(row["note"], str) else ""
    text = number(row["value"])
    if row["n_seeds"] == 1:
        text += " (1 seed)" if seeds else ""
    elif not np.isfinite(row["value"]):
        text += f" ({row['n_seeds']:.0f} seeds, no interval: infinite in some seed)"
    else:
        text += f" [{number(row['low'])}, {number(row['high'])}]"
        text += f", {row['n_seeds']:.0f} seeds" if seeds else ""
    if isinstance(row["note"], str) and row["note"]:
        text += f"; {row['note']}"
    return text


def series_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's series as "n_layers=2, weight_decay=1": the coordinates that vary."""
    keys = [c for c in rows.columns if c not in COLUMNS and rows[c].nunique() > 1]
    return pd.Series([", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in zip(keys, values, strict=True) if pd.notna(v))
                      or "all runs" for values in rows[keys].itertuples(index=False)],
                     index=rows.index)


def of_series(scores: pd.DataFrame, row) -> pd.DataFrame:
    """The scores of the series a summary row describes (its coordinates that are set)."""
    keep = pd.Series(True, index=scores.index)
    for name, value in row.items():
        if name not in COLUMNS and name in scores and pd.notna(value):
            keep &= scores[name] == value
    return scores[keep]
