"""The induction phase change (Olsson et al. 2022) along training: where the loss on repeated
tokens falls most of its way within a short window, when an induction head forms (max prefix
matching reaches HEAD_THRESHOLD), whether the two coincide, the verdict and its rule; the
figures (drawn by the `figures` module).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.emergence import MIN_POINTS, running_median, sorted_curve, too_few
from analysis.phenomena.induction import INDUCTION_LOSS, PER_HEAD, PREFIX_MATCHING_MAX
from analysis.summary import describe, find_row, number

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
STEP_EVENTS = ("phase_change_step", "phase_change_largest_fall", "phase_change_required_fall",
               "head_formation_step", "coincides_with_prefix_matching")
NON_NEGATIVE = ("phase_change_step", "phase_change_start", "phase_change_end",
                "head_formation_step")
STEP_MARKS = NON_NEGATIVE
STEP_EVENTS_TEXT = ("Induction: the phase change of the loss on the repeat (rule under Verdicts), "
                    "the step where an induction head forms, and whether they coincide (the "
                    "share of seeds).")
KEY_METRICS = (PREFIX_MATCHING_MAX, INDUCTION_LOSS)
EXCLUDED = (PER_HEAD,)  # per head: the heatmap's, no curves of their own


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
    x, y = sorted_curve(steps, loss, log_x=False)
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
    x, y = sorted_curve(steps, prefix_matching, log_x=False)
    reached = np.flatnonzero(running_median(y) >= threshold)
    return float(x[reached[0]]) if len(reached) else float("nan")


def phase_change_coincides(change: dict[str, float], head_step: float,
                           tolerance: float) -> float:
    """1.0 if the head forms within the phase change's window widened by `tolerance` steps on
    each side, 0.0 if not, NaN where there is no phase change or no head to compare."""
    if not (np.isfinite(change["step"]) and np.isfinite(head_step)):
        return float("nan")
    return float(change["start"] - tolerance <= head_step <= change["end"] + tolerance)


def step_statistics(x: np.ndarray, wide: pd.DataFrame,
                    finite: bool) -> dict[tuple[str, str], tuple[float, str]]:
    """Where the curve has the induction loss: its phase change (`phase_change_step`, `_start`,
    `_end`, `_largest_fall`, `_required_fall`), the head's formation and whether they coincide
    (within COINCIDENCE_TOLERANCE of the steps spanned)."""
    if INDUCTION_LOSS not in wide.columns:
        return {}
    change = phase_change(x, wide[INDUCTION_LOSS])
    found = np.isfinite(change["step"])
    if found:
        why = ""
    elif np.isfinite(change["required_fall"]):
        largest, required = change["largest_fall"], change["required_fall"]
        why = f"none: largest fall {largest:.3g}, needs {required:.3g}"
    else:
        why = too_few(len(x), "evaluations", "a phase change")
    stats = {(INDUCTION_LOSS, f"phase_change_{name}"):
             (value, why if name in ("step", "start", "end") else "")
             for name, value in change.items()}
    if PREFIX_MATCHING_MAX in wide.columns:
        head = head_formation_step(x, wide[PREFIX_MATCHING_MAX])
        peak = np.nanmax(wide[PREFIX_MATCHING_MAX].to_numpy(dtype=float))
        stats[(PREFIX_MATCHING_MAX, "head_formation_step")] = (
            head, "" if np.isfinite(head) else
            f"none: max prefix matching peaks at {peak:.2f} (< {HEAD_THRESHOLD})")
        tolerance = COINCIDENCE_TOLERANCE * (x.max() - x.min())
        coincides = phase_change_coincides(change, head, tolerance)
        stats[(INDUCTION_LOSS, "coincides_with_prefix_matching")] = (
            coincides, "" if np.isfinite(coincides) else
            "no phase change" if not found else "no induction head")
    return stats


def _phase_change(rows: pd.DataFrame) -> str:
    """The induction verdict of one series: its phase change and whether the head forms there."""
    change = find_row(rows, INDUCTION_LOSS, "phase_change_step")
    if np.isnan(change["value"]):
        text = f"phase change: {change['note']}"
    else:
        start, end = (find_row(rows, INDUCTION_LOSS, f"phase_change_{name}")["value"]
                      for name in ("start", "end"))
        text = f"phase change at step {describe(change)}, window {number(start)}-{number(end)}"
    head = find_row(rows, PREFIX_MATCHING_MAX, "head_formation_step")
    if head is None:
        return text
    formed = ("induction head: " + head["note"] if np.isnan(head["value"])
              else f"induction head formed at step {describe(head)}")
    coincides = find_row(rows, INDUCTION_LOSS, "coincides_with_prefix_matching")
    if np.isnan(coincides["value"]):
        return f"{text}; {formed}"
    share = ("coinciding with" if coincides["value"] == 1 else "not coinciding with"
             if coincides["value"] == 0 else
             f"coinciding (in {coincides['value']:.0%} of {coincides['n_seeds']:.0f} seeds) with")
    return f"{text}, {share} the rise of prefix matching ({formed})"


def step_verdict(rows: pd.DataFrame) -> str | None:
    """The phase change of one series along steps, where it has the statistic."""
    if (rows["statistic"] == "phase_change_step").any():
        return _phase_change(rows)
    return None


def rules() -> str:
    return ("Phase change: the induction loss, through a running median of 3 "
            f"evaluations, falls within {PHASE_CHANGE_WINDOW:.0%} of the steps it "
            f"spans by at least {PHASE_CHANGE_FALL:.0%} of its total fall and "
            f"{PHASE_CHANGE_FALL:.0%} of its initial value (else none); its step is "
            "where the loss crosses the middle of that fall. It coincides with the rise of "
            "prefix matching when an induction head forms (max prefix matching first reaches "
            f"{HEAD_THRESHOLD:g}) within the fall's window widened by "
            f"{COINCIDENCE_TOLERANCE:.0%} of the steps on each side.")


def figures(df: pd.DataFrame, by_slice, runs) -> dict:
    from analysis.phenomena.induction import figures  # they draw this module's phase_change

    return figures.figures(df, by_slice, runs)
