"""Shared runs: each is trained once per test session, then every test that checks something of
it reads the same runs. The reproductions (phenomenon, slices, causal scores, forecasts) are slow;
the tiny demo run is not."""

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
    """addition_emergence_small as it stands (6 widths x 5 seeds): the sweep directory."""
    out = tmp_path_factory.mktemp("addition")
    train(out, "addition_emergence_small", sweep=True)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """experiment=demo cut to one tiny run (d_model 16, 20 steps, checkpoints 0, 10, 20) trained
    in `python -m train`'s own process: the sweep directory, holding run 0."""
    out = tmp_path_factory.mktemp("demo")
    train(out, "demo", "hydra/launcher=basic", "model.d_model=16", "seed=0", "train.steps=20",
          "checkpoint.every=10", "task.eval_size=50", sweep=True)
    return out
