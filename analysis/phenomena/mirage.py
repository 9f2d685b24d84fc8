"""Sudden or smooth with size, and the metric mirage (Schaeffer et al. 2023): the verdict on each
exact and continuous metric against parameters, where exact match crosses mid-range, which rungs
the seeds solved, the report's "Emergence across model sizes" section and the figures of the
main metric against parameters and steps (`figures`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import emergence, plots
from analysis.summary import (
    INTERVAL,
    describe,
    log_t_interval,
    number,
    of_series,
    series_labels,
)
from analysis.tables import markdown_table, statistics_table

# Sudden: breakthroughness (signed in the metric's direction) whose interval lies above this
# many times a straight line's; a line through n rungs, equal steps, scores n - 1.
SUDDEN_FACTOR = 2.0
# Metrics that get a sudden-or-smooth verdict: the exact one and its continuous rescorings.
VERDICT_METRICS = ("eval/exact_match", "eval/token_accuracy", "eval/edit_distance",
                   "eval/answer_logprob", "eval/brier")
# The curve statistics of the sizes table.
STATISTICS = ("transition", "sharpness", "linearity", "breakthroughness")
READABLE = {"eval/exact_match": "exact match", "eval/token_accuracy": "token accuracy",
            "eval/edit_distance": "edit distance", "eval/answer_logprob": "answer log-probability",
            "eval/brier": "Brier score"}
AXIS_NAMES = {"params": "parameters", "flops": "training FLOPs", "step": "steps"}
MIN_STEPS = 5  # evaluations a curve along steps needs for its transition


def sudden_or_smooth(row) -> str:
    """Sudden when the breakthroughness interval (signed so the metric improves upwards) lies
    above SUDDEN_FACTOR times a straight line's through the same rungs, smooth when it lies
    below, unclear when it straddles; with one seed, the value decides and "1 seed" says so."""
    if np.isnan(row["value"]):
        return f"no verdict ({row['note']})"
    threshold = SUDDEN_FACTOR * (row["n_points"] - 1)
    sign = -1.0 if row["value"] < 0 else 1.0
    bounds = sorted([sign * row["low"], sign * row["high"]])
    if np.isnan(bounds).any():
        bounds = [sign * row["value"]] * 2
    word = "sudden" if bounds[0] > threshold else "smooth" if bounds[1] < threshold else "unclear"
    return f"{word} (breakthroughness {describe(row)}; threshold {threshold:.3g})"


def _sizes(rows: pd.DataFrame) -> list[str]:
    """Sudden or smooth, per metric of one series; one line when no metric has a value."""
    if rows["value"].isna().all() and rows["note"].nunique() == 1:
        return [f"sudden or smooth: no verdict ({rows['note'].iloc[0]})"]
    return [f"{row['metric']}: {sudden_or_smooth(row)}" for _, row in rows.iterrows()]


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per series and metric: sudden or smooth against parameters (`sudden_or_smooth`)
    for each of VERDICT_METRICS where the series has more than one size."""
    lines = []
    sizes = summary[(summary["axis"] == "params") & (summary["statistic"] == "breakthroughness")
                    & summary["metric"].isin(VERDICT_METRICS) & (summary["n_points"] > 1)]
    for series, rows in sizes.groupby(series_labels(sizes), sort=False):
        lines += [f"{series}: {line}" for line in _sizes(rows)]
    return lines


def rules() -> str:
    return (f"Sudden or smooth: breakthroughness, signed so that the metric improves "
            f"upwards, whose interval lies above {SUDDEN_FACTOR:g} times a straight "
            "line's through the same rungs (n - 1 for n rungs) is sudden, below it smooth, "
            "across it unclear.")


def seeds_to_decide(row) -> str:
    """Where a verdict is unclear: about how many more seeds would move the interval off the
    threshold if it narrowed as 1/sqrt(seeds) around the same value; "" where that estimate
    would not be honest (the value at the threshold, or more than four times the seeds)."""
    threshold = SUDDEN_FACTOR * (row["n_points"] - 1)
    value, half = abs(row["value"]), (row["high"] - row["low"]) / 2
    distance, n = abs(value - threshold), row["n_seeds"]
    if not (np.isfinite(half) and distance > 0 and n > 1):
        return ""
    needed = int(np.ceil(n * (half / distance) ** 2))
    if needed > 4 * n:
        return ("; the value sits so near the threshold that no affordable number of seeds "
                "would decide it at this spread")
    return f"; about {needed - n:.0f} more seeds per rung would decide it at this spread"


