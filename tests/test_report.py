"""The report's layout: figures that stay readable at any number of runs, tables that name the
series of each row, detectors only where they apply, and findings first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.mechanistic import POSITION_PREFIX

STEPS = np.array([0, 250, 500, 1000, 1500, 2000, 2500, 3000])
RUNGS = {8: 2096, 12: 4296, 16: 7264, 20: 10_800, 24: 15_504, 32: 26_816}


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
        rows += [pd.DataFrame({**common, "step": STEPS, "metric": metric, "value": values})
                 for metric, values in curves.items()]
    return pd.concat(rows, ignore_index=True)


def by_slice(df: pd.DataFrame) -> pd.DataFrame:
    """Exact match on three slices of `len_a`, the shorter operands learned first."""
    exact = df[df["metric"] == "eval/exact_match"]
    return pd.concat([exact.assign(slice="all")] + [
        exact.assign(slice=f"len_a={n}", value=exact["value"] ** (n / 3)) for n in (1, 2, 3)])


FIGURES = {
    "metric_vs_step": lambda df: plots.metric_vs_step(df, "eval/exact_match"),
    "metric_vs_params": lambda df: plots.metric_vs_params(df, "eval/exact_match"),
    "mirage": plots.mirage,
    "induction_phase_change": plots.induction_phase_change,
    "answer_positions": plots.answer_positions,
    "exact_match_by_slice": lambda df: plots.exact_match_by_slice(by_slice(df), "len_a"),
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
    shapes = {runs: layout(FIGURES[kind](scores_table(runs))) for runs in (30, 300)}
    for runs, shape in shapes.items():
        assert shape["area"] > 0.5, (runs, shape)  # axes, not legends, fill the figure
        assert shape["legend"] <= plots.MAX_SERIES, (runs, shape)
        assert shape["smallest"] > 2.0, (runs, shape)  # inches: readable however many runs
    assert shapes[300]["smallest"] == pytest.approx(shapes[30]["smallest"], rel=0.25)
