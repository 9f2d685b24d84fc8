"""Tests of analysis/: metrics on hand-computed outputs, evaluation, mechanistic scores on
hand-set attention, emergence statistics on synthetic curves, and the command line end to end
on a tiny two-run sweep built here."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import models
import tasks
from analysis import emergence, metrics, plots, report, runs, scoring, summary
from analysis.__main__ import main
from analysis.evaluate import Outputs, evaluate
from analysis.phenomena import mirage
from analysis.phenomena.grokking import measures as grokking_measures
from analysis.phenomena.grokking import report as grokking
from analysis.phenomena.induction import measures as induction_measures
from analysis.phenomena.induction import report as induction
from tasks import Batch

STOP = 9


def answer_outputs(answer, generated, answer_mask=None, logprob=None, stop_token=STOP):
    """Outputs of a prompt/answer task with prompt_len 1: answer positions are 0 .. A-1."""
    answer, generated = torch.tensor(answer), torch.tensor(generated)
    mask = torch.ones_like(answer, dtype=torch.bool) if answer_mask is None else torch.tensor(
        answer_mask)
    logprob = torch.zeros(answer.shape) if logprob is None else torch.tensor(logprob)
    return Outputs(logprob=logprob, correct=generated == answer, brier=torch.zeros(answer.shape),
                   mask=mask, prompt_len=1, answer=answer, generated=generated,
                   answer_mask=mask, stop_token=stop_token)


# --- metrics ------------------------------------------------------------------------------


def test_exact_match_is_all_or_nothing_while_token_accuracy_gives_partial_credit():
    out = answer_outputs(answer=[[1, 2, 3], [1, 2, 3], [1, 2, 3]],
                         generated=[[1, 2, 3], [1, 0, 3], [0, 0, 0]], stop_token=None)
    assert metrics.exact_match(out) == pytest.approx(1 / 3)
    assert metrics.token_accuracy(out) == pytest.approx(5 / 9)
    assert metrics.per_position_accuracy(out).tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    predicted = metrics.predicted_exact_match(out)
    assert predicted["from_mean"] == pytest.approx((5 / 9) ** 3)
    assert predicted["from_positions"] == pytest.approx(2 / 3 * 1 / 3 * 2 / 3)


def test_exact_match_ignores_unmasked_answer_positions():
    out = answer_outputs(answer=[[1, 2, STOP]], generated=[[1, 2, 7]],
                         answer_mask=[[True, True, False]])
    assert metrics.exact_match(out) == 1.0
    assert metrics.token_accuracy(out) == 1.0


@pytest.mark.parametrize(("generated", "distance"), [
    ([1, 2, 3, STOP, 5], 0),  # exact, tokens after the stop token ignored
    ([1, 3, STOP, 4, 4], 1),  # a deletion
    ([1, 2, 2, 3, STOP], 1),  # an insertion
    ([1, 5, 3, STOP, 0], 1),  # a substitution
    ([STOP, 1, 2, 3, 0], 3),  # stops at once: everything deleted
    ([1, 2, 3, 4, 4], 2),  # never stops: the whole answer counts
    ([3, 2, 1, STOP, 0], 2),
])
def test_edit_distance_counts_insertions_deletions_and_cuts_at_the_stop_token(generated, distance):
    out = answer_outputs(answer=[[1, 2, 3, STOP, 0]], generated=[generated],
                         answer_mask=[[True, True, True, True, False]])
    assert metrics.edit_distance(out) == distance
    assert metrics.edit_distance_norm(out) == pytest.approx(distance / 3)


def _levenshtein_reference(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=6),
                          st.lists(st.integers(0, 3), max_size=6)), min_size=1, max_size=5))
def test_vectorized_levenshtein_matches_the_textbook_dynamic_programme(pairs):
    width = 6
    pad = lambda xs: xs + [0] * (width - len(xs))
    a = torch.tensor([pad(x) for x, _ in pairs])
    b = torch.tensor([pad(y) for _, y in pairs])
    lengths = lambda side: torch.tensor([len(pair[side]) for pair in pairs])
    got = metrics.levenshtein(a, lengths(0), b, lengths(1))
    assert got.tolist() == [_levenshtein_reference(x, y) for x, y in pairs]


def test_answer_logprob_sums_the_answer_tokens_and_averages_over_examples():
    out = answer_outputs(answer=[[1, 2, STOP], [1, STOP, 0]], generated=[[1, 2, STOP]] * 2,
                         answer_mask=[[True, True, True], [True, True, False]],
                         logprob=[[-0.1, -0.2, -0.3], [-1.0, -2.0, -5.0]])
    assert metrics.answer_logprob(out) == pytest.approx(((-0.6) + (-3.0)) / 2)
    assert metrics.loss(out) == pytest.approx((0.1 + 0.2 + 0.3 + 1.0 + 2.0) / 5)


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits [B, T, V] are given; honours `start` (with answer_len 1,
    evaluate passes no KV cache)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, tokens, start=0, past=None):
        assert past is None
        return self.logits[: tokens.shape[0], start : tokens.shape[1]]


def test_evaluate_scores_log_probability_brier_and_correctness_of_each_target():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]],
                          [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]])
    model = FixedLogits(probs.log())
    task = SimpleNamespace(prompt_len=1, answer_len=1, stop_token=None, loss_start=0)
    batch = Batch(tokens=torch.zeros(2, 2, dtype=torch.long),
                  targets=torch.tensor([[0, 2], [1, 2]]),
                  mask=torch.tensor([[True, False], [True, False]]))
    out = evaluate(model, task, batch)
    assert out.logprob[:, 0].tolist() == pytest.approx([math.log(0.7), math.log(0.2)])
    assert out.brier[:, 0].tolist() == pytest.approx([0.09 + 0.04 + 0.01, 0.49 + 0.64 + 0.01])
    assert out.correct[:, 0].tolist() == [True, False]
    assert out.generated.tolist() == [[0], [0]]
    scores = metrics.compute(out)
    assert scores["brier"] == pytest.approx((0.14 + 1.14) / 2)
    assert scores["exact_match"] == 0.5
    assert scores["loss"] == pytest.approx(-(math.log(0.7) + math.log(0.2)) / 2)
    assert model.training  # evaluate restores the mode it found


def tiny_gpt(task, d_model=16, n_layers=1, seed=0) -> models.GPT:
    torch.manual_seed(seed)
    return models.GPT(models.GPTConfig(d_vocab=len(task.vocab), n_ctx=task.seq_len,
                                       d_model=d_model, n_layers=n_layers, n_heads=None,
                                       d_head=8))


def test_greedy_generation_matches_a_token_by_token_reference_and_chunking():
    task = tasks.build({"kind": "arithmetic", "digits": 2, "test_fraction": 0.2,
                        "eval_size": 40})
    model = tiny_gpt(task, n_layers=2)
    batch = task.eval_set()
    out = evaluate(model, task, batch, batch_size=7)
    seq = batch.tokens[:, : task.prompt_len]
    with torch.no_grad():
        for _ in range(task.answer_len):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.generated, seq[:, task.prompt_len :])
    whole = evaluate(model, task, batch)
    assert torch.allclose(out.logprob[out.mask], whole.logprob[whole.mask], atol=1e-5)
    assert metrics.compute(out)["exact_match"] == metrics.compute(whole)["exact_match"]


@pytest.mark.parametrize("pos, n_layers", [("learned", 1), ("rotary", 3), ("none", 2)])
def test_kv_cache_generation_leaves_every_output_unchanged(pos, n_layers):
    task = tasks.build({"kind": "arithmetic", "digits": 2, "test_fraction": 0.2,
                        "eval_size": 200})
    torch.manual_seed(0)
    # init_scale 3: answers that vary with the problem, so that generation is really exercised.
    model = models.GPT(models.GPTConfig(d_vocab=len(task.vocab), n_ctx=task.seq_len, d_model=32,
                                        n_layers=n_layers, d_head=8, pos=pos, init_scale=3.0))
    batch = task.eval_set()
    cached = evaluate(model, task, batch, batch_size=64)
    full = evaluate(model, task, batch, batch_size=64, kv_cache=False)
    assert len(full.generated.unique(dim=0)) > 10
    assert torch.equal(cached.generated, full.generated)
    for field in ("logprob", "correct", "brier"):
        torch.testing.assert_close(getattr(cached, field), getattr(full, field), rtol=0, atol=0,
                                   equal_nan=True)
    exact = pytest.approx(metrics.compute(full), rel=0, abs=0, nan_ok=True)
    assert metrics.compute(cached) == exact


def test_metrics_without_an_answer_split_score_every_masked_position_teacher_forced():
    correct = torch.tensor([[True, True, False], [True, True, True]])
    out = Outputs(logprob=torch.full((2, 3), -0.5), correct=correct, brier=torch.zeros(2, 3),
                  mask=torch.tensor([[False, True, True], [False, True, True]]))
    scores = metrics.compute(out)
    assert scores["exact_match"] == 0.5
    assert scores["token_accuracy"] == 0.75
    assert "edit_distance" not in scores and "brier" not in scores
    assert scores["answer_logprob"] == pytest.approx(-1.0)


# --- mechanistic --------------------------------------------------------------------------


class FakeAttention(torch.nn.Module):
    """Returns a hand-made cache of attention patterns, like GPT(tokens, cache=True)."""

    def __init__(self, patterns: list[torch.Tensor]):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in patterns)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.patterns = patterns

    def forward(self, tokens, cache=False):
        n = tokens.shape[0]
        return None, {f"blocks.{i}.attn.hook_pattern": p[:n] for i, p in enumerate(self.patterns)}


def repeated_batch(n=4, half=6, vocab=20, seed=0) -> Batch:
    """Random tokens repeated once; attend points at the token after the earlier occurrence."""
    g = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(vocab, generator=g)[:half] for _ in range(n)])
    seq = torch.cat([first, first], dim=1)
    positions = torch.arange(2 * half - 1)
    attend = torch.where(positions >= half, positions - half + 1, -1).expand(n, -1)
    mask = (attend >= 0).clone()
    return Batch(seq[:, :-1], seq[:, 1:], mask, attend.clone())


def test_prefix_matching_is_one_for_an_induction_head_and_the_uniform_baseline_otherwise():
    batch = repeated_batch()
    n, seq = batch.tokens.shape
    causal = torch.ones(seq, seq).tril()
    uniform = (causal / causal.sum(1, keepdim=True)).expand(n, seq, seq)
    key = torch.where(batch.attend >= 0, batch.attend, torch.arange(seq))
    induction = torch.nn.functional.one_hot(key, seq).float()
    previous = torch.nn.functional.one_hot((torch.arange(seq) - 1).clamp(min=0), seq).float()
    layer0 = torch.stack([uniform, previous.expand(n, -1, -1)], dim=1)  # [B, H, Q, K]
    layer1 = torch.stack([induction, uniform], dim=1)
    model = FakeAttention([layer0, layer1])

    score = induction_measures.prefix_matching(model, batch)
    counted = torch.arange(seq)[batch.attend[0] >= 0]
    baseline = (1 / (counted + 1)).mean().item()
    assert score.shape == (2, 2)
    assert score[1, 0].item() == pytest.approx(1.0)
    assert score[0, 0].item() == pytest.approx(baseline)
    assert score[1, 1].item() == pytest.approx(baseline)
    assert induction_measures.previous_token_score(model, batch)[0, 1].item() == pytest.approx(1.0)


def test_prefix_matching_on_a_real_model_reads_its_attention_patterns():
    batch = repeated_batch(half=4)
    task = SimpleNamespace(vocab=[str(i) for i in range(20)], seq_len=batch.tokens.shape[1])
    model = tiny_gpt(task, n_layers=2)
    score = induction_measures.prefix_matching(model, batch)
    assert score.shape == (2, 2)
    assert ((score > 0) & (score < 1)).all()


def test_score_checkpoint_adds_induction_measures_near_chance_at_initialization():
    task = tasks.build({"kind": "induction", "d_vocab_tokens": 16, "seq_len": 12,
                        "min_segment": 3, "max_segment": 5, "eval_size": 50})
    torch.manual_seed(0)
    model = models.GPT(models.GPTConfig(d_vocab=len(task.vocab), n_ctx=task.seq_len,
                                        d_model=16, n_layers=2, n_heads=2, attn_only=True,
                                        norm="none"))
    scores = scoring.score(model, task)
    attend = task.eval_set().attend
    query = torch.arange(attend.shape[1]).expand_as(attend)[attend >= 0]
    uniform = (1 / (query + 1)).double().mean().item()
    heads = [f"prefix_matching/L{layer}H{head}" for layer in range(2) for head in range(2)]
    assert [scores[h] for h in heads] == pytest.approx([uniform] * 4, abs=0.01)
    assert scores["prefix_matching_max"] == max(scores[h] for h in heads)
    assert scores["induction_loss"] == pytest.approx(math.log(len(task.vocab)), abs=0.1)
    assert abs(scores["icl_score"]) < 0.1 and "weight_norm" not in scores


def test_causal_probes_ablate_through_the_hooks_and_agree_with_the_plain_scores():
    task = tasks.build({"kind": "induction", "d_vocab_tokens": 16, "seq_len": 12,
                        "min_segment": 3, "max_segment": 5, "eval_size": 50})
    model = tiny_gpt(task, n_layers=2)
    scores = scoring.score(model, task)
    # Nothing ablated: the same repeat loss as the evaluation's.
    assert scores["causal/clean_loss"] == pytest.approx(scores["induction_loss"], abs=1e-6)
    assert scores["causal/n_induction_heads"] == 0  # random init: no head above 0.5
    assert math.isnan(scores["causal/induction_heads_loss"])
    per_head = [scores[f"causal/head_loss/L{layer}H{head}"] for layer in range(2)
                for head in range(2)]
    assert len(set(per_head)) == 4 and scores["causal/clean_loss"] not in per_head
    previous = {(layer, head): scores[f"previous_token/L{layer}H{head}"] for layer in range(2)
                for head in range(2)}
    layer, head = max(previous, key=previous.get)
    assert scores["causal/previous_token_head_loss"] == scores[
        f"causal/head_loss/L{layer}H{head}"]


def test_layer_ablation_equals_zeroing_the_layers_weights():
    task = tasks.build({"kind": "modular", "p": 7, "train_fraction": 0.5})
    model = tiny_gpt(task)
    losses = scoring.score(model, task, probes=["layer_ablation"])
    assert set(k for k in losses if k.startswith("causal/")) == {
        "causal/loss/clean", "causal/loss/attn_L0", "causal/loss/mlp_L0"}
    assert losses["causal/loss/clean"] == pytest.approx(losses["eval/loss"], abs=1e-6)
    for part, path in (("attn", "blocks.0.attn.out"), ("mlp", "blocks.0.mlp.proj")):
        zeroed = tiny_gpt(task)
        with torch.no_grad():
            for p in zeroed.get_submodule(path).parameters():  # weight and bias: the output
                p.zero_()
        plain = scoring.score(zeroed, task, sets=["eval"], probes=[])["eval/loss"]
        assert losses[f"causal/loss/{part}_L0"] == pytest.approx(plain, abs=1e-5)


def test_icl_score_and_induction_loss_read_the_per_position_losses():
    logprob = torch.tensor([[-4.0, -4.0, -3.0, -1.0, -0.5, -0.1]] * 2)
    attend = torch.tensor([[-1, -1, -1, 1, 2, 3]] * 2)
    out = Outputs(logprob=logprob, correct=torch.zeros(2, 6, dtype=torch.bool),
                  brier=torch.zeros(2, 6), mask=torch.ones(2, 6, dtype=torch.bool), attend=attend)
    # last (5) minus 5 // 10 = 0
    assert induction_measures.icl_score(out) == pytest.approx(0.1 - 4.0)
    assert induction_measures.icl_score(out, early=2, late=4) == pytest.approx(0.5 - 3.0)
    assert induction_measures.induction_loss(out) == pytest.approx((1.0 + 0.5 + 0.1) / 3)


def test_fourier_embedding_finds_the_frequency_an_embedding_is_built_from():
    p, k = 13, 4
    x = torch.arange(p, dtype=torch.float32)
    weight = torch.zeros(p + 1, 8)
    weight[:p, 0] = torch.cos(2 * math.pi * k * x / p)
    weight[:p, 1] = 3 * torch.sin(2 * math.pi * k * x / p)
    model = SimpleNamespace(embed=torch.nn.Embedding.from_pretrained(weight))
    view = grokking_measures.fourier_embedding(model, p, n_key=1)
    assert view["key_frequencies"] == [k]
    assert view["top_fraction"] == pytest.approx(1.0)
    random = grokking_measures.fourier_embedding(
        SimpleNamespace(embed=torch.nn.Embedding(p + 1, 32)), p, n_key=1)
    assert random["top_fraction"] < 0.5


def test_weight_norm_is_the_sum_of_squared_parameters():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(3.0)
    assert grokking_measures.weight_norm(layer) == pytest.approx(14.0)


# --- emergence ----------------------------------------------------------------------------

PARAMS = np.logspace(3, 7, 17)
SIGMOID = 1 / (1 + np.exp(-6 * (np.log10(PARAMS) - 5.2)))
LINEAR = (np.log10(PARAMS) - 3) / 4


def test_transition_point_is_where_the_curve_crosses_mid_range_in_log_x():
    assert emergence.transition_point(PARAMS, SIGMOID) == pytest.approx(10**5.2, rel=0.05)
    assert emergence.transition_point(PARAMS, LINEAR) == pytest.approx(1e5, rel=1e-6)
    assert emergence.transition_point(PARAMS, 1 - SIGMOID) == pytest.approx(10**5.2, rel=0.05)
    assert math.isnan(emergence.transition_point(PARAMS, np.ones_like(PARAMS)))


def test_a_sigmoid_in_log_scale_is_sharper_and_more_breakthrough_than_a_linear_curve():
    assert emergence.sharpness(PARAMS, SIGMOID) > 4 * emergence.sharpness(PARAMS, LINEAR)
    assert emergence.breakthroughness(SIGMOID) > 5 * emergence.breakthroughness(LINEAR)
    assert emergence.linearity(LINEAR) > emergence.linearity(SIGMOID)
    assert emergence.emergence_score(SIGMOID) == emergence.breakthroughness(SIGMOID)
    assert emergence.breakthroughness(-SIGMOID) == pytest.approx(
        -emergence.breakthroughness(SIGMOID))
    # Equal steps: RMS and root-median-square agree, both give I / step = number of steps.
    assert emergence.linearity(LINEAR) == pytest.approx(16)
    assert emergence.breakthroughness(LINEAR) == pytest.approx(16)


def test_grokking_steps_finds_memorization_then_generalization():
    steps = np.arange(0, 5000, 50)
    train = np.clip(steps / 400, 0, 1)
    test = 1 / (1 + np.exp(-(steps - 3000) / 100))
    grok = grokking.grokking_steps(steps, train, test)
    assert grok["memorization_step"] == 400
    assert 3400 <= grok["generalization_step"] <= 3500
    assert grok["ratio"] == pytest.approx(grok["generalization_step"] / 400)
    assert math.isnan(grokking.grokking_steps(steps, train, test * 0.5)["generalization_step"])


EVALS = np.arange(0, 3001, 100)


def sigmoid_drop(at: float, low: float = 0.5) -> np.ndarray:
    """A loss falling from log 64 = 4.2 to `low` around step `at`, over ~300 steps."""
    return 4.2 - (4.2 - low) / (1 + np.exp(-(EVALS - at) / 60))


def test_a_sharp_drop_is_a_phase_change_at_the_step_where_it_falls():
    change = induction.phase_change(EVALS, sigmoid_drop(800))
    assert change["step"] == pytest.approx(800, abs=20)
    assert change["start"] <= 800 <= change["end"]
    assert change["end"] - change["start"] <= 0.2 * 3000  # the window: a fifth of training
    assert change["largest_fall"] >= change["required_fall"] == pytest.approx(0.5 * 4.2, rel=0.01)
    spiky = sigmoid_drop(1500)
    spiky[5] = 0.1  # one evaluation's dip (an instability) long before: no phase change there
    assert induction.phase_change(EVALS, spiky)["step"] == pytest.approx(1500, abs=20)


def test_a_slow_decline_or_a_small_fall_has_no_phase_change():
    for slow in (4.2 - 3.7 * EVALS / 3000, 0.5 + 3.7 * np.exp(-EVALS / 1000)):
        assert math.isnan(induction.phase_change(EVALS, slow)["step"])
    # Most of its (small) range within the window, but far from half its initial value: a model
    # that barely learns (1 layer: from 4.2 to ~2.6).
    small = sigmoid_drop(800, low=2.6)
    change = induction.phase_change(EVALS, small)
    assert math.isnan(change["step"])
    assert change["largest_fall"] > 0.5 * (small[0] - small[-1])
    assert change["largest_fall"] < change["required_fall"]
    assert math.isnan(induction.phase_change(EVALS, 8.4 - sigmoid_drop(800))["step"])  # rises


def test_a_phase_change_coincides_only_with_a_head_formed_in_its_window():
    change = induction.phase_change(EVALS, sigmoid_drop(800))
    tolerance = induction.COINCIDENCE_TOLERANCE * 3000
    head = induction.head_formation_step(EVALS, 0.85 / (1 + np.exp(-(EVALS - 800) / 60)))
    assert head == 900  # the first evaluation at or above 0.5 (0.43 at step 800, 0.71 at 900)
    assert induction.phase_change_coincides(change, head, tolerance) == 1.0
    late = induction.head_formation_step(EVALS, 0.85 / (1 + np.exp(-(EVALS - 2000) / 60)))
    assert induction.phase_change_coincides(change, late, tolerance) == 0.0
    never = induction.head_formation_step(EVALS, np.full(len(EVALS), 0.12))
    assert math.isnan(never)
    assert math.isnan(induction.phase_change_coincides(change, never, tolerance))


def induction_scores(drops: dict, heads: dict, seeds=(0,)) -> pd.DataFrame:
    """A scores table of induction runs: n_layers -> step of the loss drop (None: a small
    fall to 2.6, early) and of the head's formation (None: prefix matching stays at 0.1)."""
    rows = []
    for layers, seed in ((layers, seed) for layers in drops for seed in seeds):
        drop, head = drops[layers], heads[layers]
        loss = sigmoid_drop(300, low=2.6) if drop is None else sigmoid_drop(drop + 10 * seed)
        matching = (np.full(len(EVALS), 0.1) if head is None
                    else 0.85 / (1 + np.exp(-(EVALS - head - 10 * seed) / 60)))
        common = {"run": f"{layers}-{seed}", "task": "induction", "n_layers": layers, "seed": seed,
                  "params": 1e4 * layers, "non_embedding_params": 1e4, "tokens": 0, "flops": 0}
        for metric, curve in (("induction_loss", loss), ("prefix_matching_max", matching)):
            rows += [{**common, "step": step, "metric": metric, "value": value}
                     for step, value in zip(EVALS, curve, strict=True)]
    return pd.DataFrame(rows)


