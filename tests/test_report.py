"""The report's layout: figures that stay readable at any number of runs, tables that name the
series of each row, detectors only where they apply, and findings first."""

from __future__ import annotations

import functools
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks
from analysis import phenomena, plots, report, summary
from analysis.phenomena import mirage
from analysis.phenomena.induction import figures as induction_figures
from analysis.phenomena.subskills import POSITION_PREFIX
from analysis.phenomena.subskills import report as subskills

STEPS = np.array([0, 250, 500, 1000, 1500, 2000, 2500, 3000])
RUNGS = {8: 2096, 12: 4296, 16: 7264, 20: 10_800, 24: 15_504, 32: 26_816}


@functools.cache
def _scores_table(runs: int, seeds: int) -> pd.DataFrame:
    return scores_table(runs, seeds)


def scores_table(runs: int, seeds: int = 5) -> pd.DataFrame:
    """A synthetic scores table of `runs` runs: the six rungs of the addition ladder x `seeds`
    seeds x as many learning rates as it takes, every metric the figures draw, along steps. A
    rung learns the units digit (answer position 0) at a step that falls with size."""
    rng = np.random.default_rng(0)
    settings = max(1, runs // (len(RUNGS) * seeds))
    rows = []
    for i in range(runs):
        d_model, seed = list(RUNGS)[i // seeds % len(RUNGS)], i % seeds
        lr = 1e-3 * (1 + i // (len(RUNGS) * seeds) % settings)
        learned = 60_000 / d_model + 100 * rng.normal()
        logprobs = [-2.3 / (1 + np.exp((STEPS - learned * (1 + k / 3)) / 150)) for k in range(3)]
        units = logprobs[0]
        exact = np.exp(sum(logprobs))
        common = {"run": str(i), "task": "arithmetic", "d_model": d_model, "lr": lr,
                  "seed": seed, "params": RUNGS[d_model], "non_embedding_params": RUNGS[d_model],
                  "tokens": STEPS * 128, "flops": STEPS * 128 * 6 * RUNGS[d_model]}
        curves = {"eval/exact_match": exact, "eval/token_accuracy": np.exp(units / 3),
                  "eval/edit_distance": 3 * (1 - np.exp(units / 3)),
                  "eval/answer_logprob": sum(logprobs), "eval/loss": -sum(logprobs) / 4,
                  "eval/predicted_exact_match_from_mean": np.exp(units),
                  "eval/predicted_exact_match_from_positions": exact,
                  "induction_loss": 4 + units, "prefix_matching_max": -units / 2.3,
                  **{f"{POSITION_PREFIX}{k}": lp for k, lp in enumerate(logprobs)}}
        for metric, values in curves.items():  # columns, not frames: 300 runs build at once
            rows.append({**{k: np.broadcast_to(v, STEPS.shape) for k, v in common.items()},
                         "step": STEPS, "metric": np.full(STEPS.shape, metric), "value": values})
    return pd.DataFrame({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})


def by_slice(df: pd.DataFrame) -> pd.DataFrame:
    """Exact match on three slices of `len_a`, the shorter operands learned first."""
    exact = df[df["metric"] == "eval/exact_match"]
    return pd.concat([exact.assign(slice="all")] + [
        exact.assign(slice=f"len_a={n}", value=exact["value"] ** (n / 3)) for n in (1, 2, 3)])


FIGURES = {
    "metric_vs_step": lambda df: plots.metric_vs_step(df, "eval/exact_match"),
    "metric_vs_params": lambda df: plots.metric_vs_params(df, "eval/exact_match"),
    "mirage": mirage.mirage,
    "induction_phase_change": induction_figures.induction_phase_change,
    "answer_positions": subskills.answer_positions,
    "exact_match_by_slice": lambda df: subskills.exact_match_by_slice(by_slice(df), "len_a"),
}


def layout(fig) -> dict:
    """The drawn figure's share of area in axes, its smallest axes (inches) and largest
    legend (entries)."""
    fig.draw_without_rendering()  # constrained layout places the axes when drawn
    width, height = fig.get_size_inches()
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    boxes = {tuple(ax.get_position().bounds): ax.get_position() for ax in axes}  # twins: one
    area = sum(b.width * b.height for b in boxes.values())
    legends = [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    return {"area": area, "smallest": min(min(b.width * width, b.height * height)
                                          for b in boxes.values()),
            "legend": max((len(lg.get_texts()) for lg in legends), default=0)}


@pytest.mark.parametrize("kind", FIGURES)
def test_every_figure_keeps_its_axes_and_a_short_legend_at_30_and_300_runs(kind):
    shapes = {runs: layout(FIGURES[kind](_scores_table(runs, 5).copy())) for runs in (30, 300)}
    for runs, shape in shapes.items():
        assert shape["area"] > 0.5, (runs, shape)  # axes, not legends, fill the figure
        assert shape["legend"] <= plots.MAX_SERIES, (runs, shape)
        assert shape["smallest"] > 2.0, (runs, shape)  # inches: readable however many runs
    assert shapes[300]["smallest"] == pytest.approx(shapes[30]["smallest"], rel=0.25)


# --- detectors only where they apply ----------------------------------------------------------


class FakeRun:
    """A run as mark_training_sets sees it: a name and the task its config builds."""

    def __init__(self, name: str, task: dict):
        self.name, self._task = name, task

    def task(self):
        return tasks.build(self._task)


def grokking_table(finite: bool | None) -> pd.DataFrame:
    """Two seeds whose train accuracy reaches 1 at step 100 and test accuracy at ~1,200."""
    steps, rows = np.arange(0, 2001, 100), []
    for seed in (0, 1):
        train = np.clip(steps / 100, 0, 1)
        test = 1 / (1 + np.exp(-(steps - 1100 - 100 * seed) / 50))
        common = {"run": str(seed), "task": "modular", "seed": seed, "params": 1e4,
                  "non_embedding_params": 1e4, "tokens": 0, "flops": 0}
        if finite is not None:
            common["finite_train_set"] = finite
        for metric, curve in (("train_eval/exact_match", train), ("eval/exact_match", test),
                              ("eval/loss", 1 - test)):
            rows += [{**common, "step": s, "metric": metric, "value": v}
                     for s, v in zip(steps, curve, strict=True)]
    return pd.DataFrame(rows)


def test_a_finite_training_set_is_read_from_the_task_each_run_builds():
    runs = [FakeRun("pool", {"kind": "modular", "p": 7, "train_fraction": 0.5}),
            FakeRun("fresh", {"kind": "arithmetic", "digits": 2}),
            FakeRun("fixed", {"kind": "arithmetic", "digits": 2, "train_size": 50})]
    table = pd.DataFrame({"run": ["pool", "fresh", "fixed"], "value": [0.0, 0.0, 0.0]})
    marked = summary.mark_training_sets(table, runs)
    assert marked["finite_train_set"].tolist() == [True, False, True]


def test_fresh_data_gets_no_grokking_statistics_and_the_report_says_why(tmp_path):
    finite = summary.summarize(grokking_table(True))
    assert len(summary.select(finite, "eval/exact_match", "grokking_ratio"))
    assert any("grokking: generalized" in line for line in report.verdicts(finite))
    fresh_scores = grokking_table(False)
    fresh = summary.summarize(fresh_scores)
    grokking = ("memorization_step", "generalization_step", "grokking_ratio")
    assert not fresh["statistic"].isin(grokking).any()
    assert not any("grokking" in line for line in report.verdicts(fresh))
    text = report.write_report(fresh_scores, fresh, [], [], tmp_path, "fresh").read_text()
    events = text.split("## Events during training")[1]
    assert "no finite training set to memorize" in events
    assert "| none" not in events and "memorization_step" not in events
    assert "drop_start" in events  # the plateau-and-drop detector applies to any loss


# --- findings first ---------------------------------------------------------------------------


def ladder(seeds=range(5)) -> pd.DataFrame:
    """The last checkpoint of a 6-rung ladder whose exact match jumps from 0.1 to 1 between
    rungs 3 and 4 (token accuracy climbing steadily), with per-position log-probabilities:
    position 0 at chance (log 1/10) until rung 4, the others learned from the start."""
    rows = []
    for rung, (d_model, params) in enumerate(RUNGS.items()):
        for seed in seeds:
            common = {"run": f"{d_model}-{seed}", "task": "arithmetic", "d_model": d_model,
                      "seed": seed, "params": params, "non_embedding_params": params,
                      "step": 3000, "tokens": 0, "flops": 6 * params * 3000}
            exact = 0.1 + 0.01 * rung + 0.002 * seed if rung < 4 else 1.0
            values = {"eval/exact_match": exact, "eval/token_accuracy": 0.5 + 0.1 * rung,
                      f"{POSITION_PREFIX}0": -2.3 if rung < 4 else -0.01,
                      f"{POSITION_PREFIX}1": -0.05}
            rows += [{**common, "metric": m, "value": v} for m, v in values.items()]
    return pd.DataFrame(rows)


def test_the_report_opens_with_findings_written_from_the_statistics(tmp_path):
    scores = ladder()
    table = summary.summarize(scores)
    text = report.write_report(scores, table, [], [], tmp_path, "ladder").read_text()
    assert text.split("\n## ")[1].startswith("Findings")
    found = text.split("## Findings")[1].split("\n## ")[0]
    assert "Exact match improves suddenly with size: breakthroughness" in found
    assert "Token accuracy improves smoothly with size" in found
    assert "threshold 10 (2 x a straight line's over 6 rungs)" in found
    assert "Seeds that solved each rung" in found and "15,504: 5/5" in found
    assert "7,264: 0/5" in found
    assert "answer position 0" in found and "-2.30, -2.30, -2.30, -2.30, -0.01, -0.01" in found
    # A jump between two rungs is placed between them, not at an interpolated size.
    assert ("crosses the middle of its range between 10,800 and 15,504 parameters in all 5 "
            "seeds") in found
    assert "log-probability crosses the middle of its range between 10,800 and 15,504" in found


def test_a_per_seed_verdict_says_how_many_pairings_of_seeds_into_ladders_give_it_again():
    """A ladder's runs share only a seed number: the clean ladder's verdict survives every
    re-pairing; one whose early solvers happen to share a seed number does not."""
    scores = ladder(seeds=range(3))
    table = summary.summarize(scores)
    row = summary.select(table, "eval/exact_match", "breakthroughness", "params").iloc[0]
    exact = scores["metric"] == "eval/exact_match"
    assert mirage.pairings_kept(scores[exact], row) == mirage.PAIRINGS
    # Seed 0 alone solves rungs 2 and 3: in its own ladder one jump, shuffled a zigzag.
    solver = (scores["seed"] == 0) & scores["d_model"].isin([16, 20])
    scores.loc[solver & (scores["metric"] == "eval/exact_match"), "value"] = 1.0
    table = summary.summarize(scores)
    row = summary.select(table, "eval/exact_match", "breakthroughness", "params").iloc[0]
    kept = mirage.pairings_kept(scores[exact], row)
    assert 0 < kept < 0.9 * mirage.PAIRINGS
    found = mirage.findings(report.Evidence(scores, table, None, [], Path(".")))
    assert any(f"{kept} of {mirage.PAIRINGS} random pairings" in line
               and "rests on which models share a seed number" in line for line in found)


def test_a_crossing_is_named_by_the_rungs_around_it_in_each_seed(tmp_path):
    scores = ladder()
    # Seed 0 solves the task one rung early: its crossing moves down a rung, the others stay.
    early = (scores["seed"] == 0) & (scores["d_model"] == 20)
    scores.loc[early & (scores["metric"] == "eval/exact_match"), "value"] = 1.0
    table = summary.summarize(scores)
    found = report.findings(report.Evidence(scores, table, None, [], tmp_path))
    crossing = next(line for line in found if line.startswith("Exact match crosses"))
    assert crossing.startswith("Exact match crosses the middle of its range between 7,264 and "
                               "10,800 parameters in 1 of 5 seeds, between 10,800 and 15,504 "
                               "in 4, and between ")  # then the FLOPs, the same way
    # Slices that all cross between the same rungs are not ordered by interpolation.
    slices = pd.concat([scores[scores["metric"] == "eval/exact_match"].assign(slice=name)
                        for name in ("all", "len_a=1", "len_a=2")])
    found = report.findings(report.Evidence(scores, table, slices, [], tmp_path))
    assert ("2 of the eval set's 2 slices are solved last, their exact match (seed mean) "
            "crossing the middle of its range between 10,800 and 15,504 parameters (len_a=1, "
            "len_a=2): the ladder does not order them.") in found


def test_an_unclear_verdict_estimates_the_seeds_that_would_decide_it_only_where_honest():
    row = {"metric": "eval/exact_match", "value": 14.0, "low": 8.0, "high": 20.0,
           "n_seeds": 5, "n_points": 6, "note": ""}
    # The half-width 6 must shrink to the distance 4: 5 x (6 / 4)^2 = 11.25 -> 12 seeds.
    assert mirage.seeds_to_decide(row) == ("; about 7 more seeds per rung would decide it at "
                                            "this spread")
    assert "no affordable" in mirage.seeds_to_decide({**row, "value": 10.5})


def test_the_shared_core_names_no_phenomenons_metric_or_statistic():
    from analysis.phenomena import causal, grokking, induction
    from analysis.phenomena.grokking import measures

    names = {induction.PER_HEAD, induction.PREFIX_MATCHING_MAX, induction.INDUCTION_LOSS,
             induction.ICL_SCORE, grokking.WEIGHT_NORM, grokking.FOURIER, grokking.TRAIN_TEST_GAP,
             measures.RESTRICTED_LOSS, measures.EXCLUDED_LOSS, POSITION_PREFIX, causal.PREFIX,
             *phenomena.gather("STEP_EVENTS")}
    core = Path(report.__file__).parent
    for path in core.glob("*.py"):
        text = path.read_text()
        assert not [name for name in names if name in text], path.name


def test_a_phenomenon_joins_the_findings_and_sections_with_one_line(tmp_path, monkeypatch):
    stages = types.SimpleNamespace(
        findings=lambda evidence: [f"{evidence.scores['run'].nunique()} runs in stages."],
        section=lambda evidence: "## Developmental stages\n\ntwo stages")
    registered = phenomena.modules()
    monkeypatch.setattr(phenomena, "modules", lambda: (*registered, stages))
    scores = ladder()
    text = report.write_report(scores, summary.summarize(scores), [], [], tmp_path,
                               "x").read_text()
    assert "- 30 runs in stages." in text.split("## Runs")[0]
    assert "## Developmental stages" in text


# --- tables name their series ----------------------------------------------------------------


def test_the_slice_transition_table_names_each_rows_series():
    df = scores_table(30)
    table = subskills.slice_transitions(by_slice(df))
    text = subskills.errors_section(by_slice(df), table)
    rows = text.split("within one gap the order comes from interpolation.")[1]
    assert rows.strip().startswith("| axis | series | slice | transition |")
    assert "| step | d_model=32 | len_a=1 |" in rows
    assert "| params | all runs | len_a=1 |" in rows
    # len_a=3 ends at exact match 0.16-0.34 on the top rung: its "middle" would be noise.
    assert "len_a=3" not in rows and "| step | d_model=24 |" not in rows
