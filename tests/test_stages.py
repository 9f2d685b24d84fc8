"""Developmental stages (analysis/phenomena/stages/): the LLC estimator on a model whose LLC is
known, the health checks, the head masks, the stage detector on synthetic curves; slow ones
sample the LLC of the shared grokking and induction runs and check the shapes measured on them."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from experiment_runs import analyse, by_coordinate, evals
from torch import nn

from analysis import scoring
from analysis.__main__ import main as analysis_main
from analysis.phenomena.stages import detect, llc, sweep
from analysis.runs import find_runs
from analysis.summary import estimate
from models import GPT, GPTConfig

if "llc" in os.environ.get("PHASELAB_EXTRAS", ""):
    import devinterp  # installed with the extra, so its absence is a failure
else:
    try:
        import devinterp
    except ImportError:
        devinterp = None
# The sampler's tests; the rest (health, masks, stages, calibration rule) need no devinterp.
needs_llc = pytest.mark.skipif(devinterp is None,
                               reason='needs the llc extra: pip install -e ".[llc]"')


def _regression(seed: int, d: int = 8, n: int = 1000):
    """A linear regression (d weights and a bias) fitted to its unique minimum: a regular model,
    whose LLC is half its parameter count."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = x @ torch.randn(d, 1, generator=generator) + 0.5 * torch.randn(n, 1, generator=generator)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1)
    design = torch.cat([x, torch.ones(n, 1)], 1)
    solution = torch.linalg.lstsq(design, y).solution  # the exact minimum
    with torch.no_grad():
        model.weight.copy_(solution[:d].T)
        model.bias.copy_(solution[d])
    rows = torch.cat([x, y], 1)
    return model, rows, lambda m, r: 0.5 * (m(r[:, :-1]) - r[:, -1:]).squeeze(1) ** 2


# Full batch, n_beta far above the localization: the sampled posterior is the Laplace one.
REGULAR = llc.Settings(lr=3e-4, n_beta=1000.0, localization=1.0, chains=4, draws=200,
                       burnin=50, batch_size=1000)