# Random pairings of each rung's seeds into ladders behind `pairings_kept`.
PAIRINGS = 100


def pairings_kept(last: pd.DataFrame, row) -> int | None:
    """Of PAIRINGS random pairings of each rung's runs into ladders (seed labels shuffled within
    every rung), how many give the per-seed verdict of `row` again, from `last`: one row per
    run of the series, its metric at the last checkpoint. A ladder's runs share only a seed
    number, so a verdict that few pairings give rests on which models were put in one ladder.
    None with one seed per rung."""
    rungs = [g["value"].to_numpy(dtype=float) for _, g in last.groupby("params")]
    if min(map(len, rungs)) < 2:
        return None
    word = sudden_or_smooth(row).split(" ", 1)[0]
    rng, kept = np.random.default_rng(0), 0
    for _ in range(PAIRINGS):
        shuffled = [rng.permutation(values) for values in rungs]
        ladders = [[values[i] for values in shuffled if i < len(values)]
                   for i in range(max(map(len, shuffled)))]
        per_ladder = [emergence.breakthroughness(y) if len(y) >= emergence.MIN_POINTS
                      else np.nan for y in ladders]
        interval = log_t_interval(per_ladder)
        again = {**row, "value": interval["mean"], "low": interval["low"],
                 "high": interval["high"], "n_seeds": interval["n"]}
        kept += sudden_or_smooth(again).split(" ", 1)[0] == word
    return kept


def _verdict_sentence(row, kept: int | None = None) -> str:
    """The verdict of `row` as a sentence; `kept`: how many of PAIRINGS random pairings of the
    seeds into ladders give it again (pairings_kept)."""
    verdict = sudden_or_smooth(row)
    word = verdict.split(" ", 1)[0]
    name = READABLE.get(row["metric"], row["metric"])
    threshold = SUDDEN_FACTOR * (row["n_points"] - 1)
    if word == "no":
        return f"{name.capitalize()}: {verdict}."
    text = {"sudden": "improves suddenly with size", "smooth": "improves smoothly with size",
            "unclear": "is unclear between sudden and smooth"}[word]
    return (f"{name.capitalize()} {text}: breakthroughness {describe(row)} against the "
            f"threshold {threshold:.3g} ({SUDDEN_FACTOR:g} x a straight line's over "
            f"{row['n_points']:.0f} rungs)" + (seeds_to_decide(row) if word == "unclear" else "")
            + ("" if kept is None else f"; {kept} of {PAIRINGS} random pairings of each rung's "
               "seeds into ladders give it again" + (
                   "" if kept >= 0.9 * PAIRINGS else ", so it rests on which models share a "
                   "seed number")) + ".")


def between(pairs: list[tuple[float, float]], unit: str) -> str:
    """Where curves cross mid-range, as the rungs around each crossing (`crossing_rungs`, one
    pair per seed): "between 11,000 and 15,504 parameters in all 5 seeds", or each bracket with
    its count of seeds where they differ; "" where no curve crosses."""
    n = len(pairs)
    found = Counter(pair for pair in pairs if np.isfinite(pair).all())
    if not found:
        return ""
    parts = [(f"between {number(low)} and {number(high)}", count)
             for (low, high), count in sorted(found.items())]
    parts[0] = (f"{parts[0][0]} {unit}", parts[0][1])
    if len(parts) == 1:
        text = parts[0][0] + (f" in all {n} seeds" if n > 1 else "")
    else:
        text = ", ".join(f"{part} in {count}" + (f" of {n} seeds" if i == 0 else "")
                         for i, (part, count) in enumerate(parts))
    missing = n - sum(found.values())
    return text + (f" (no crossing in {missing})" if missing else "")


def _per_seed(rows: pd.DataFrame, x: str, by: str) -> list[tuple[float, float]]:
    """crossing_rungs of each `by` group's curve of `value` against `x` (mean over duplicates)."""
    groups = rows.groupby(by, dropna=False) if by in rows else [(0, rows)]
    return [emergence.crossing_rungs(curve.index, curve.to_numpy())
            for _, group in groups for curve in [group.groupby(x)["value"].mean()]]