def test_the_summary_names_a_coinciding_phase_change_only_where_a_head_forms_at_the_drop():
    table = summary.summarize(induction_scores({1: None, 2: 800, 3: 800},
                                               {1: None, 2: 850, 3: 2000}, seeds=(0, 1, 2)))
    step = summary.estimate(table, "induction_loss", "phase_change_step", n_layers=2)
    assert step.low < step.value < step.high
    assert step.value == pytest.approx(810, abs=20)  # the seeds drop at 800, 810, 820
    assert summary.estimate(table, "induction_loss", "coincides_with_prefix_matching",
                            n_layers=2).value == 1.0
    assert summary.estimate(table, "induction_loss", "coincides_with_prefix_matching",
                            n_layers=3).value == 0.0  # the head forms 1,200 steps later
    none = summary.select(table, "induction_loss", "phase_change_step", n_layers=1).iloc[0]
    assert math.isnan(none["value"]) and none["note"].startswith("none: largest fall")
    lines = report.verdicts(table)
    assert any(line.startswith("n_layers=2: phase change at step") and
               "coinciding with the rise of prefix matching" in line for line in lines)
    assert any(line.startswith("n_layers=3: phase change at step") and
               "not coinciding" in line for line in lines)
    one = next(line for line in lines if line.startswith("n_layers=1"))
    assert "phase change: none" in one and "induction head: none" in one
    assert "coinciding" not in one