@needs_llc
@pytest.mark.parametrize("seed", [0, 1])
def test_llc_of_a_regular_model_at_its_minimum_is_half_its_parameter_count(seed):
    model, rows, loss = _regression(seed)
    before = [p.clone() for p in model.parameters()]
    found = llc.estimate(model, rows, loss, REGULAR)
    assert found.healthy, found.reasons
    # Seeds 0-4 gave 4.83-4.90 (chains spread 0.42-0.46): d / 2 times the step's discretization
    # bias, 1 / (1 - lr n_beta h / 4) ~ 1.08 with the Hessian h ~ 1 of standard normal inputs.
    assert found.llc == pytest.approx(9 / 2, abs=0.6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@needs_llc
def test_a_diverging_sampler_is_reported_unhealthy_not_as_a_number():
    model, rows, loss = _regression(0)
    found = llc.estimate(model, rows, loss, llc.Settings(lr=1.0, n_beta=1000.0, chains=2,
                                                          draws=20, burnin=0, batch_size=1000))
    assert not found.healthy and found.reasons == ("not finite",)
    scores = llc.scores("llc", found)
    assert math.isnan(scores["llc"]) and scores["llc/healthy"] == 0


def test_health_flags_disagreeing_chains_drift_and_spikes():
    steady = np.full((2, 100), 10.0) + np.random.default_rng(0).normal(0, 0.5, (2, 100))
    ok = llc.check(llc.Estimate(10.0, 0.1, [9.9, 10.1], steady))
    assert ok.healthy, ok.reasons
    rising = steady + np.linspace(0, 20, 100)
    assert any("converged" in r for r in llc.check(llc.Estimate(20, 0.1, [20, 20], rising)).reasons)
    spiky = steady.copy()
    spiky[0, 50] = 200
    assert any("spike" in r for r in llc.check(llc.Estimate(10, 0.1, [10, 10], spiky)).reasons)
    apart = llc.check(llc.Estimate(10, 4.0, [6, 14], steady))
    assert apart.reasons == ("chains disagree (spread 4)",)
    assert llc.check(llc.Estimate(-1, 0.1, [-1, -1], steady - 11)).reasons[0] == "negative"


def test_head_masks_are_the_heads_slices_of_the_fused_projections():
    model = GPT(GPTConfig(d_vocab=10, n_ctx=8, d_model=16, n_layers=2, n_heads=4, d_head=4,
                          d_mlp=32, bias=True))
    heads = [llc.masks(model, f"L1H{h}") for h in range(4)]
    for name in ("blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias", "blocks.1.attn.out.weight"):
        total = sum(m[name].long() for m in heads)
        assert (total == (1 if name != "blocks.1.attn.out.weight" else 1)).all()  # a partition
    qkv = heads[2]["blocks.1.attn.qkv.weight"]
    assert qkv[:, 0].nonzero().squeeze(1).tolist() == [8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43]
    assert heads[2]["blocks.1.attn.out.weight"][0].nonzero().squeeze(1).tolist() == [8, 9, 10, 11]
    assert set(llc.masks(model, "L0")) == {n for n, _ in model.named_parameters()
                                          if n.startswith("blocks.0.")}
    with pytest.raises(ValueError, match="L2H0"):
        llc.masks(model, "L2H0")


def test_the_llc_probe_is_opt_in():
    assert "llc" in scoring.PROBE_NAMES
    scoring.check_probes(["llc"], "train.eval_probes")
    assert not any(p.name == "llc" for p in scoring.PROBES if not p.opt_in)


def _grid(*blocks):
    """Calibration grid records, step sizes in order under each temperature; None: unhealthy."""
    return [{"llc": math.nan if v is None else v, "healthy": v is not None}
            for block in blocks for v in block]


def test_calibration_takes_the_largest_flat_step_size_under_the_first_temperature_with_one():
    assert llc.choose(_grid([50, 60, 70], [1, 2, 3])) == (2, True)  # 60 -> 70 within 25%
    assert llc.choose(_grid([50, 100, None], [20, 24, 40])) == (4, True)  # second temperature
    # No flat pair anywhere (grokking seed 2's grid): the flattest, 26%, recorded as not flat.
    assert llc.choose(_grid([70, 124, 216], [108, 251, None], [26.1, 32.9, 129])) == (7, False)
    assert llc.choose(_grid([None, 5, None])) == (None, False)


def test_llc_without_devinterp_is_refused_before_anything_is_written(demo_dir, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(sweep, "missing_extra", lambda: "--llc needs devinterp")
    out = tmp_path / "analysis"
    assert analysis_main([str(demo_dir), "--llc", "--out", str(out)]) == 2
    assert not out.exists()


def test_turning_points_find_peaks_and_troughs_that_reverse_by_the_threshold():
    assert detect.turning_points([0, 5, 10, 6, 3, 2], 1) == [(2, "peak")]
    assert detect.turning_points([0, 5, 10, 6, 3, 8], 1) == [(2, "peak"), (4, "trough")]
    assert detect.turning_points([0, 1, 0.8, 2, 1.9, 3], 0.5) == []  # wiggles below it
    assert detect.turning_points([10, 8, 3, 3, 3], 1) == []  # a fall then flat: no reversal


def test_checkpoints_are_picked_evenly_in_log_step_filling_in_a_sparse_schedule():
    assert sweep.pick_steps(list(range(0, 1501, 50)), 12) == [
        0, 50, 100, 150, 200, 250, 300, 400, 550, 750, 1050, 1500]  # every 50: filled in
    log_spaced = [0, 1, 2, 4, 8, 16, 32, 50, 64, *range(100, 2001, 50)]
    assert sweep.pick_steps(log_spaced, 12) == [0, 1, 4, 8, 16, 32, 64, 150, 250, 500, 1000,
                                                2000]
    assert sweep.pick_steps([0, 10, 20], 12) == [0, 10, 20]


def _curves(peaks: dict[int, int | None], steps=(0, 50, 100, 200, 400, 800, 1600)):
    """A scores table of LLC curves, one run per seed, peaking at the given step (or rising)."""
    rows = []
    for seed, peak in peaks.items():
        for step in steps:
            value = 10 + step / 100 if peak is None else 30 - abs(math.log1p(step) -
                                                                  math.log1p(peak)) * 5
            scores = {"llc": value, "llc/estimate": value, "llc/std": 0.2, "llc/healthy": 1.0}
            rows += [{"run": f"s{seed}", "task": "toy", "seed": seed, "params": 10, "step": step,
                      "metric": k, "value": v} for k, v in scores.items()]
    return pd.DataFrame(rows)


def test_stage_boundaries_are_summarized_over_seeds_with_an_interval():
    table = detect.summarize(_curves({0: 200, 1: 400, 2: 200}))
    row = table[table["statistic"] == "boundary_1"].iloc[0]
    assert row["n_seeds"] == 3 and row["low"] < row["value"] < row["high"]
    assert row["value"] == pytest.approx((200 * 400 * 200) ** (1 / 3))  # on the log-step axis
    assert table[table["statistic"] == "kind_1"]["value"].iloc[0] == 1  # peaks
    none = detect.summarize(_curves({0: None}))
    assert none[none["statistic"] == "boundaries"]["value"].iloc[0] == 0
    assert "none" in detect.sentences(none)[0]


def test_an_unhealthy_estimate_is_left_out_of_the_curve_and_said():
    df = _curves({0: 200})
    bad = (df["step"] == 200) & df["metric"].isin(["llc", "llc/healthy"])
    df.loc[bad, "value"] = [np.nan, 0.0]  # the peak itself unhealthy
    table = detect.summarize(df)
    peak = table[table["statistic"] == "boundary_1"]["value"].iloc[0]
    assert peak == pytest.approx(100) or peak == pytest.approx(400)
    (line,) = detect.sentences(table)
    assert "14% of estimates unhealthy" in line
    fig = detect.figure(df, table)
    (ax,) = fig.axes
    drawn = np.concatenate([line.get_ydata() for line in ax.lines if len(line.get_ydata()) > 2])
    assert not np.isnan(drawn).any() and len(drawn) == 6  # six healthy points, none for 200


# --- the shapes measured on the shared runs (slow) ---------------------------------------------


# Grokking (weight decay 1, 40% of the pairs, seed 0; calibrated to step size 3e-4, n_beta 30,
# localization 300): LLC 1.7 at step 0, 25 at 32, 102 at memorization (64), then 81 / 64 / 46 /
# 16 at steps 128 / 250 / 500 / 1,000 while test accuracy goes 0.25 / 0.32 / 0.41 / 0.98, and
# 21 at 2,000; every estimate healthy. Seed 2 (same settings): 2.3 at step 0, 98 at 64, 35 at
# 1,000, 33 at 2,000. Seeds 0 and 1 to step 1,500: docs/experiments.md.
HEALTHY, RISE, FALL = 0.9, 10.0, 0.5


@needs_llc
@pytest.mark.slow
def test_grokking_llc_rises_to_memorization_and_falls_as_test_accuracy_climbs(grokking_runs,
                                                                              tmp_path):
    run = by_coordinate(grokking_runs, "weight_decay")[1.0]
    scores = sweep.score_llc([run], tmp_path, workers=2)
    curve = detect.curves(scores)[run.name].set_index("step")
    # Calibrated on the last checkpoint: flat within 22% from 1e-4 to 3e-4 under localization
    # 300 here, 26% for seed 2 (then the flattest pair, the same settings): too near the rule's
    # 25% to assert either way.
    assert json.loads((tmp_path / "llc" / f"{run.name}.json").read_text())["grid"]
    evaluations = evals(run).set_index("step")
    memorized = evaluations.index[evaluations["train_eval/exact_match"] >= 0.99][0]
    generalized = evaluations.index[evaluations["eval/exact_match"] >= 0.95][0]
    llc_ = curve["llc"]
    assert curve["healthy"].mean() >= HEALTHY
    peak_step = llc_.idxmax()
    assert 0 < peak_step <= (memorized + generalized) / 2
    assert llc_.max() > RISE * llc_.loc[0]
    after = llc_.loc[generalized:].dropna()
    assert after.max() < FALL * llc_.max()
    assert ("peak" in [kind for _, kind in detect.boundaries(curve.reset_index())])


# Induction (seed 0; calibrated to step size 1e-3, n_beta 30, localization 100, flat): the
# 2-layer LLC rises from 1.9 at step 0 through the phase change (44 / 84 / 111 at steps 300 /
# 400 / 550; window 300-600) and then stays flat (106 / 107 / 111 at 750 / 1,050 / 1,500): a
# plateau from the end of the window, not the published peak and fall, and no turning point.
# The 1-layer LLC rises steadily, 1.1 to 27 at 550 and 39 at 1,500. Seed 1 alike: 2 layers 1.7
# / 43 / 76 / 110 at 0 / 300 / 400 / 550, then 104-106; 1 layer 28.5 at 550, 38.6 at 1,500.
WINDOW_RISE, PLATEAU, STILL_RISING = 0.5, 0.15, 1.25


@needs_llc
@pytest.mark.slow
def test_induction_llc_rises_through_the_phase_change_and_then_plateaus_in_two_layers_only(
        induction_dir, tmp_path):
    runs = by_coordinate(find_runs(induction_dir), "n_layers")
    _, table = analyse(induction_dir)
    start, end = (estimate(table, "induction_loss", f"phase_change_{side}", axis="step",
                           n_layers=2).value for side in ("start", "end"))
    scores = sweep.score_llc([runs[2], runs[1]], tmp_path, workers=2)
    frames = {layers: detect.curves(scores)[runs[layers].name] for layers in (1, 2)}
    for frame in frames.values():
        assert frame["healthy"].all()
        assert detect.boundaries(frame) == []
    two, one = (frames[layers].set_index("step")["llc"] for layers in (2, 1))
    before, after = two.index[two.index <= start][-1], two.index[two.index <= end][-1]
    assert two[after] - two[before] >= WINDOW_RISE * (two.iloc[-1] - two.iloc[0])
    assert (two[two.index > after] / two[after] - 1).abs().max() <= PLATEAU
    assert one.iloc[-1] >= STILL_RISING * one[after]
    # The refined LLC across the window (300 to 600): the published expectation was that the
    # induction heads' (layer 1: prefix matching 0.78-0.81 in every head) would move more
    # than the other heads'. Measured, the opposite: layer 0's heads 2.5-3.2 -> 5.3-7.6 (the
    # previous-token head L0H3 the most, 2.9 -> 7.6), layer 1's 1.0-1.3 -> 1.1-2.3.
    settings = llc.Settings(**json.loads((tmp_path / "llc" / f"{runs[2].name}.json")
                                         .read_text())["settings"])
    assert json.loads((tmp_path / "llc" / f"{runs[2].name}.json").read_text())["flat"]
    heads = [f"L{layer}H{head}" for layer in (0, 1) for head in range(4)]
    early, late = (llc.measure(runs[2].load_model(int(step)), runs[2].task(), settings, heads)
                   for step in (start, end))
    moved = {h: abs(late[f"llc_{h}"] - early[f"llc_{h}"]) for h in heads}
    induction = np.mean([v for h, v in moved.items() if h.startswith("L1")])
    other = np.mean([v for h, v in moved.items() if h.startswith("L0")])
    assert other > 2 * induction, moved  # measured 3.3 against 0.34


@needs_llc
@pytest.mark.slow
def test_analysis_with_llc_writes_estimates_calibration_boundaries_and_a_report_section(
        demo_dir, tmp_path):
    out = tmp_path / "analysis"
    assert analysis_main([str(demo_dir), "--llc", "--llc-workers", "2", "--out", str(out)]) == 0
    scores = pd.read_csv(out / "scores.csv", dtype={"run": str})
    estimates = scores[scores["metric"] == "llc/estimate"]
    assert sorted(estimates["step"]) == [0, 10, 20]  # every checkpoint: fewer than the default
    assert (scores[scores["metric"] == "llc/healthy"]["value"].isin([0, 1])).all()
    (record,) = (out / "llc").glob("*.json")
    found = json.loads(record.read_text())
    assert set(found["settings"]) >= {"lr", "n_beta", "localization"} and found["grid"]
    summary = pd.read_csv(out / "summary.csv")
    assert (summary[summary["metric"] == "llc"]["statistic"] == "boundaries").any()
    report = (out / "report.md").read_text()
    assert "## Developmental stages" in report and "figures/llc_stages.png" in report
    assert (out / "figures" / "llc_stages.png").exists()
    # A second call samples nothing again and keeps the run's settings.
    assert analysis_main([str(demo_dir), "--llc", "--out", str(out)]) == 0
    again = pd.read_csv(out / "scores.csv", dtype={"run": str})
    assert (again["metric"] == "llc/estimate").sum() == 3
    assert json.loads(record.read_text()) == found
