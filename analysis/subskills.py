"""Which sub-skill appears where: the answer position whose log-probability rises last along the
ladder, the slice of the eval set solved last, and the report's "Where the errors are" section.
Reads the per-slice scores that analysis.slices computes for training and analysis alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import emergence, summary
from analysis.slices import split_key, worst


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


def _mean_by_rung(scores: pd.DataFrame, metric: str) -> pd.Series:
    """`metric`'s seed mean at each rung (parameters), at each run's last checkpoint."""
    rows = scores[scores["metric"] == metric]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows.groupby("params")["value"].mean()


def findings(evidence) -> list[str]:
    """Which sub-skill appears last along the ladder: the answer position whose log-probability
    (seed mean) crosses the middle of its range at the largest size, how it rises across the
    rungs (the seed means, and the sudden-or-smooth rule on them), and the slice of the eval set
    whose exact match crosses last."""
    scores, lines = evidence.scores, []
    if scores is None or scores.empty or scores["params"].nunique() < 2:
        return lines
    names = sorted({m for m in scores["metric"] if m.startswith(emergence.PER_POSITION_PREFIX)},
                   key=lambda m: int(m.rsplit("/", 1)[1]))
    crossings = {m: emergence.transition_point((c := _mean_by_rung(scores, m)).index, c)
                 for m in names}
    found = {m: x for m, x in crossings.items() if np.isfinite(x)}
    if found:
        last = max(found, key=found.get)
        curve = _mean_by_rung(scores, last)
        rows = scores[scores["metric"] == last]
        rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
        rows = rows.assign(metric="answer position")
        stats = summary.of_mean_curve(rows, "params")
        verdict = summary.sudden_or_smooth(stats[("answer position", "breakthroughness")])
        others = ", ".join(f"{m.rsplit('/', 1)[1]} at {x:,.0f}" for m, x in found.items()
                           if m != last)
        lines.append(
            f"The sub-skill that appears last is answer position {last.rsplit('/', 1)[1]} "
            f"(the first answer token is position 0): its log-probability crosses the middle of "
            f"its range at {found[last]:,.0f} parameters" + (f" (the others: {others})"
                                                            if others else "")
            + ". Across the rungs its seed mean goes "
            + ", ".join(f"{v:.2f}" for v in curve.to_numpy()) + f": {verdict}.")
    by_slice = evidence.by_slice
    if by_slice is not None and "slice" in by_slice:
        table = summary.slice_transitions(by_slice)
        table = table[(table["axis"] == "params") & table["value"].notna()]
        if len(table):
            latest = table.loc[table["value"].idxmax()]
            lines.append(f"Of the eval set's slices, {split_key(latest['metric'])[1]} is solved "
                         f"last: its exact match crosses the middle of its range at "
                         f"{summary.describe(latest, seeds=False)} parameters.")
    return lines
