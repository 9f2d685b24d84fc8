"""Tests of train/ensemble.py: N models trained at once give each member the losses its own plain
run gives, in N ordinary run directories; resuming, divergence and compiled training."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal

import pytest
import torch

import train.checkpoint
import train.ensemble
import train.loop
from analysis.runs import find_runs
from models import GPTConfig
from tasks.arithmetic import ArithmeticConfig
from tasks.modular import ModularConfig
from train.config import CheckpointConfig, Config, OptimConfig, TrainConfig, WandbConfig
from train.ensemble import member_configs
from train.loop import run
from train.run_dir import write_hydra_files

# float32 on CPU: the batched forward and the stacked AdamW round differently from the plain
# path's kernels (about 1e-7 relative per step); after 20 steps the losses agree to ~1e-6.
RTOL = 1e-4


def config(**train) -> Config:
    return Config(
        model=GPTConfig(d_model=32, n_layers=2, n_heads=4),
        task=ArithmeticConfig(digits=2, eval_size=50),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(**{"steps": 20, "batch_size": 16, "eval_every": 10, "log_every": 5,
                             "ensemble": 3, **train}),
        checkpoint=CheckpointConfig(log_spaced_until=4, every=None),
        wandb=WandbConfig(mode="disabled"), seed=5, device="cpu", threads=1)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[tuple[int, float]]:
    """(step, value) of every train/loss and eval/loss record."""
    return [(r["step"], r[key]) for r in records(run_dir)
            for key in ("train/loss", "eval/loss") if key in r]


def assert_same_losses(a, b) -> None:
    assert [step for step, _ in a] == [step for step, _ in b]
    torch.testing.assert_close(torch.tensor([v for _, v in a]),
                               torch.tensor([v for _, v in b]), rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A 3-member ensemble over a learning-rate and weight-decay grid, and each member's
    config run alone."""
    root = tmp_path_factory.mktemp("ensemble")
    cfg = config(ensemble_lr=[1e-3, 3e-3, 1e-2], ensemble_weight_decay=[0.0, 0.1, 1.0])
    overrides = ["train.ensemble=3", "model.d_model=32"]
    write_hydra_files(root / "ensemble", cfg, overrides)  # as `python -m train` leaves them
    final = run(cfg, root / "ensemble", overrides=overrides)
    for i, member in enumerate(member_configs(cfg)):
        run(member, root / f"alone_{i}")
    return root, final


def test_each_member_trains_as_its_own_plain_run_would(ensemble):
    root, _ = ensemble
    for i in range(3):
        assert_same_losses(losses(root / "ensemble" / f"member_{i}"), losses(root / f"alone_{i}"))


def test_members_are_ordinary_runs_that_analysis_finds_with_their_coordinates(ensemble):
    root, final = ensemble
    found = find_runs(root / "ensemble")  # the ensemble's own directory holds no run
    assert [r.name for r in found] == ["member_0", "member_1", "member_2"]
    assert [(r.coords["seed"], r.coords["lr"], r.coords["weight_decay"]) for r in found] == [
        (5, 1e-3, 0.0), (6, 3e-3, 0.1), (7, 1e-2, 1.0)]
    for r in found:
        assert r.checkpoints() == [0, 1, 2, 4, 20]
        assert r.summary()["status"] == "completed"
        assert r.config.train.ensemble == 1 and r.config.data_seed == r.config.seed - 5
        assert r.load_model().cfg.d_model == 32
    mean = sum(r.summary()["metrics"]["eval/loss"] for r in found) / 3
    assert final == pytest.approx(mean)


def test_full_batch_members_share_the_training_set(tmp_path):
    cfg = dataclasses.replace(config(ensemble=2, batch_size=None),
                              task=ModularConfig(p=11, train_fraction=0.5))
    run(cfg, tmp_path / "ensemble")
    for i, member in enumerate(member_configs(cfg)):
        run(member, tmp_path / f"alone_{i}")
        assert_same_losses(losses(tmp_path / "ensemble" / f"member_{i}"),
                           losses(tmp_path / f"alone_{i}"))


def test_a_preempted_ensemble_resumes_exactly_and_a_member_resumes_alone(tmp_path, monkeypatch):
    cfg = config(ensemble=2)
    run(cfg, tmp_path / "whole")
    batches = train.ensemble.training_data
    calls = []

    def preempt_at_step_13(*args):
        calls.append(1)
        if len(calls) == 13:
            signal.raise_signal(signal.SIGUSR1)  # as SLURM does before a time limit
        return batches(*args)

    monkeypatch.setattr(train.ensemble, "training_data", preempt_at_step_13)
    assert run(cfg, tmp_path / "split") is None
    summaries = [json.loads((tmp_path / f"split/member_{i}/summary.json").read_text())
                 for i in range(2)]
    assert [(s["status"], s["steps"]) for s in summaries] == [("preempted", 13)] * 2
    monkeypatch.setattr(train.ensemble, "training_data", batches)
    shutil.copytree(tmp_path / "split", tmp_path / "copy")
    run(cfg, tmp_path / "split")
    for i in range(2):
        assert losses(tmp_path / f"split/member_{i}") == losses(tmp_path / f"whole/member_{i}")
    # A member's state.pt is in torch's AdamW format: the plain loop resumes it too.
    run(member_configs(cfg)[1], tmp_path / "copy/member_1")
    assert_same_losses(losses(tmp_path / "copy/member_1"), losses(tmp_path / "whole/member_1"))


