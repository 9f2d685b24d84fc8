"""Statistics of how a metric changes along an axis (parameters, FLOPs or training steps), of
one curve (one seed); analysis.summary takes them over seeds.

Pure numpy/pandas: curves in, numbers or tables out.

- Where and how fast: `transition_point` (mid-range crossing, in log x), `sharpness` (largest
  change per decade of x).
- How sudden, scale-free: BIG-bench's `linearity` and `breakthroughness` (Srivastava et al.
  2022); `emergence_score` (Schaeffer et al. 2023) is the same formula as breakthroughness.
  `curve_statistics` gives none of the four below MIN_POINTS distinct x values.
- Along steps, each phenomenon adds its own (`step_statistics` of analysis.phenomena: grokking's
  delay, the induction phase change, the parity plateau); `running_median` is what their
  detectors read a curve through.

Curves are given in axis order; points with a NaN value are dropped, and on log axes so are
points with x <= 0 (e.g. step 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import phenomena

# Columns of the scores table that are not run coordinates (see analysis.runs.score).
TABLE_COLUMNS = ("run", "params", "non_embedding_params", "step", "tokens", "flops", "metric",
                 "value", "finite_train_set")
# Coordinates that set a model's size: they vary along the params and FLOPs axes.
SIZE_COORDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "model")
# Distinct x values (rungs, evaluations) below which a curve statistic is no number: with three
# points, every monotone curve has linearity = breakthroughness = sqrt 2.
MIN_POINTS = 5


def sorted_curve(x, y, log_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
    x, y = sorted_curve(x, y)
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
    x, y = sorted_curve(x, y)
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


def running_median(y: np.ndarray) -> np.ndarray:
    """y through a running median of three evaluations (edges kept): a spike at one evaluation
    (an Adam instability, up or down) goes, a change that lasts two evaluations or more stays."""
    y = np.array(y, dtype=float)
    if len(y) >= 3:
        y[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return y


def too_few(n: int, unit: str, statistic: str) -> str:
    """e.g. "3 rungs: too few for breakthroughness (needs 5)"."""
    unit = unit.removesuffix("s") if n == 1 else unit
    return f"{n} {unit}: too few for {statistic} (needs {MIN_POINTS})"


def across(x: np.ndarray, y: np.ndarray, unit: str) -> dict[str, tuple[float, str]]:
    """transition, sharpness, linearity, breakthroughness of one curve; no number (and why)
    below MIN_POINTS distinct x: any monotone 3-point curve has breakthroughness sqrt 2."""
    x, y = sorted_curve(x, y, log_x=False)
    functions = {"transition": lambda: transition_point(x, y), "sharpness": lambda: sharpness(x, y),
                 "linearity": lambda: linearity(y), "breakthroughness": lambda: breakthroughness(y)}
    n = len(np.unique(x))
    if n < MIN_POINTS:
        return {name: (float("nan"), too_few(n, unit, name)) for name in functions}
    return {name: (function(), "") for name, function in functions.items()}


def curve_statistics(wide: pd.DataFrame, axis: str,
                     finite: bool = True) -> dict[tuple[str, str], tuple[float, str]]:
    """{(metric, statistic): (value, why there is none)} for one curve: a table with one column
    per metric, indexed by the axis (`params`, `flops` or `step`). The reason is "" where there
    is a value; a detector that finds nothing gives NaN and a reason starting "none". Along
    steps, also every phenomenon's `step_statistics`; `finite`: whether the run has a finite
    training set (with fresh problems every step there is nothing to memorize)."""
    x = wide.index.to_numpy(dtype=float)
    unit = "evaluations" if axis == "step" else "rungs"
    stats = {(metric, name): value for metric in wide.columns
             for name, value in across(x, wide[metric], unit).items()}
    if axis != "step":
        return stats
    for step_statistics in phenomena.having("step_statistics"):
        stats |= step_statistics(x, wide, finite)
    return stats
