"""Scaling science: learning-rate transfer under muP, forecasts of exact match from smaller
rungs, and Nanda et al.'s progress measures for grokking. Fast tests check each analysis on
synthetic tables with known answers; slow ones reproduce the phenomena on CPU."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from experiment_runs import by_coordinate, train

from analysis import scoring
from analysis.__main__ import main as analysis_main
from analysis.phenomena import forecast, transfer
from analysis.phenomena.grokking import measures as progress
from analysis.phenomena.grokking import report as grokking
from analysis.summary import estimate

# A synthetic ladder from a known law: per-token answer loss 100 N^-0.6, answers of 5 tokens.
A, B, L = math.log(100.0), -0.6, 5


def _ladder_table(sizes, seeds=3, noise=0.05, steps=(1000,), axis="params") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        for seed in range(seeds):
            for step in steps:
                x = size if axis == "params" else step
                per_token = math.exp(A + B * math.log(x)) * math.exp(rng.normal(0, noise))
                run = f"n{size}_s{seed}"
                common = {"run": run, "seed": seed, "params": size, "step": step,
                          "flops": 6 * size * step}
                metrics = {"eval/exact_match": math.exp(-L * per_token),
                           "eval/answer_logprob": -L * per_token,
                           "eval/answer_prob": math.exp(-L * per_token)}
                rows += [{**common, "metric": k, "value": v} for k, v in metrics.items()]
    return pd.DataFrame(rows)


def test_forecast_recovers_a_known_law_and_predicts_the_held_out_rungs():
    sizes = [1000 * 2**i for i in range(7)]
    result = forecast.forecast(_ladder_table(sizes), answer_len=L, holdout=2)
    for method in ("p^L", "Hu"):
        rows = result[result["method"] == method]
        assert rows["b"].iloc[0] == pytest.approx(B, abs=0.05)
        assert rows["a"].iloc[0] + (0 if method == "p^L" else -math.log(L)) == \
            pytest.approx(A, abs=0.4)
        held = rows[rows["held_out"]]
        assert len(held) == 2 and (held["x"] == sizes[-2:]).all()
        assert held["error"].abs().max() < 0.05  # the stated tolerance
        assert (held["predicted_low"] <= held["predicted_high"]).all()
        true_transition = (L * 100 / math.log(2)) ** (1 / 0.6)
        assert rows["predicted_transition"].iloc[0] == pytest.approx(true_transition, rel=0.2)
    errors = forecast.errors(result)
    assert set(errors["method"]) == {"p^L", "Hu"} and (errors["mean_abs_error"] < 0.05).all()


def test_forecast_reports_the_miss_when_exact_match_jumps_off_the_law():
    table = _ladder_table([1000 * 2**i for i in range(6)])
    top = table["params"] == table["params"].max()
    table.loc[top & (table["metric"] == "eval/exact_match"), "value"] = 1.0  # a sudden skill
    result = forecast.forecast(table, answer_len=L, holdout=1)
    held = result[result["held_out"] & (result["method"] == "p^L")]
    assert held["error"].iloc[0] < -0.5  # predicted far below the measured 1.0, and says so


def test_forecast_along_steps_fits_early_checkpoints_and_predicts_later_ones():
    steps = [100 * 2**i for i in range(7)]
    table = _ladder_table([4000], seeds=2, steps=steps, axis="step")
    result = forecast.forecast_steps(table, answer_len=L, holdout=2)
    held = result[result["held_out"] & (result["method"] == "p^L")]
    assert len(held) == 4 and set(held["x"]) == set(steps[-2:])
    assert held["error"].abs().max() < 0.05
    assert result["b"].iloc[0] == pytest.approx(B, abs=0.05)


def test_forecast_needs_more_rungs_than_it_holds_out():
    with pytest.raises(ValueError, match="rungs"):
        forecast.forecast(_ladder_table([1000, 2000, 4000]), answer_len=L, holdout=2)


def _transfer_table(optimum) -> pd.DataFrame:
    """Loss = (log2 lr - log2 optimum(width))^2 / 10 + 1 on a factor-2 grid, two seeds."""
    rows = []
    for param in ("standard", "mup"):
        for width in (8, 16, 32, 64):
            for lr in 1e-3 * 2.0 ** np.arange(8):
                for seed in (0, 1):
                    loss = (math.log2(lr) - math.log2(optimum(param, width))) ** 2 / 10 + 1
                    rows.append({"parametrization": param, "d_model": width, "lr": lr,
                                 "seed": seed, "loss": loss + 1e-3 * seed})
    return pd.DataFrame(rows)


def test_transfer_finds_each_widths_best_lr_and_its_spread_in_grid_steps():
    # standard: optimum halves per doubling of width from 0.064; muP: 0.016 at every width
    table = _transfer_table(lambda p, w: 0.064 * 8 / w if p == "standard" else 0.016)
    best = transfer.best_lrs(table).set_index(["parametrization", "d_model"])
    assert best.loc[("standard", 8), "best_lr"] == pytest.approx(0.064)
    assert best.loc[("standard", 64), "best_lr"] == pytest.approx(0.008)
    assert best.loc[("mup", 32), "fitted_lr"] == pytest.approx(0.016, rel=1e-6)
    assert transfer.spread(best.reset_index()) == {"mup": 0, "standard": 3}
    fitted = transfer.spread(best.reset_index(), "fitted_steps")
    assert fitted["standard"] == pytest.approx(3) and fitted["mup"] == pytest.approx(0)
    assert not best["at_edge"].any()


def test_transfer_fitted_optimum_lies_between_grid_points_and_diverged_runs_never_win():
    table = _transfer_table(lambda p, w: 0.016 * 2**0.5)  # halfway between two grid points
    table.loc[table["lr"] == table["lr"].max(), "loss"] = math.inf  # the largest lr diverged
    best = transfer.best_lrs(table)
    assert np.allclose(best["fitted_lr"], 0.016 * 2**0.5)
    assert (best["best_lr"] < table["lr"].max()).all()
    fig = transfer.figure(table, best)
    assert len(fig.axes) == 2


def _fourier_logits(p: int, freqs, scale: float = 4.0):
    """Logits of the Fourier multiplication algorithm: sum over freqs of cos(w(a + b - c))."""
    idx = torch.arange(p, dtype=torch.float64)
    s = idx[:, None, None] + idx[None, :, None] - idx[None, None, :]
    return scale * sum(torch.cos(2 * math.pi * w * s / p) for w in freqs)


def test_restricted_loss_keeps_the_key_frequencies_and_excluded_loss_removes_them():
    p = 23
    circuit = _fourier_logits(p, (3, 7))
    noise = torch.randn(p, p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = circuit + 0.3 * noise
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    out = progress.restricted_excluded(logits, a, b, (a + b) % p, n_key=2)
    assert out["key_frequencies"] == [3, 7]
    full = progress.restricted_excluded(circuit, a, b, (a + b) % p, n_key=2)
    assert full["restricted_loss"] == pytest.approx(full["loss"], abs=1e-9)
    assert full["excluded_loss"] == pytest.approx(math.log(p), abs=1e-9)  # nothing left
    assert out["restricted_loss"] < out["loss"] + 0.05 and out["excluded_loss"] > 2.5
    assert 0.8 < out["key_share"] <= 1.0


def test_lead_finds_the_restricted_loss_halving_before_test_accuracy_moves():
    steps = np.arange(0, 1001, 50)
    curve = pd.DataFrame({
        "train_eval/exact_match": np.where(steps >= 100, 1.0, 0.5),
        "eval/exact_match": np.clip((steps - 500) / 400, 0, 1),
        "restricted_loss": np.where(steps < 300, 0.8, 0.1),
        "excluded_loss": 1.5 + steps / 100,
    }, index=steps)
    lead = grokking.lead(curve)
    assert lead["memorization_step"] == 100 and lead["restricted_halved_step"] == 300
    assert lead["generalization_step"] == 900 and lead["lead_steps"] == 600
    assert lead["lead_evaluations"] == 12
    assert lead["excluded_ratio"] == pytest.approx(4.5 / 2.5)


# ---------------------------------------------------------------- slow reproductions


@pytest.mark.slow
def test_mup_keeps_the_best_lr_across_width_and_standard_parametrization_does_not(tmp_path):
    train(tmp_path, "mup_transfer_small", sweep=True)
    out = tmp_path / "analysis"
    assert analysis_main([str(tmp_path), "--transfer"]) == 0
    best = pd.read_csv(out / "best_lr.csv")
    assert set(best["d_model"]) == {8, 16, 32, 64}
    fitted = transfer.spread(best, "fitted_steps")
    assert fitted["mup"] <= 1.0 < fitted["standard"]
    assert (out / "figures" / "lr_transfer.png").exists()


@pytest.mark.slow
def test_forecast_of_the_addition_ladder_reports_its_error(addition_dir, tmp_path):
    assert analysis_main([str(addition_dir), "--forecast", "--out", str(tmp_path)]) == 0
    result = pd.read_csv(tmp_path / "forecast.csv")
    held = result[result["held_out"] & (result["axis"] == "params")]
    assert set(held["method"]) == set(forecast.METHODS)
    assert held["x"].nunique() == 2 and held["predicted"].between(0, 1).all()
    assert (pd.read_csv(tmp_path / "forecast_steps.csv")["held_out"]).any()
    assert "## Forecast of exact match" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_restricted_loss_halves_several_evaluations_before_test_accuracy_rises(grokking_runs,
                                                                              tmp_path):
    decayed = by_coordinate(grokking_runs, "weight_decay")[1.0]
    assert analysis_main([str(decayed.path), "--out", str(tmp_path)]) == 0
    scores = pd.read_csv(tmp_path / "scores.csv")
    curve = scores.pivot_table(index="step", columns="metric", values="value")
    lead = grokking.lead(curve)
    assert lead["memorization_step"] <= 300
    assert lead["lead_evaluations"] >= 4  # checkpoints (every 50 steps) before 0.95
    assert lead["excluded_ratio"] > 1.0
    table = pd.read_csv(tmp_path / "summary.csv")
    assert estimate(table, "restricted_loss", "lead_steps").value == lead["lead_steps"]


@pytest.mark.slow
def test_a_grokked_model_needs_both_its_attention_and_its_mlp(grokking_runs):
    decayed = by_coordinate(grokking_runs, "weight_decay")[1.0]
    model = decayed.load_model(decayed.checkpoints()[-1])
    losses = scoring.score(model, decayed.task(), sets=["eval"], probes=["layer_ablation"],
                           slices_of=None)
    # Measured at step 2,000: test loss 0.0004 clean, 8.4 without attention, 3.9 without the
    # MLP (chance log 59 = 4.08): the Fourier circuit runs through both.
    assert losses["causal/loss/clean"] < 0.05
    assert losses["causal/loss/attn_L0"] > 2.0
    assert losses["causal/loss/mlp_L0"] > 2.0