def test_the_report_ends_with_computed_verdicts_under_the_rules_that_decide_them(tmp_path):
    scores = induction_scores({1: None, 2: 800}, {1: None, 2: 850})
    path = report.write_report(scores, summary.summarize(scores), [], [], tmp_path, "induction")
    text = path.read_text()
    verdicts = text.split("## Verdicts")[1]
    assert "## " not in verdicts  # the last section
    assert "95% t-interval over seeds" in verdicts and "within 20% of the steps" in verdicts
    assert "- n_layers=2: phase change at step 8" in verdicts  # 800 +- 20, (1 seed)
    assert "(1 seed)" in verdicts and "- n_layers=1: phase change: none" in verdicts
    events = text.split("## Events during training")[1].split("## Verdicts")[0]
    assert "| n_layers=1 | prefix_matching_max | head_formation_step | none: max prefix" in events


def test_the_grokking_verdict_gives_the_delay_over_seeds_or_says_none():
    steps, rows = np.arange(0, 2001, 50), []
    for weight_decay, seed in ((wd, seed) for wd in (1.0, 0.0, 0.5) for seed in (0, 1)):
        train = np.clip(steps / 100, 0, 1)  # memorized at step 100
        test = (1 / (1 + np.exp(-(steps - 1100 - 100 * seed) / 50)) if weight_decay == 1
                else np.full(len(steps), 0.3) if weight_decay == 0
                else train)  # 0.99 at steps 1,350 and 1,450; never; at once (fresh data)
        common = {"run": f"{weight_decay}-{seed}", "task": "modular", "seed": seed,
                  "weight_decay": weight_decay, "params": 1e4, "non_embedding_params": 1e4,
                  "tokens": 0, "flops": 0}
        for metric, curve in (("train_eval/exact_match", train), ("eval/exact_match", test)):
            rows += [{**common, "step": step, "metric": metric, "value": value}
                     for step, value in zip(steps, curve, strict=True)]
    lines = report.verdicts(summary.summarize(pd.DataFrame(rows)))
    assert len(lines) == 2  # one size: no sudden-or-smooth line; no delay at 0.5: no line
    assert lines[1].startswith("weight_decay=1: grokking: generalized 14 [")  # 13.5 and 14.5
    assert "(steps 1,400 [" in lines[1] and "; 2 seeds)" in lines[1]
    assert lines[0] == ("weight_decay=0: grokking: memorized at step 100 [100, 100], 2 seeds; "
                        "none: test accuracy never reaches 0.99")


