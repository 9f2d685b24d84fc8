"""Developmental stages (analysis/stages/): the LLC estimator on a model whose LLC is known, the
health checks, the head masks, the stage detector on synthetic curves; slow ones sample the LLC
of the shared grokking and induction runs and check the shapes measured on them."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import scoring
from analysis.stages import detect, llc
from models import GPT, GPTConfig

if "llc" in os.environ.get("PHASELAB_EXTRAS", ""):
    import devinterp  # noqa: F401  installed with the extra, so its absence is a failure
else:
    pytest.importorskip("devinterp", reason='needs the llc extra: pip install -e ".[llc]"')


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


def test_turning_points_find_peaks_and_troughs_that_reverse_by_the_threshold():
    assert detect.turning_points([0, 5, 10, 6, 3, 2], 1) == [(2, "peak")]
    assert detect.turning_points([0, 5, 10, 6, 3, 8], 1) == [(2, "peak"), (4, "trough")]
    assert detect.turning_points([0, 1, 0.8, 2, 1.9, 3], 0.5) == []  # wiggles below it
    assert detect.turning_points([10, 8, 3, 3, 3], 1) == []  # a fall then flat: no reversal


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
    assert row["value"] == pytest.approx(800 / 3)
    assert table[table["statistic"] == "kind_1"]["value"].iloc[0] == 1  # peaks
    none = detect.summarize(_curves({0: None}))
    assert none[none["statistic"] == "boundaries"]["value"].iloc[0] == 0
    assert "none" in detect.findings(none)[0]


def test_an_unhealthy_estimate_is_left_out_of_the_curve_and_said():
    df = _curves({0: 200})
    bad = (df["step"] == 200) & df["metric"].isin(["llc", "llc/healthy"])
    df.loc[bad, "value"] = [np.nan, 0.0]  # the peak itself unhealthy
    table = detect.summarize(df)
    assert table[table["statistic"] == "boundary_1"]["value"].iloc[0] in (100, 400)
    (line,) = detect.findings(table)
    assert "14% of estimates unhealthy" in line
    fig = detect.figure(df, table)
    (ax,) = fig.axes
    drawn = np.concatenate([line.get_ydata() for line in ax.lines if len(line.get_ydata()) > 2])
    assert not np.isnan(drawn).any() and len(drawn) == 6  # six healthy points, none for 200
