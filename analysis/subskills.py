"""Which sub-skill appears where: the answer position whose log-probability rises last along the
ladder, the slice of the eval set solved last, and the report's "Where the errors are" section.
Reads the per-slice scores that analysis.slices computes for training and analysis alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import emergence, summary
from analysis.slices import worst


def errors_section(scores: pd.DataFrame, markdown_table,
                   transitions: pd.DataFrame | None = None) -> str | None:
    """The report's "Where the errors are" section (None when the set has no slices), with the
    transition point of exact match per slice (summary.slice_transitions) where there is one."""
    table = worst(scores)
    if table.empty:
        return None
    params = int(scores["params"].max())
    lines = ["## Where the errors are", "",
             f"Exact match of the largest model ({params:,} parameters) at its last scored step, "
             f"on the whole eval set and on its {len(table) - 1} worst slices (mean, min and max "
             "over its runs). A whole-set value far above a slice's is a sub-skill not learned; "
             "`scores.csv` has every metric on every slice.", "",
             markdown_table(table.reset_index().rename(columns={"count": "runs"}))]
    if transitions is not None and transitions["value"].notna().any():
        found = transitions[transitions["value"].notna()]
        found = found.assign(series=summary.series_labels(found),
                             slice=found["metric"].str.split("@").str[1],
                             transition=[summary.describe(r) for _, r in found.iterrows()])
        found = found.sort_values(["axis", "series", "value"], key=lambda c: c.map(
            {"params": 0, "flops": 1, "step": 2}) if c.name == "axis" else c)
        lines += ["", "Where exact match on each slice crosses the middle of its range "
                  f"(`transition`, as in `summary.csv`): mean and {summary.INTERVAL} of each "
                  "series (along steps, a model size and setting). A slice that crosses later "
                  "is a sub-skill that appears later.", "",
                  markdown_table(found[["axis", "series", "slice", "transition"]])]
    return "\n".join(lines)


def _mean_by_rung(rows: pd.DataFrame) -> pd.Series:
    """The seed mean of one metric's `rows` at each rung (parameters), at each run's last
    checkpoint."""
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows.groupby("params")["value"].mean()


def _last(brackets: dict[str, tuple[float, float]]) -> tuple[list[str], tuple[float, float]]:
    """The names whose seed-mean curve crosses mid-range between the highest rungs, and those
    rungs: names sharing a bracket are not ordered by the ladder, whatever interpolation says."""
    found = {name: pair for name, pair in brackets.items() if np.isfinite(pair).all()}
    if not found:
        return [], (np.nan, np.nan)
    top = max(found.values(), key=lambda pair: (pair[1], pair[0]))
    return [name for name, pair in found.items() if pair == top], top


def _position(metric: str) -> str:
    return metric.rsplit("/", 1)[1]


def _rungs(pair: tuple[float, float]) -> str:
    return f"between {pair[0]:,.0f} and {pair[1]:,.0f} parameters"


def findings(evidence) -> list[str]:
    """Which sub-skill appears last along the ladder: the answer position whose log-probability
    (seed mean) crosses the middle of its range between the highest rungs, how it rises across
    the rungs (the seed means, and the sudden-or-smooth rule on them), and the slices of the
    eval set whose exact match crosses last. Crossings are given as the rungs around them
    (emergence.crossing_rungs)."""
    scores, lines = evidence.scores, []
    if scores is None or scores.empty or scores["params"].nunique() < 2:
        return lines
    names = sorted({m for m in scores["metric"] if m.startswith(emergence.PER_POSITION_PREFIX)},
                   key=lambda m: int(_position(m)))
    curves = {m: _mean_by_rung(scores[scores["metric"] == m]) for m in names}
    brackets = {m: emergence.crossing_rungs(c.index, c.to_numpy()) for m, c in curves.items()}
    last, pair = _last(brackets)
    if last:
        others = ", ".join(f"{_position(m)} {_rungs(p).removesuffix(' parameters')}"
                           for m, p in brackets.items() if m not in last and np.isfinite(p).all())
        rows = scores[scores["metric"] == last[0]]
        rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
        stats = summary.of_mean_curve(rows.assign(metric="answer position"), "params")
        verdict = summary.sudden_or_smooth(stats[("answer position", "breakthroughness")])
        which = (f"answer position {_position(last[0])}" if len(last) == 1 else
                 "answer positions " + ", ".join(map(_position, last)) + " (the ladder does not "
                 "order them)")
        lines.append(
            f"The sub-skill that appears last is {which} (the first answer token is position "
            f"0): the seed mean of its log-probability crosses the middle of its range "
            f"{_rungs(pair)}" + (f" (the others: {others})" if others else "")
            + ". Across the rungs it goes "
            + ", ".join(f"{v:.2f}" for v in curves[last[0]].to_numpy()) + f": {verdict}.")
    by_slice = evidence.by_slice
    if by_slice is not None and "slice" in by_slice:
        rows = by_slice[(by_slice["metric"] == "eval/exact_match") & (by_slice["slice"] != "all")]
        curves = {name: _mean_by_rung(group)
                  for name, group in rows.groupby("slice")}
        last, pair = _last({name: emergence.crossing_rungs(c.index, c.to_numpy())
                            for name, c in curves.items()})
        if len(last) == 1:
            lines.append(f"Of the eval set's slices, {last[0]} is solved last: the seed mean of "
                         f"its exact match crosses the middle of its range {_rungs(pair)}, "
                         "later than every other slice.")
        elif last:
            shown = ", ".join(last[:8]) + (", ..." if len(last) > 8 else "")
            lines.append(f"{len(last)} of the eval set's {len(curves)} slices are solved last, "
                         f"their exact match (seed mean) crossing the middle of its range "
                         f"{_rungs(pair)} ({shown}): the ladder does not order them.")
    return lines
