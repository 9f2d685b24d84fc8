"""Per-example attributes of the fixed sets and metrics per slice: hand-checked attributes, and
slices that partition the eval set."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks
from analysis import metrics, scoring, slices
from analysis.evaluate import evaluate
from analysis.phenomena.subskills.report import slice_transitions
from models import GPT
from tasks.arithmetic import carries, nonzero_columns


def digits(*numbers: int, width: int = 4) -> torch.Tensor:
    """[n, width] digits, least significant first."""
    return torch.tensor([[n // 10**i % 10 for i in range(width)] for n in numbers])


def test_carries_and_partial_product_columns_by_hand():
    assert carries(digits(999, 123, 55, 0), digits(1, 456, 55, 0)).tolist() == [3, 0, 2, 0]
    assert nonzero_columns(digits(12, 100), digits(11, 5)).tolist() == [3, 1]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 9999), st.integers(0, 9999))
def test_carries_count_the_columns_whose_sum_overflows(a, b):
    expected, carry = 0, 0
    for i in range(4):
        carry = (a // 10**i % 10 + b // 10**i % 10 + carry) // 10
        expected += carry
    assert carries(digits(a), digits(b)).item() == expected


def test_addition_attributes_match_the_problems_they_describe():
    task = tasks.build({"kind": "arithmetic", "digits": 3, "min_digits": 1, "eval_size": 300})
    problems = task.sample(500, torch.Generator().manual_seed(0))
    attributes = task.attributes(problems)
    a, b = problems.chunk(2, dim=1)
    for row in range(len(problems)):
        x = sum(int(d) * 10**i for i, d in enumerate(a[row]))
        y = sum(int(d) * 10**i for i, d in enumerate(b[row]))
        assert attributes["len_a"][row] == len(str(x)) or (x == 0 and attributes["len_a"][row] <= 1)
        assert attributes["len_b"][row] == len(str(y)) or (y == 0 and attributes["len_b"][row] <= 1)
        assert attributes["answer_len"][row] == len(str(x + y)) or x + y == 0
    eval_set = task.eval_set()
    assert set(eval_set.attributes) == {"len_a", "len_b", "answer_len", "carries"}
    assert all(len(v) == len(eval_set) for v in eval_set.attributes.values())


@pytest.mark.parametrize("spec", [
    {"kind": "arithmetic", "digits": 2, "min_digits": 1, "test_fraction": 0.05},
    {"kind": "arithmetic", "op": "mul", "digits": 2, "min_digits": 1, "test_fraction": 0.05},
    {"kind": "parity", "n_bits": 8, "k": 3, "n_tasks": 4, "test_fraction": 0.2},
    {"kind": "associative_recall", "eval_size": 200},
])
def test_slices_partition_the_eval_set_and_their_table_counts_add_up(spec):
    task = tasks.build(spec)
    eval_set = task.eval_set()
    found = slices.masks(eval_set.attributes)
    assert found, "a task with attributes has slices"
    for name in eval_set.attributes:
        of_name = [m for key, m in found.items() if key.startswith(f"{name}=")]
        if of_name:
            assert torch.stack(of_name).sum(0).eq(1).all()  # each example in exactly one slice
    model = GPT(scoring_config(task))
    out = evaluate(model, task, eval_set)
    table = slices.table(out, eval_set.attributes)
    assert table.iloc[0]["slice"] == "all" and table.iloc[0]["count"] == len(eval_set)
    for _, group in table[table["slice"] != "all"].groupby("attribute"):
        assert group["count"].sum() == len(eval_set)
        # exact match on the whole set is the count-weighted mean over the slices
        weighted = (group["exact_match"] * group["count"]).sum() / len(eval_set)
        assert weighted == pytest.approx(metrics.exact_match(out))


def scoring_config(task):
    from models import GPTConfig
    return GPTConfig(d_vocab=task.d_vocab, n_ctx=task.seq_len, d_model=16, n_layers=1,
                     n_heads=2).with_derived_sizes()


def test_score_names_slices_and_logs_only_the_main_attribute_in_training():
    task = tasks.build({"kind": "arithmetic", "digits": 2, "min_digits": 1, "test_fraction": 0.05})
    model = GPT(scoring_config(task))
    everything = scoring.score(model, task)
    main = scoring.score(model, task, slices_of="main")
    assert "eval/loss@len_a=1" in everything and "eval/exact_match@carries=1" in everything
    sliced = {k for k in main if "@" in k}
    assert sliced and all(k.split("@")[1].startswith("carries=") for k in sliced)
    assert all(k.split("@")[0].endswith("/exact_match") for k in sliced)
    assert main["eval/loss"] == everything["eval/loss"]
    with pytest.raises(ValueError, match="probes"):
        scoring.score(model, task, probes=["no_such_probe"])


def test_summary_has_each_slices_transition_and_a_later_sub_skill_crosses_later():
    rows = []
    for seed in (0, 1):
        for i, d_model in enumerate((8, 16, 32, 64, 128, 256)):
            params = 10 * d_model**2
            common = {"run": f"{seed}-{d_model}", "d_model": d_model, "seed": seed,
                      "params": params, "non_embedding_params": params, "step": 100,
                      "tokens": 0, "flops": params, "metric": "eval/exact_match"}
            # carries=0 is solved from the third rung on, carries=2 only from the fifth.
            for name, solved in (("all", i >= 3), ("carries=0", i >= 2), ("carries=2", i >= 4)):
                rows.append({**common, "slice": name, "value": float(solved)})
    table = slice_transitions(pd.DataFrame(rows))
    params = table[table["axis"] == "params"].set_index("metric")
    assert set(params.index) == {"eval/exact_match@carries=0", "eval/exact_match@carries=2"}
    early, late = (params.loc[f"eval/exact_match@carries={c}"] for c in (0, 2))
    assert early["value"] < late["value"] and early["n_seeds"] == late["n_seeds"] == 2
    assert 10 * 16**2 < early["value"] < 10 * 32**2  # between the last unsolved rung and the first
    assert 10 * 64**2 < late["value"] < 10 * 128**2