def test_a_crash_between_the_members_checkpoints_resumes_every_member_from_the_step_all_hold(
        tmp_path, monkeypatch):
    """member_1's write of step 4 fails after member_0's succeeded (a crash between the two):
    member_0 still holds step 2's state, so the ensemble resumes both from there, bitwise."""
    cfg = config(ensemble=2)
    run(cfg, tmp_path / "whole")
    save = train.checkpoint.save

    def crash_at_member_1_step_4(checkpoints, step, *args):
        if step == 4 and checkpoints.parent.name == "member_1":
            raise OSError("the node went down")
        return save(checkpoints, step, *args)

    monkeypatch.setattr(train.checkpoint, "save", crash_at_member_1_step_4)
    with pytest.raises(OSError, match="went down"):
        run(cfg, tmp_path / "torn")
    held = [sorted(p.parent.name for p in (tmp_path / f"torn/member_{i}").glob("*/*/state.pt"))
            for i in range(2)]
    assert held == [["step_0000002", "step_0000004"], ["step_0000002"]]
    monkeypatch.setattr(train.checkpoint, "save", save)
    run(cfg, tmp_path / "torn")
    for i in range(2):
        member = tmp_path / f"torn/member_{i}"
        assert json.loads((member / "run.json").read_text())["resumed"][0]["step"] == 2
        assert json.loads((member / "summary.json").read_text())["status"] == "completed"
        assert losses(member) == losses(tmp_path / f"whole/member_{i}")
        assert [p.parent.name for p in member.glob("*/*/state.pt")] == ["step_0000020"]


@pytest.mark.parametrize("ensemble", [1, 2])
def test_a_signal_during_the_last_step_completes_the_run_and_requeues_nothing(
        tmp_path, monkeypatch, ensemble):
    update = train.ensemble.BatchedUpdate if ensemble > 1 else train.loop.PlainUpdate
    step, calls, requeued = update.__call__, [], []

    def signal_at_the_last_step(self):
        calls.append(1)
        if len(calls) == 20:
            signal.raise_signal(signal.SIGUSR1)
        return step(self)

    monkeypatch.setattr(update, "__call__", signal_at_the_last_step)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: requeued.append(signum))
    try:  # the handler stands for submitit's, which would requeue the job
        final = run(config(ensemble=ensemble), tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert requeued == [] and final is not None
    dirs = [tmp_path] if ensemble == 1 else [tmp_path / f"member_{i}" for i in range(ensemble)]
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        assert (summary["status"], summary["steps"]) == ("completed", 20)
    assert run(config(ensemble=ensemble), tmp_path) == final  # what a requeued job would meet


def test_a_diverging_member_stops_and_the_others_complete(tmp_path):
    final = run(config(ensemble_lr=[1e-3, 1e30, 1e-2]), tmp_path)
    summaries = [json.loads((tmp_path / f"member_{i}/summary.json").read_text())
                 for i in range(3)]
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert "not finite" in summaries[1]["error"] and summaries[1]["steps"] < 20
    assert final == pytest.approx((summaries[0]["metrics"]["eval/loss"]
                                   + summaries[2]["metrics"]["eval/loss"]) / 2)
    # Run again: nothing to do, the diverged member stays stopped.
    assert run(config(ensemble_lr=[1e-3, 1e30, 1e-2]), tmp_path) == final
    assert [json.loads((tmp_path / f"member_{i}/summary.json").read_text())
            for i in range(3)] == summaries


@pytest.mark.parametrize(("train", "key"), [
    ({"ensemble": 0}, "train.ensemble"),
    ({"ensemble": 2, "ensemble_lr": [1e-3]}, "train.ensemble_lr"),
    ({"ensemble": 2, "ensemble_lr": [1e-3, 0.0]}, "train.ensemble_lr"),
    ({"ensemble": 2, "ensemble_weight_decay": [0.1, -1.0]}, "train.ensemble_weight_decay"),
])
def test_bad_ensemble_settings_are_refused_naming_the_key(train, key):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**train)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", [1, 2])
def test_compiled_training_gives_the_eager_losses(tmp_path, ensemble):
    """torch.compile (about 20-50 s on CPU) changes rounding only: rtol 1e-4 after 20 steps."""
    cfg = config(ensemble=ensemble)
    run(cfg, tmp_path / "eager")
    run(dataclasses.replace(cfg, compile=True), tmp_path / "compiled")
    dirs = [""] if ensemble == 1 else [f"member_{i}" for i in range(ensemble)]
    for member in dirs:
        assert_same_losses(losses(tmp_path / "compiled" / member),
                           losses(tmp_path / "eager" / member))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_members_train_as_their_plain_runs_in_bfloat16(tmp_path):
    """CUDA's SDPA under vmap and bf16 autocast; bf16 rounding differs between the batched and
    the plain kernels, hence the loose tolerance."""
    cfg = dataclasses.replace(config(ensemble=2), device="cuda", dtype="bfloat16")
    run(cfg, tmp_path / "ensemble")
    for i, member in enumerate(member_configs(cfg)):
        run(member, tmp_path / f"alone_{i}")
        a, b = losses(tmp_path / "ensemble" / f"member_{i}"), losses(tmp_path / f"alone_{i}")
        torch.testing.assert_close(torch.tensor([v for _, v in a]),
                                   torch.tensor([v for _, v in b]), rtol=0.05, atol=0)
