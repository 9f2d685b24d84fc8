"""Grokking (Power et al. 2022) along training: the steps where train and test accuracy reach
0.99 and their ratio, the lead of the restricted loss over test accuracy (Nanda et al. 2023's
progress measures, scored by `measures`), the verdict, the events' notes and the figure of each
series. Only where runs train on a finite set (`finite_train_set`, analysis.summary): with fresh
problems every step there is nothing to memorize.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.emergence import sorted_curve
from analysis.phenomena.grokking import FOURIER, WEIGHT_NORM
from analysis.phenomena.grokking.measures import EXCLUDED_LOSS, RESTRICTED_LOSS
from analysis.runs import Run
from analysis.summary import describe, find_row

# Nanda et al.'s progress measures: restricted loss halves well before test accuracy moves.
PROGRESS_EVENTS = ("restricted_halved_step", "lead_steps", "lead_evaluations", "excluded_ratio")
STEP_EVENTS = ("memorization_step", "generalization_step", "grokking_ratio", *PROGRESS_EVENTS)
NON_NEGATIVE = ("memorization_step", "generalization_step", "grokking_ratio",
                "restricted_halved_step")
STEP_MARKS = ("memorization_step", "generalization_step", "restricted_halved_step")
STEP_EVENTS_TEXT = "Grokking: first steps where train and test accuracy reach 0.99."
KEY_METRICS = (WEIGHT_NORM, FOURIER)


def grokking_steps(steps, train_acc, test_acc, threshold: float = 0.99) -> dict[str, float]:
    """First step where train accuracy reaches `threshold` (memorization), first step where
    test accuracy does (generalization), and their ratio: the delay grokking is named for.
    NaN where a threshold is never reached."""

    def first_reach(acc) -> float:
        x, y = sorted_curve(steps, acc, log_x=False)
        reached = np.flatnonzero(y >= threshold)
        return float(x[reached[0]]) if len(reached) else float("nan")

    memorization, generalization = first_reach(train_acc), first_reach(test_acc)
    ratio = generalization / memorization if memorization > 0 else float("nan")
    return {"memorization_step": memorization, "generalization_step": generalization,
            "ratio": ratio}


def lead(curve: pd.DataFrame, memorized: float = 0.99, generalized: float = 0.95) -> dict:
    """From one run's table indexed by step with `train_eval/exact_match`,
    `eval/exact_match`, `restricted_loss`, `excluded_loss`: the memorization step (train
    accuracy first >= `memorized`), the first step after it where restricted loss is below half
    its memorization-time value, the first step test accuracy reaches `generalized`, the lead
    between the two in steps and in evaluations, and excluded loss at the halving step relative
    to its memorization-time value. NaN where an event does not happen."""
    curve = curve.sort_index()
    nan = {k: math.nan for k in ("memorization_step", "restricted_halved_step",
                                 "generalization_step", "lead_steps", "lead_evaluations",
                                 "excluded_ratio")}

    def first(mask) -> float:
        hits = curve.index[mask.to_numpy()]
        return float(hits[0]) if len(hits) else math.nan

    memorization = first(curve["train_eval/exact_match"] >= memorized)
    if math.isnan(memorization):
        return nan
    at_memorization = curve.loc[memorization]
    after = curve.index >= memorization
    halved = first(pd.Series(after, curve.index) & (curve[RESTRICTED_LOSS]
                                                   < at_memorization[RESTRICTED_LOSS] / 2))
    generalization = first(curve["eval/exact_match"] >= generalized)
    steps = curve.index.to_numpy(dtype=float)
    evaluations = (int(np.sum((steps >= halved) & (steps < generalization)))
                   if not (math.isnan(halved) or math.isnan(generalization)) else math.nan)
    ratio = (curve.loc[halved, EXCLUDED_LOSS] / at_memorization[EXCLUDED_LOSS]
             if not math.isnan(halved) else math.nan)
    return {"memorization_step": memorization, "restricted_halved_step": halved,
            "generalization_step": generalization, "lead_steps": generalization - halved,
            "lead_evaluations": evaluations, "excluded_ratio": float(ratio)}


def step_statistics(x: np.ndarray, wide: pd.DataFrame,
                    finite: bool) -> dict[tuple[str, str], tuple[float, str]]:
    """grokking_steps (as memorization_step, generalization_step, grokking_ratio of exact
    match) and the progress measures' lead (of restricted_loss), where the training set is
    `finite`."""
    stats = {}
    if finite and {"train_eval/exact_match", "eval/exact_match"} <= set(wide.columns):
        grok = grokking_steps(x, wide["train_eval/exact_match"], wide["eval/exact_match"])
        never = {"memorization_step": "none: train accuracy never reaches 0.99",
                 "generalization_step": "none: test accuracy never reaches 0.99",
                 "ratio": "none: an accuracy never reaches 0.99"}
        for name, value in grok.items():
            stats[("eval/exact_match", name if name != "ratio" else "grokking_ratio")] = (
                value, "" if np.isfinite(value) else never[name])
    if finite and {RESTRICTED_LOSS, EXCLUDED_LOSS, "train_eval/exact_match",
                   "eval/exact_match"} <= set(wide.columns):
        for name, value in lead(wide).items():
            if name in PROGRESS_EVENTS:
                stats[(RESTRICTED_LOSS, name)] = (value, "" if np.isfinite(value) else (
                    "none: not memorized, restricted loss never halves, or test accuracy never "
                    "reaches 0.95"))
    return stats


def step_verdict(rows: pd.DataFrame) -> str | None:
    """The grokking verdict of one series, where its training set is memorized and test
    accuracy does not reach 0.99 at the same evaluation in every seed (as it does where the
    training data are fresh samples: nothing is memorized there, and no delay to report)."""
    memorized = find_row(rows, "eval/exact_match", "memorization_step")
    if memorized is None or np.isnan(memorized["value"]):
        return None
    generalized = find_row(rows, "eval/exact_match", "generalization_step")
    ratio = find_row(rows, "eval/exact_match", "grokking_ratio")
    if ratio["value"] == 1 and not ratio["high"] > 1:
        return None
    if np.isnan(generalized["value"]):
        return f"grokking: memorized at step {describe(memorized)}; {generalized['note']}"
    seeds = "1 seed" if ratio["n_seeds"] == 1 else f"{ratio['n_seeds']:.0f} seeds"
    return (f"grokking: generalized {describe(ratio, seeds=False)} times as late as it "
            f"memorized (steps {describe(generalized, seeds=False)} and "
            f"{describe(memorized, seeds=False)}; {seeds})")


def fresh_data_note(df: pd.DataFrame) -> str | None:
    """Why there is no grokking statistic, where runs train on fresh problems every step."""
    if "finite_train_set" not in df or df["finite_train_set"].all():
        return None
    fresh = df.loc[~df["finite_train_set"].astype(bool), "run"].nunique()
    return (f"No grokking or memorization statistics for the {fresh} runs that train on fresh "
            "problems every step: there is no finite training set to memorize, so train and "
            "test accuracy measure the same thing.")


def events_notes(evidence, events: pd.DataFrame) -> list[str]:
    """Why runs on fresh data have no grokking statistics; what the progress measures mean."""
    notes = [note] if (note := fresh_data_note(evidence.scores)) else []
    if len(events) and RESTRICTED_LOSS in set(events["metric"]):
        notes.append("Progress measures (Nanda et al. 2023): `restricted_halved_step` is "
                     "the first checkpoint after memorization where restricted loss is "
                     "below half its memorization-time value, `lead_steps` and "
                     "`lead_evaluations` how long before test accuracy reaches 0.95, and "
                     "`excluded_ratio` excluded loss there over its memorization-time "
                     "value (above 1: memorization alone explains less).")
    return notes


def draw(ax, table: pd.DataFrame) -> None:
    """Training, restricted and excluded loss against step on `ax` (log y), with the steps
    where restricted loss has halved and where test accuracy reaches 0.95 (`lead`) marked."""
    for column, label, style in (("train_eval/loss", "train loss", "-"),
                                 (RESTRICTED_LOSS, "restricted loss", "-"),
                                 (EXCLUDED_LOSS, "excluded loss", "--")):
        if column in table:
            curve = table[column].dropna()
            ax.plot(curve.index, curve.to_numpy(), style, label=label)
    if {"train_eval/exact_match", "eval/exact_match", EXCLUDED_LOSS} <= set(table.columns):
        events = lead(table[table[RESTRICTED_LOSS].notna()])
        for step, label, color in ((events["restricted_halved_step"], "restricted loss halved",
                                    "C1"), (events["generalization_step"],
                                            "test accuracy 0.95", "black")):
            if math.isfinite(step):
                ax.axvline(step, color=color, ls=":", label=f"{label} (step {step:.0f})")
    ax.set(yscale="log", xlabel="step", ylabel="loss on training pairs",
           title="progress measures (Nanda et al. 2023)")
    ax.legend(fontsize="small")


def grokking_curves(table: pd.DataFrame, title: str = "",
                    seeds: list[pd.DataFrame] = ()) -> Figure:
    """Train and test accuracy against step, sum of squared weights on a twin axis; where the
    table has restricted_loss, a second panel of the progress measures (`draw`).
    `table` has one row per step (index or `step` column) and any of the columns
    train_eval/exact_match, eval/exact_match, weight_norm, train_eval/loss, restricted_loss,
    excluded_loss (e.g. metrics.jsonl joined with scores): one run, or the mean of `seeds`,
    tables of the same kind whose accuracies are drawn thin behind it."""
    table = table.set_index("step") if "step" in table.columns else table
    measures = RESTRICTED_LOSS in table  # Nanda et al.'s progress measures, a second panel
    fig = Figure(figsize=(6.4 * (1 + measures), 4.4), layout="constrained")
    ax, *more = fig.subplots(1, 1 + measures, squeeze=False)[0]
    if measures:
        draw(more[0], table)  # linear steps: the lead reads as a distance
    for colour, (column, label) in zip(("C0", "C1"), (("train_eval/exact_match", "train"),
                                                      ("eval/exact_match", "test")), strict=True):
        for seed in seeds:
            seed = seed.set_index("step") if "step" in seed.columns else seed
            if column in seed:
                curve = seed[column].dropna()
                ax.plot(curve.index, curve.to_numpy(), color=colour, lw=0.7, alpha=0.35)
        if column in table:
            curve = table[column].dropna()
            ax.plot(curve.index, curve.to_numpy(), color=colour, lw=2 if len(seeds) else 1.5,
                    label=f"{label} accuracy" + (f" (mean of {len(seeds)} seeds)"
                                                 if len(seeds) > 1 else ""))
    ax.set(xlabel="step", ylabel="accuracy", title=title or "grokking")
    handles, labels = ax.get_legend_handles_labels()
    if WEIGHT_NORM in table:
        twin = ax.twinx()
        curve = table[WEIGHT_NORM].dropna()
        twin.plot(curve.index, curve.to_numpy(), color="gray", linestyle="--",
                  label="sum of squared weights")
        twin.set_ylabel("sum of squared weights")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    plots.set_log_x(ax, table.index)
    ax.legend(handles, labels, fontsize="small")
    return fig


def _run_table(df: pd.DataFrame, run: Run | None, name: str) -> pd.DataFrame:
    """One row per step: the run's metrics.jsonl (denser, logged in training), filled in with
    its scores."""
    scores = df[df["run"] == name].pivot_table(index="step", columns="metric", values="value")
    logged = run.metrics() if run is not None else pd.DataFrame()
    if "step" not in logged:
        return scores
    return logged.groupby("step").mean(numeric_only=True).combine_first(scores)


def figures(df: pd.DataFrame, by_slice, runs: list[Run]) -> dict[str, Figure]:
    """grokking_curves of each series (size and setting), its seeds behind their mean."""
    if WEIGHT_NORM not in set(df["metric"]):
        return {}
    by_name = {run.name: run for run in runs}
    found = {}
    for label, rows in plots.order(df, [*plots.size_keys(df), *plots.series_keys(df)]):
        seeds = [_run_table(df, by_name.get(name), name) for name in rows["run"].unique()]
        mean = pd.concat(seeds).groupby(level=0).mean() if len(seeds) > 1 else seeds[0]
        name = re.sub(r"[^\w.-]+", "_", label) or "all_runs"
        found[f"grokking_{name}"] = grokking_curves(
            mean, f"grokking, {label or 'all runs'}", seeds if len(seeds) > 1 else ())
    return found