def findings(evidence) -> list[str]:
    """Per series with several sizes: a sentence per verdict, between which rungs exact match
    crosses mid-range (parameters, FLOPs, and steps for the largest model), and which rungs the
    seeds solved."""
    table, scores, lines = evidence.summary, evidence.scores, []
    if table is None or table.empty:
        return lines
    labels = series_labels(table)
    sizes = (table["axis"] == "params") & (table["n_points"] > 1)
    verdicts = table[sizes & (table["statistic"] == "breakthroughness")
                     & table["metric"].isin(VERDICT_METRICS)]
    for series in dict.fromkeys(labels[verdicts.index]):
        prefix = "" if series == "all runs" else f"{series}: "
        rows = verdicts[labels[verdicts.index] == series]
        if scores is None or scores.empty:
            lines += [prefix + _verdict_sentence(row) for _, row in rows.iterrows()]
            continue
        mine = of_series(scores, rows.iloc[0])
        final = mine[mine["step"] == mine.groupby("run")["step"].transform("max")]
        lines += [prefix + _verdict_sentence(row, pairings_kept(
            final[final["metric"] == row["metric"]], row)) for _, row in rows.iterrows()]
        exact = mine[mine["metric"] == "eval/exact_match"]
        last = final[final["metric"] == "eval/exact_match"]
        where = [text for axis in ("params", "flops")
                 if (text := between(_per_seed(last, axis, "seed"), AXIS_NAMES[axis]))]
        if where:
            lines.append(prefix + "Exact match crosses the middle of its range "
                         + ", and ".join(where) + "; the ladder has no rung in between, so "
                         "it cannot place the crossing closer.")
        lines += [prefix + line for line in _top_rung_steps(exact)]
    if scores is not None and len(scores):
        lines += _solved(scores)
    return lines


def _solved(scores: pd.DataFrame) -> list[str]:
    share = solved_share(scores)
    if share.empty or share["params"].nunique() < 2:
        return []
    cells = ", ".join(f"{int(r['params']):,}: {round(r['solved'] * r['n']):.0f}/{r['n']:.0f}"
                      for _, r in share.iterrows())
    return [f"Seeds that solved each rung (exact match >= 0.5 at the last checkpoint; "
            f"parameters: solved/seeds): {cells}."]


def _top_rung_steps(exact: pd.DataFrame) -> list[str]:
    """Between which evaluations the largest model's exact match crosses mid-range."""
    if exact.empty or exact["step"].nunique() < MIN_STEPS:
        return []
    top = exact[exact["params"] == exact["params"].max()]
    text = between(_per_seed(top, "step", "run"), "steps")
    if not text:
        return []
    name = (f"d_model={top['d_model'].iloc[0]:g}" if "d_model" in top
            else f"{int(top['params'].iloc[0]):,} parameters")
    return [f"The largest model ({name}) crosses it along training {text}."]


def solved_share(df: pd.DataFrame, metric: str = "eval/exact_match",
                 threshold: float = 0.5) -> pd.DataFrame:
    """Per series and rung at each run's last checkpoint: the share of seeds whose `metric`
    reaches `threshold` (`solved`) and the number of seeds (`n`)."""
    rows = df[df["metric"] == metric]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    keys = [c for c in rows.columns if c not in emergence.TABLE_COLUMNS and c != "seed"
            and c not in emergence.SIZE_COORDS and rows[c].nunique(dropna=False) > 1]
    return (rows.assign(solved=rows["value"] >= threshold)
            .groupby([*keys, "params"], dropna=False)["solved"]
            .agg(solved="mean", n="count").reset_index())


def too_few_rungs(table: pd.DataFrame) -> str | None:
    """One sentence in place of a table of empty cells, where no series against parameters has
    the rungs the statistics need (None where some has)."""
    rows = table[(table["axis"] == "params") & table["statistic"].isin(STATISTICS)]
    if rows.empty or rows["value"].notna().any():
        return None
    rungs = " or ".join(str(n) for n in sorted(set(rows["n_points"])))
    return (f"{rungs} rungs: too few for {', '.join(STATISTICS)} "
            f"(needs {emergence.MIN_POINTS}).")


