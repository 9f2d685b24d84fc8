"""A plateau, then an abrupt drop, of the eval loss along steps (Barak et al. 2022's sparse
parity): where the drop starts and ends, and how long the plateau lasts in units of the drop.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.emergence import running_median, sorted_curve

METRIC = "eval/loss"
STEP_EVENTS = ("drop_start", "drop_end", "abruptness")
NON_NEGATIVE = STEP_EVENTS  # steps, and a plateau's length in drops
STEP_MARKS = ("drop_start", "drop_end")
STEP_EVENTS_TEXT = ("Plateau and drop (Barak et al. 2022) of the eval loss: `abruptness` is the "
                    "plateau's length in units of the drop's, far above 1 for a sudden drop.")


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
    x, y = sorted_curve(steps, loss, log_x=False)
    y = running_median(y)
    end = int(np.flatnonzero(y <= y.min() + band * (y.max() - y.min()))[0]) if len(y) else 0
    if end == 0:  # no point before the floor: the curve does not fall
        return {"drop_start": float("nan"), "drop_end": float("nan"), "abruptness": float("nan")}
    plateau = np.median(y[:end])
    start = int(np.flatnonzero(y[:end] >= plateau - band * (plateau - y.min()))[-1])
    return {"drop_start": float(x[start]), "drop_end": float(x[end]),
            "abruptness": float((x[start] - x[0]) / (x[end] - x[start]))}


def step_statistics(x: np.ndarray, wide: pd.DataFrame,
                    finite: bool) -> dict[tuple[str, str], tuple[float, str]]:
    """plateau_drop of the eval loss."""
    stats = {}
    if METRIC in wide.columns:
        for name, value in plateau_drop(x, wide[METRIC]).items():
            stats[(METRIC, name)] = (value, "" if np.isfinite(value) else "none: no fall")
    return stats