def test_t_interval_is_the_student_interval_of_the_mean_and_none_for_one_value():
    interval = summary.t_interval([1.0, 2.0, 3.0, float("nan")])
    assert interval["mean"] == 2.0 and interval["n"] == 3
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert (interval["low"], interval["high"]) == pytest.approx((2 - half, 2 + half), rel=1e-4)
    one = summary.t_interval([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1
    assert math.isnan(one["low"]) and math.isnan(one["high"])


def synthetic_scores(seeds=(0, 1), rungs: int = 5) -> pd.DataFrame:
    """A scores table: `rungs` widths from 1e3 to 1e7 parameters x seeds x two steps, exact
    match sigmoid in log params (shifted by 0.1 decade per seed)."""
    rows = []
    for d_model, params in zip(2 ** np.arange(3, 3 + rungs), np.logspace(3, 7, rungs),
                               strict=True):
        for seed in seeds:
            for step in (100, 1000):
                p = 1 / (1 + np.exp(-6 * (np.log10(params) - 5.2 - 0.1 * seed)))
                run = f"d{d_model}s{seed}"
                common = {"run": run, "task": "arithmetic", "d_model": d_model, "n_layers": 2,
                          "seed": seed, "params": params, "non_embedding_params": params,
                          "step": step, "tokens": step * 64, "flops": step * 64 * 6 * params}
                scale = step / 1000
                rows += [{**common, "metric": "eval/exact_match", "value": scale * p**3},
                         {**common, "metric": "eval/token_accuracy", "value": scale * p},
                         {**common, "metric": "eval/edit_distance", "value": 3 * (1 - p)},
                         {**common, "metric": "eval/answer_logprob", "value": 3 * np.log(p)}]
    return pd.DataFrame(rows)


def test_summarize_reports_each_statistic_per_metric_and_axis_over_seeds():
    table = summary.summarize(synthetic_scores())
    assert set(table["axis"]) == {"params", "flops", "step"}
    assert list(table.columns[-len(summary.COLUMNS):]) == list(summary.COLUMNS)
    exact = summary.estimate(table, "eval/exact_match", "breakthroughness", axis="params")
    linear = summary.estimate(table, "eval/edit_distance", "linearity", axis="params")
    assert exact.value > 0 > linear.value  # exact match rises, edit distance falls
    transition = summary.estimate(table, "eval/token_accuracy", "transition", axis="params")
    assert 10**5 < transition.value < 10**5.6


def test_intervals_over_seeds_bracket_the_mean_of_the_per_seed_statistics():
    scores = synthetic_scores(seeds=(0, 1, 2), rungs=9)
    table = summary.summarize(scores, over="seeds")
    row = summary.select(table, "eval/exact_match", "breakthroughness", axis="params").iloc[0]
    last = scores[(scores["step"] == 1000) & (scores["metric"] == "eval/exact_match")]
    per_seed = [emergence.breakthroughness(s.sort_values("params")["value"])
                for _, s in last.groupby("seed")]
    assert len(set(per_seed)) == 3  # the seeds differ, so the interval has a width
    assert row["value"] == pytest.approx(np.exp(np.mean(np.log(per_seed))))  # geometric mean
    assert row["low"] < min(per_seed) <= max(per_seed) < row["high"]
    transition = summary.select(table, "eval/exact_match", "transition", axis="params").iloc[0]
    per_seed = [emergence.transition_point(s["params"], s["value"])
                for _, s in last.groupby("seed")]
    assert transition["value"] == pytest.approx(np.mean(per_seed))  # an arithmetic mean
    assert (row["n_seeds"], row["n_points"]) == (3, 9)


def test_size_statistics_are_of_the_seed_mean_curve_with_a_bootstrap_over_seeds():
    scores = synthetic_scores(seeds=(0, 1, 2), rungs=9)
    row = summary.select(summary.summarize(scores, over="mean"), "eval/exact_match",
                         "breakthroughness", axis="params").iloc[0]
    last = scores[(scores["step"] == 1000) & (scores["metric"] == "eval/exact_match")]
    mean = last.groupby("params")["value"].mean()
    assert row["value"] == pytest.approx(emergence.breakthroughness(mean.to_numpy()))
    assert row["low"] < row["value"] < row["high"]
    assert (row["n_seeds"], row["n_points"]) == (3, 9)


def test_a_step_statistic_never_gets_a_negative_bound():
    interval = summary._over_seeds([(50.0, ""), (60.0, ""), (2000.0, "")], "drop_start")
    assert interval["low"] == 0.0 < interval["value"] < interval["high"]
    assert summary.t_interval([50.0, 60.0, 2000.0])["low"] < 0  # what the t-interval says


def test_a_ratio_statistic_is_summarized_on_a_log_scale_so_one_large_seed_stays_positive():
    seeds = [40.0, 60.0, 250.0]
    plain, ratio = summary.t_interval(seeds), summary.log_t_interval(seeds)
    assert plain["low"] < 0 < ratio["low"] < 40 and ratio["high"] > 250
    assert ratio["mean"] == pytest.approx((40 * 60 * 250) ** (1 / 3))
    falling = summary.log_t_interval([-40.0, -60.0, -250.0])
    assert falling["low"] == pytest.approx(-ratio["high"])
    assert falling["low"] < falling["high"] == pytest.approx(-ratio["low"])
    assert falling["mean"] == pytest.approx(-ratio["mean"])
    assert summary.log_t_interval([-1.0, 2.0])["mean"] == 0.5  # mixed signs: arithmetic


def test_one_seed_gives_no_interval_and_is_reported_as_1_seed():
    table = summary.summarize(synthetic_scores(seeds=(0,)))
    row = summary.select(table, "eval/exact_match", "breakthroughness", axis="params").iloc[0]
    assert row["n_seeds"] == 1 and math.isnan(row["low"]) and math.isnan(row["high"])
    assert summary.describe(row) == f"{row['value']:.3g} (1 seed)"
    assert any("(1 seed)" in line for line in report.verdicts(table))


def test_a_three_rung_ladder_gets_no_breakthroughness_number_and_says_why():
    table = summary.summarize(synthetic_scores(rungs=3))
    row = summary.select(table, "eval/exact_match", "breakthroughness", axis="params").iloc[0]
    assert math.isnan(row["value"])
    assert row["note"] == "3 rungs: too few for breakthroughness (needs 5)"
    assert ("all runs: sudden or smooth: no verdict (3 rungs: too few for breakthroughness "
            "(needs 5))") in report.verdicts(table)
    assert mirage.too_few_rungs(table) == ("3 rungs: too few for transition, sharpness, "
                                           "linearity, breakthroughness (needs 5).")


def ladder_scores(curves: dict, seeds=(0, 1, 2), rungs: int = 9) -> pd.DataFrame:
    """The last checkpoint of a width ladder: metric -> f(log10 params, seed)."""
    rows = []
    for seed, params in ((seed, p) for seed in seeds for p in np.logspace(3, 7, rungs)):
        common = {"run": f"{params:.0f}-{seed}", "task": "addition", "d_model": int(params),
                  "seed": seed, "params": params, "non_embedding_params": params, "step": 1000,
                  "tokens": 0, "flops": params}
        rows += [{**common, "metric": metric, "value": f(np.log10(params), seed)}
                 for metric, f in curves.items()]
    return pd.DataFrame(rows)


def test_a_sigmoid_in_log_params_is_sudden_and_a_line_is_smooth():
    noise = np.random.default_rng(0)
    table = summary.summarize(ladder_scores({
        "eval/exact_match": lambda n, seed: 1 / (1 + np.exp(-6 * (n - 5.2 - 0.1 * seed))),
        "eval/token_accuracy": lambda n, seed: (n - 3) / 4 + 0.01 * noise.normal()}))
    lines = report.verdicts(table)
    assert any(line.startswith("all runs: eval/exact_match: sudden (breakthroughness")
               and "3 seeds" in line for line in lines)
    assert any(line.startswith("all runs: eval/token_accuracy: smooth") for line in lines)
    # An interval across the threshold (2 x 8 steps) decides nothing.
    across = {"value": 15.0, "low": 10.0, "high": 20.0, "n_seeds": 3, "n_points": 9, "note": ""}
    assert mirage.sudden_or_smooth(across).startswith("unclear")
    assert mirage.sudden_or_smooth({**across, "low": 17.0}).startswith("sudden")


def test_summarize_finds_the_plateau_and_drop_of_each_seeds_eval_loss():
    steps = np.arange(0, 3001, 100)
    rows = []
    for seed, drop_at in ((0, 1000), (1, 2000)):
        loss = np.where(steps < drop_at, 0.69, 0.0)
        loss[0] = 1.3
        rows += [{"run": str(seed), "task": "parity", "seed": seed, "params": 1e4,
                  "non_embedding_params": 1e4, "step": step, "tokens": 0, "flops": 0,
                  "metric": "eval/loss", "value": value}
                 for step, value in zip(steps, loss, strict=True)]
    table = summary.summarize(pd.DataFrame(rows))
    row = summary.select(table, "eval/loss", "abruptness", axis="step").iloc[0]
    # Seed 0 drops between steps 900 and 1000, seed 1 between 1900 and 2000.
    assert row["n_seeds"] == 2
    assert row["value"] == pytest.approx((900 / 100 + 1900 / 100) / 2)


# --- plots --------------------------------------------------------------------------------


def test_metric_vs_params_draws_a_line_per_step_on_a_log_axis():
    fig = plots.metric_vs_params(synthetic_scores(), "eval/exact_match")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "parameters"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["step=100", "step=1000"]


def test_make_figures_draws_the_induction_figures_from_a_table_alone(tmp_path):
    steps = [0, 100, 200, 400, 800, 1600]
    rows = []
    for step in steps:
        rise = step >= 400
        common = {"run": "0", "task": "induction", "seed": 0, "params": 1e4,
                  "non_embedding_params": 1e4, "step": step, "tokens": 0, "flops": 0}
        values = {"induction_loss": 0.5 if rise else 4.0, "prefix_matching_max": 0.9 * rise,
                  "prefix_matching/L0H0": 0.1, "prefix_matching/L1H0": 0.9 * rise}
        rows += [{**common, "metric": k, "value": v} for k, v in values.items()]
    paths = plots.make_figures(pd.DataFrame(rows), [], tmp_path)
    assert {p.name for p in paths} == {"induction_induction.png",
                                       "induction_prefix_matching.png"}
    assert all(p.stat().st_size > 0 for p in paths)


# --- end to end ---------------------------------------------------------------------------

TASK = {"kind": "modular", "p": 11, "op": "add", "train_fraction": 0.5}
STEPS = (0, 10)


def write_run(run_dir, d_model: int, seed: int) -> None:
    """A run directory as train/ writes it: config, overrides, checkpoints, metrics.jsonl."""
    weight_decay = float(seed)
    config = OmegaConf.create({"task": TASK, "seed": seed, "wandb": {"project": "phaselab"},
                               "model": {"d_model": d_model, "n_layers": 1, "d_head": 8},
                               "optim": {"lr": 0.01, "weight_decay": weight_decay}})
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, run_dir / ".hydra/config.yaml")
    overrides = ["task=modular", f"model.d_model={d_model}", "optim.lr=0.01",
                 f"optim.weight_decay={weight_decay}", f"seed={seed}"]
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra/overrides.yaml")
    task = tasks.build(TASK)
    model = tiny_gpt(task, d_model=d_model, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lines = []
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            meta = {"step": step, "tokens": step * 150, "flops": step * 150 * 6 * d_model**2}
            checkpoint = run_dir / f"checkpoints/step_{step:07d}"
            models.save_model(model, checkpoint / "model.safetensors", metadata=meta)
            (checkpoint / "meta.json").write_text(json.dumps(meta))
        batch = task.train_batch(None, torch.Generator())
        logits = model(batch.tokens, start=task.loss_start)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.targets[:, task.loss_start :].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lines.append(json.dumps({"step": step, "train/loss": loss.item()}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def built_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("built") / "sweep"
    for job, d_model in enumerate((16, 32)):
        write_run(root / str(job), d_model, seed=job)
    return root


@pytest.fixture
def sweep(built_sweep, tmp_path):
    """A fresh copy of the two-run sweep for each test (tests write into it)."""
    return shutil.copytree(built_sweep, tmp_path / "sweep")


@pytest.fixture
def counted_scoring(monkeypatch):
    calls = []

    real = scoring.score

    def counting(model, task):
        calls.append(model)
        return real(model, task)

    monkeypatch.setattr(scoring, "score", counting)
    return calls


def test_find_runs_reads_coordinates_and_checkpoints(sweep):
    found = runs.find_runs(sweep)
    assert [r.name for r in found] == ["0", "1"]
    # Base coordinates, plus the overrides that differ between runs (not optim.lr).
    assert found[1].coords == {"task": "modular", "op": "add", "p": 11, "d_model": 32,
                               "n_layers": 1, "seed": 1, "weight_decay": 1.0}
    assert "lr" in runs.find_runs(sweep / "0")[0].coords  # a single run keeps every override
    assert found[0].checkpoints() == list(STEPS)
    assert found[0].load_model(step=10).cfg.d_model == 16
    assert list(found[0].metrics()["step"]) == list(range(11))


def test_cli_scores_a_sweep_writes_report_and_rescoring_is_incremental(
        sweep, counted_scoring, capsys):
    assert main([str(sweep)]) == 0
    out = sweep / "analysis"
    scores = pd.read_csv(out / "scores.csv")
    assert len(counted_scoring) == 4  # 2 runs x 2 checkpoints
    assert set(zip(scores["run"], scores["step"], strict=True)) == {
        (r, s) for r in (0, 1) for s in STEPS}
    assert {"eval/exact_match", "train_eval/exact_match", "weight_norm",
            "fourier_top_fraction", "eval/answer_logprob"} <= set(scores["metric"])
    assert scores.groupby("run")["params"].first().is_monotonic_increasing
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns[-len(summary.COLUMNS):]) == list(summary.COLUMNS)
    # One rung per seed (the two runs differ in seed and width): no size statistic, and why.
    notes = summary.select(table, "eval/exact_match", "breakthroughness", "params")["note"]
    assert set(notes) == {"1 rung: too few for breakthroughness (needs 5)"}
    report = (out / "report.md").read_text()
    for row, d_model in (("| 0 |", 16), ("| 1 |", 32)):
        line = next(line for line in report.splitlines() if line.startswith(row))
        assert f"| {d_model} |" in line
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "modular_mirage.png" in figures  # a grokking figure per series (here one run each)
    assert "modular_grokking_d_model_16_weight_decay_0.png" in figures
    assert all(f"figures/{name}" in report for name in figures)
    assert str(out / "report.md") in capsys.readouterr().out

    assert main([str(sweep)]) == 0
    assert len(counted_scoring) == 4  # nothing scored again
    assert len(pd.read_csv(out / "scores.csv")) == len(scores)


def test_scores_match_scoring_the_checkpoint_directly(sweep):
    df = runs.score(sweep, last=True)
    run = runs.find_runs(sweep)[1]
    direct = scoring.score(run.load_model(), run.task())
    rows = df[(df["run"] == "1") & (df["metric"] == "eval/loss")]
    assert list(rows["step"]) == [max(STEPS)]
    assert rows["value"].item() == pytest.approx(direct["eval/loss"])


def test_only_scientific_overrides_are_coordinates(sweep):
    # How a run was executed, logged or launched is no coordinate, even of a single run.
    overrides = ["experiment=grokking_small", "wandb.mode=disabled", "hydra/launcher=parallel",
                 "threads=1", "compile=true", "train.overwrite=true", "checkpoint.every=5",
                 "optim.lr=0.01", "model.n_layers=1"]
    OmegaConf.save(OmegaConf.create(overrides), sweep / "0/.hydra/overrides.yaml")
    (run,) = runs.find_runs(sweep / "0")
    assert set(run.coords) == {"task", "op", "p", "d_model", "n_layers", "seed", "lr"}


def test_a_corrupt_checkpoint_is_named_and_the_other_runs_are_still_scored(sweep, caplog):
    corrupt = sweep / "1/checkpoints/step_0000010/model.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        df = runs.score(sweep)
    assert str(corrupt) in caplog.text
    assert set(zip(df["run"], df["step"], strict=True)) == {("0", 0), ("0", 10), ("1", 0)}


def test_runs_without_checkpoints_or_configs_are_reported_not_fatal(sweep, caplog):
    shutil.rmtree(sweep / "1/checkpoints")
    (sweep / "2/.hydra").mkdir(parents=True)
    (sweep / "2/.hydra/config.yaml").write_text("task: [unclosed\n")
    with caplog.at_level(logging.WARNING):
        df = runs.score(sweep)
    assert str(sweep / "1") in caplog.text and str(sweep / "2") in caplog.text
    assert set(df["run"]) == {"0"}


def test_cli_exits_nonzero_with_a_message_when_a_directory_holds_no_runs(tmp_path, caplog):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main([str(tmp_path)]) == 2
    assert f"no runs under {tmp_path}" in caplog.text
    assert main([str(tmp_path / "missing")]) == 2


def test_a_wandb_failure_is_reported_and_not_fatal(sweep, monkeypatch, caplog):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with caplog.at_level(logging.WARNING):
        assert main([str(sweep), "--last", "--wandb", "offline"]) == 0
    assert "wandb logging failed" in caplog.text and "no network" in caplog.text
    assert (sweep / "analysis/report.md").exists()


def test_scores_agree_with_the_metrics_logged_in_training(tmp_path):
    """A real two-run sweep from `python -m train`: the analysis of its last checkpoints
    reproduces the eval metrics the training loop logged at the same step."""
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, "-m", "train", "-m", "task=modular", "task.p=11",
         "task.train_fraction=0.5", "model.d_model=16,32", "model.n_layers=1", "model.d_head=8",
         "train.steps=20", "train.eval_every=10", "train.batch_size=null", "wandb.mode=disabled",
         f"hydra.sweep.dir={sweep}"],
        check=True, capture_output=True, cwd=tmp_path)
    df = runs.score(sweep, last=True)
    assert set(df["run"]) == {"0", "1"} and set(df["d_model"]) == {16, 32}
    for run in runs.find_runs(sweep):
        logged = run.metrics().dropna(subset=["eval/loss"]).iloc[-1]
        scored = df[df["run"] == run.name].set_index("metric")["value"]
        assert scored["eval/loss"] == pytest.approx(logged["eval/loss"], rel=1e-5)
        assert scored["eval/exact_match"] == logged["eval/exact_match"]
