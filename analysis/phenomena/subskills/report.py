"""Which sub-skill appears where: the answer position whose log-probability rises last along the
ladder, the slice of the eval set solved last, the report's "Where the errors are" section and
the figures per answer position and per slice. Reads the per-slice scores that analysis.slices
computes for training and analysis alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import emergence, plots, summary
from analysis.phenomena import mirage
from analysis.phenomena.subskills import POSITION_PREFIX
from analysis.slices import worst
from analysis.tables import markdown_table

EXCLUDED = (POSITION_PREFIX,)  # per position: read by the forecast, no curves of their own


SOLVED = 0.5  # the exact match at which a slice counts as solved


def _solved(by_slice: pd.DataFrame, row) -> bool:
    """Whether most runs of the series and slice a slice-transition row describes (along
    parameters or FLOPs, those of its largest rung) end with exact match >= SOLVED."""
    rows = summary.of_series(by_slice, row)
    rows = rows[(rows["metric"] + "@" + rows["slice"]) == row["metric"]]
    final = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    if row["axis"] != "step":
        final = final[final["params"] == final["params"].max()]
    return bool(len(final)) and (final["value"] >= SOLVED).mean() > 0.5


def errors_section(scores: pd.DataFrame,
                   transitions: pd.DataFrame | None = None) -> str | None:
    """The report's "Where the errors are" section (None when the set has no slices), with the
    transition point of exact match per slice (slice_transitions) where there is one."""
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
        found = found.assign(series=summary.series_labels(found))  # before rows go
        found = found[[_solved(scores, row) for _, row in found.iterrows()]]
        found = found.assign(slice=found["metric"].str.split("@").str[1],
                             transition=[summary.describe(r) for _, r in found.iterrows()])
        found = found.sort_values(["axis", "series", "value"], key=lambda c: c.map(
            {"params": 0, "flops": 1, "step": 2}) if c.name == "axis" else c)
        lines += ["", "Where exact match on each slice crosses the middle of its range "
                  f"(`transition`, as in `summary.csv`): mean and {summary.INTERVAL} of each "
                  "series (along steps, a model size and setting), where most of the series' "
                  f"runs end with the slice solved (exact match >= {SOLVED}): the middle of a "
                  "curve that stays low is noise, not a sub-skill. A slice that crosses later "
                  "is a sub-skill that appears later, where a rung or an evaluation lies "
                  "between them: within one gap the order comes from interpolation.", "",
                  markdown_table(found[["axis", "series", "slice", "transition"]])]
    return "\n".join(lines)


def slice_transitions(by_slice: pd.DataFrame, metric: str = "eval/exact_match") -> pd.DataFrame:
    """Summary rows of the `transition` of `metric` on every slice (see analysis.slices), along
    parameters, FLOPs and steps, with intervals over seeds; the metric is named
    `<metric>@<slice>` (`eval/exact_match@carries=2`), so the whole-set rows stay unique."""
    rows = by_slice[(by_slice["metric"] == metric) & (by_slice["slice"] != "all")]
    if rows.empty:
        return pd.DataFrame(columns=summary.COLUMNS)
    rows = rows.assign(metric=metric + "@" + rows["slice"]).drop(columns="slice")
    table = summary.summarize(rows)
    return table[table["statistic"] == "transition"].reset_index(drop=True)


def section(evidence) -> str | None:
    by_slice = evidence.by_slice
    if by_slice is None:
        return None
    return errors_section(by_slice, slice_transitions(by_slice))


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
    names = sorted({m for m in scores["metric"] if m.startswith(POSITION_PREFIX)},
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
        verdict = mirage.sudden_or_smooth(stats[("answer position", "breakthroughness")])
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


def answer_positions(df: pd.DataFrame) -> Figure | None:
    """Which answer token is learned where: the teacher-forced log-probability of the right
    token at each answer position (`answer_position/logprob/<i>`, i = 0 the first answer token)
    against parameters at every run's last checkpoint (a colour per position), then against
    steps, a panel per position with a colour per model size (seeds thin, mean bold). A
    position that stays at chance (log 1/10 for a digit) where the others are learned is the
    sub-skill that appears last. None without per-position scores."""
    table = df[df["metric"].str.startswith(POSITION_PREFIX)]
    if table.empty:
        return None
    table = table.assign(position=table["metric"].str.removeprefix(POSITION_PREFIX).astype(int))
    positions = sorted(table["position"].unique())
    across = table["params"].nunique() > 1
    fig, axes = plots.grid(len(positions) + across)
    if across:
        ax = axes.pop(0)
        final = plots.final(table)
        for colour, position in zip(plots.colours(len(positions)), positions, strict=True):
            plots.seeds_and_mean(ax, final[final["position"] == position], "params", colour,
                                 f"position {position}", marker="o")
        plots.set_log_x(ax, final["params"])
        ax.set(xlabel="parameters", ylabel="log p(right token)",
               title="per answer position, last checkpoint")
        plots.legend(ax, len(positions))
    keys = plots.size_keys(table) or plots.series_keys(table, exclude=["position"])
    for ax, position in zip(axes, positions, strict=True):
        rows = table[table["position"] == position]
        # the largest models where there are more
        series = plots.order(rows, keys)[-plots.MAX_SERIES:]
        for colour, (label, one) in zip(plots.colours(len(series)), series, strict=True):
            plots.seeds_and_mean(ax, one, "step", colour, plots.series_label(label, one))
        plots.set_log_x(ax, rows["step"])
        ax.set(xlabel="step", ylabel="log p(right token)",
               title=f"answer position {position} during training")
    if len(axes):
        plots.legend(axes[0], plots.MAX_SERIES)
    plots.first_column_ylabel(fig.axes)
    return fig


def exact_match_by_slice(by_slice: pd.DataFrame, attribute: str,
                         metric: str = "eval/exact_match") -> Figure | None:
    """`metric` on each slice of one attribute (`carries=0`, `carries=1`, ...): against
    parameters at every run's last checkpoint (seed means), and against step for the largest
    model (mean over its runs). A slice that rises later than the others is a sub-skill that
    appears later; one that stays low where the whole set looks solved is a ceiling."""
    table = by_slice[(by_slice["metric"] == metric)
                     & by_slice["slice"].str.startswith(attribute + "=")]
    if table.empty:
        return None
    value_of = lambda name: int(name.split("=")[1])
    wide_x = table["params"].nunique() > 1
    fig = Figure(figsize=(6.4 * (1 + wide_x), 4.2), layout="constrained")
    axes = fig.subplots(1, 1 + wide_x, squeeze=False)[0]
    top = table[table["params"] == table["params"].max()]
    panels = [(axes[-1], top, "step")]
    if wide_x:
        panels.insert(0, (axes[0], plots.final(table), "params"))
    for ax, rows, x in panels:
        for name in sorted(rows["slice"].unique(), key=value_of):
            series = rows[rows["slice"] == name]
            curve = series.groupby(x)["value"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=name)
        plots.set_log_x(ax, rows[x])
        ax.set(xlabel="parameters" if x == "params" else "step", ylabel=metric)
    if wide_x:
        axes[0].set_title(f"{metric} per slice vs parameters (last checkpoint)")
    axes[-1].set_title(f"{metric} per slice during training, {plots.params_label(top)}")
    plots.legend(axes[-1], 4)
    return fig


def figures(df: pd.DataFrame, by_slice: pd.DataFrame | None, runs) -> dict[str, Figure | None]:
    """The log-probability per answer position, and exact match per slice of each sliced
    attribute."""
    found = {}
    if df["metric"].str.startswith(POSITION_PREFIX).any():
        found["answer_positions"] = answer_positions(df)
    if by_slice is not None:
        sliced = by_slice.loc[by_slice["slice"] != "all", "slice"]
        for attribute in sorted(set(sliced.str.split("=").str[0])):
            found[f"exact_match_by_{attribute}"] = exact_match_by_slice(by_slice, attribute)
    return found