def statistics_section(evidence) -> str | None:
    """"Emergence across model sizes": the curve statistics of the eval metrics against
    parameters, over seeds (None where no series has several sizes)."""
    table = evidence.summary
    sizes = statistics_table(table, "params", STATISTICS, prefix="eval/")
    if not len(sizes):
        return None
    return "\n\n".join([
        "## Emergence across model sizes",
        "Statistics of each metric against parameters at every run's last checkpoint, per "
        "seed, then over seeds: `transition` is the parameter count where the metric "
        "crosses the middle of its range (interpolated in log parameters between the two "
        "rungs around the crossing, which are all the ladder resolves: the Findings name "
        "them), `sharpness` its largest change per decade, "
        "`linearity` and `breakthroughness` BIG-bench's (Srivastava et al. 2022; "
        "breakthroughness is also Schaeffer et al. 2023's emergence score). An exact metric "
        "with high breakthroughness beside a continuous one with high linearity is the "
        f"metric mirage. Intervals: {INTERVAL}.",
        too_few_rungs(table) or markdown_table(sizes)])


MIRAGE_METRICS = ("exact_match", "token_accuracy", "edit_distance", "answer_logprob")


def mirage(df: pd.DataFrame, prefix: str = "eval/") -> Figure:
    """Exact and continuous metrics of the same runs side by side against parameters (at each
    run's last checkpoint), and the p^L prediction beside measured exact match (Schaeffer et al.
    2023). A colour per setting of the coordinates other than size (a row of panels per
    MAX_SERIES of them); each seed's ladder thin, the mean over seeds bold."""
    table = plots.final(df)
    names = [m for m in MIRAGE_METRICS if prefix + m in set(table["metric"])]
    chunks = plots.split_panels(table[table["metric"] == prefix + names[0]],
                                plots.series_keys(table), [])
    fig, axes = plots.grid(len(chunks) * (len(names) + 1), ncols=len(names) + 1,
                           panel=(3.2, 3.2), sharey=False)
    for row, (_, series) in enumerate(chunks):
        labels = [label for label, _ in series]
        panels = axes[row * (len(names) + 1):(row + 1) * (len(names) + 1)]
        for ax, name in zip(panels, names, strict=False):
            rows = table[table["metric"] == prefix + name]
            for colour, label in zip(plots.colours(len(labels)), labels, strict=True):
                plots.seeds_and_mean(ax, _match(rows, series, label), "params", colour,
                                     label or "mean over seeds", marker="o")
            ax.set(xlabel="parameters", ylabel=prefix + name, title=name)
        plots.legend(panels[0], len(labels))
        ax = panels[-1]
        for colour, (name, label) in zip(plots.colours(3), (
                ("exact_match", "measured"),
                ("predicted_exact_match_from_mean", "token accuracy ^ L"),
                ("predicted_exact_match_from_positions", "product over positions")),
                strict=True):
            rows = table[table["metric"] == prefix + name]
            rows = pd.concat([_match(rows, series, label) for label in labels])
            if len(rows):
                plots.seeds_and_mean(ax, rows, "params", colour, label, marker="o")
        ax.set(xlabel="parameters", ylabel="exact match", title="p^L check")
        plots.legend(ax, 3)
    for ax in axes:
        plots.set_log_x(ax, table["params"])
    return fig


def _match(rows: pd.DataFrame, series: list, label: str) -> pd.DataFrame:
    """The rows of `rows` whose runs are those of the series named `label`."""
    runs = dict(series)[label]["run"].unique()
    return rows[rows["run"].isin(runs)]


def figures(df: pd.DataFrame, by_slice, runs) -> dict[str, Figure]:
    """The main metric (exact match, else the loss) against parameters and, beside the
    continuous metrics, the mirage figure; the main metric and the loss against steps."""
    found = {}
    metrics = set(df["metric"])
    main = "eval/exact_match" if "eval/exact_match" in metrics else "eval/loss"
    if df["params"].nunique() > 1 and main in metrics:
        found["vs_params"] = plots.metric_vs_params(df, main)
        if {"eval/token_accuracy", "eval/edit_distance"} <= metrics:
            found["mirage"] = mirage(df)
    if df["step"].nunique() > 1:
        for metric in sorted({main, "eval/loss"} & metrics):
            found[f"{metric.replace('/', '_')}_vs_step"] = plots.metric_vs_step(df, metric)
    return found
