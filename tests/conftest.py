"""Shared slow runs: each reproduction is trained once per test session, then every test that
checks something of it (phenomenon, slices, causal scores, forecasts) reads the same runs."""

from __future__ import annotations

import pytest
from experiment_runs import train


@pytest.fixture(scope="session")
def grokking_runs(tmp_path_factory):
    """grokking_sweep_small with and without weight decay, 2,000 steps, checkpoints every 50
    (where the progress measures are read)."""
    out = tmp_path_factory.mktemp("grokking")
    return train(out, "grokking_sweep_small", "optim.weight_decay=1.0,0.0",
                 "task.train_fraction=0.4", "train.steps=2000", "checkpoint.every=50",
                 sweep=True)


@pytest.fixture(scope="session")
def induction_dir(tmp_path_factory):
    """induction_heads_small at 1, 2 and 3 layers, 1,500 steps: the sweep directory."""
    out = tmp_path_factory.mktemp("induction")
    train(out, "induction_heads_small", "model.n_layers=1,2,3", "train.steps=1500", sweep=True)
    return out


@pytest.fixture(scope="session")
def addition_dir(tmp_path_factory):
    """addition_emergence_small over seeds 0 and 1: the sweep directory."""
    out = tmp_path_factory.mktemp("addition")
    train(out, "addition_emergence_small", "seed=0,1", sweep=True)
    return out
