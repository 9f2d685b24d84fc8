"""Tests for bench/: the training benchmark's reference computes our model's function, and the
command line keeps the long benchmarks out of --quick."""

import pytest
import torch

from bench.__main__ import parse_args
from bench.reference_gpt import ReferenceGPT
from bench.train_speed import ours


def test_the_reference_gpt_computes_the_same_logits_as_ours_with_the_same_weights():
    # Same function, hence the same arithmetic: the speed ratio compares implementations only.
    model, ref = ours(d_model=16, n_layers=2, n_ctx=12, n_heads=4), ReferenceGPT(64, 12, 16, 2, 4)
    ours_name = {"qkv": "attn.qkv", "out": "attn.out", "fc": "mlp.fc", "proj": "mlp.proj",
                 "ln1": "ln1", "ln2": "ln2"}
    weights = model.state_dict()
    mapped = {}
    for key in ref.state_dict():
        parts = key.split(".")  # blocks.{i}.{module}.{weight|bias}, or a top-level name
        if parts[0] == "blocks":
            parts[2] = ours_name[parts[2]]
        mapped[key] = weights[".".join(parts)]
    ref.load_state_dict(mapped)
    tokens = torch.randint(64, (3, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ref(tokens), model(tokens))
    assert ref.num_params() == model.num_params()


def test_quick_runs_leave_out_the_analysis_benchmark():
    assert "analysis" not in parse_args(["--quick"]).only
    assert "analysis" in parse_args([]).only
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--only", "analysis"])
