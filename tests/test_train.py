"""Tests of the training app: the run directory it writes for every task, exact resume after a
signal or a crash, sweeps through a launcher, wandb offline, and the errors bad input gets.

Runs are tiny (d_model 16, one layer, a dozen steps, 50 eval examples, one thread). Most go
through Hydra's compose API and `train.loop.run` in this process; exit codes, signals and
multirun go through `python -m train` in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

import tasks
from analysis.evaluate import evaluate
from analysis.metrics import compute
from models import load_model
from train.checkpoint import Preemption, is_checkpoint_step
from train.config import CheckpointConfig, OptimConfig, register
from train.loop import run
from train.run_dir import config_changes
from train.step import lr_factor, masked_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["addition", "multiplication", "induction", "associative_recall", "modular", "parity"]
TINY = ["model.d_model=16", "model.n_layers=1", "train.steps=12", "train.eval_every=6",
        "train.log_every=3", "task.eval_size=50", "checkpoint.log_spaced_until=4",
        "checkpoint.every=null", "threads=1", "wandb.mode=disabled"]


def config(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[*TINY, *overrides]))


def train(run_dir: Path, *overrides: str) -> float | None:
    return run(config(*overrides), run_dir)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field, which no two runs share."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / f"checkpoints/step_{step:07d}/model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} did not appear"


# --- the run directory ---------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_task_fills_the_documented_run_directory(tmp_path, task):
    final = train(tmp_path, f"task={task}")

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6, 9, 12]
    for row in rows:
        assert {"step", "tokens", "flops", "elapsed_s"} <= row.keys()
        if row["step"] > 0:
            assert {"train/loss", "train/lr", "train/grad_norm"} <= row.keys()
            assert math.isfinite(row["train/loss"])
        if row["step"] % 6 == 0:
            assert {"eval/loss", "train_eval/loss", "eval/exact_match"} <= row.keys()
    flops_per_token = read(tmp_path / "summary.json")["flops_per_token"]
    assert flops_per_token > 0 and rows[-1]["flops"] == rows[-1]["tokens"] * flops_per_token

    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert steps == ["step_0000000", "step_0000001", "step_0000002", "step_0000004",
                     "step_0000012"]
    for name in steps:
        assert (tmp_path / "checkpoints" / name / "model.safetensors").is_file()
        assert read(tmp_path / "checkpoints" / name / "meta.json")["step"] == int(name[5:])
    # Only the newest checkpoint keeps the training state (checkpoint.keep_state=last).
    assert [p.parent.name for p in tmp_path.glob("checkpoints/*/state.pt")] == ["step_0000012"]

    summary = read(tmp_path / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["params"] > summary["params_non_embedding"] > 0
    assert summary["metrics"]["eval/loss"] == final
    info = read(tmp_path / "run.json")
    assert {"git", "overrides", "started", "wandb_id", "config"} <= info.keys()
    assert info["config"]["model"]["d_model"] == 16

    # The final checkpoint scores the same offline as in the loop (the analysis contract).
    cfg = config(f"task={task}")
    model, meta = load_model(tmp_path / "checkpoints/step_0000012/model.safetensors")
    t = tasks.build(cfg.task)
    assert compute(evaluate(model, t, t.eval_set()))["loss"] == pytest.approx(final, rel=1e-5)
    assert meta["tokens"] == rows[-1]["tokens"]


def test_full_batch_training_on_a_finite_training_set(tmp_path):
    train(tmp_path, "task=modular", "task.p=23", "train.batch_size=null")
    rows = records(tmp_path)
    pairs = int(0.3 * 23 * 23)  # task.train_fraction of all pairs, every step
    assert rows[1]["tokens"] == 3 * pairs * 3  # 3 steps x pairs x 3 input positions


# --- resume ----------------------------------------------------------------------------------

RESUMABLE = ["train.steps=300", "train.eval_every=1000", "train.log_every=25"]


def preempt(run_dir: Path, *overrides: str) -> list[str]:
    """`python -m train` of a RESUMABLE run into `run_dir`, sent SIGTERM once checkpoint 2 is
    saved; it must exit 0. Returns its arguments, to resume with `cli(*args)`."""
    args = [*TINY, *RESUMABLE, *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints/step_0000002")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return args


def test_resume_after_sigterm_matches_an_uninterrupted_run_bitwise(tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    train(reference, *RESUMABLE)

    args = preempt(stopped)
    summary = read(stopped / "summary.json")
    assert summary["status"] == "preempted" and 2 <= summary["steps"] < 300
    newest = f"step_{summary['steps']:07d}"
    assert (stopped / "checkpoints" / newest / "state.pt").is_file()

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert read(stopped / "summary.json")["status"] == "completed"
    assert read(stopped / "run.json")["resumed"][0]["step"] == summary["steps"]
    assert records(stopped) == records(reference)
    assert_same_weights(weights(stopped, 300), weights(reference, 300))


@pytest.mark.slow
@pytest.mark.parametrize("members", [1, 2])
def test_sigterm_resume_then_kill_9_loses_no_run_and_ends_as_an_uninterrupted_run(
        tmp_path, members):
    """Checkpoints every step; SIGTERM, a resumed attempt killed with SIGKILL (no clean-up:
    an ensemble's members may be a checkpoint apart), then a last attempt completes every run
    with the losses and weights of an uninterrupted one."""
    steps = ["train.steps=60", "checkpoint.every=1", f"train.ensemble={members}"]
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    train(reference, *RESUMABLE, *steps)
    runs = [""] if members == 1 else [f"member_{i}" for i in range(members)]

    args = [*TINY, *RESUMABLE, *steps, f"hydra.run.dir={faulty}"]
    when = 2
    for stop in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(faulty / runs[0] / f"checkpoints/step_{when:07d}")
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == (0 if stop == signal.SIGTERM else -signal.SIGKILL), stderr
        if stop == signal.SIGTERM:
            summaries = [read(faulty / name / "summary.json") for name in runs]
            assert {s["status"] for s in summaries} == {"preempted"}
            when = summaries[0]["steps"] + 5  # the kill: a few steps after the resume point

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    for name in runs:
        assert read(faulty / name / "summary.json")["status"] == "completed"
        assert len(read(faulty / name / "run.json")["resumed"]) == 2
        assert records(faulty / name) == records(reference / name)
        assert_same_weights(weights(faulty / name, 60), weights(reference / name, 60))


def test_crash_resumes_from_the_last_complete_checkpoint(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    train(reference, "checkpoint.keep_state=all")
    train(crashed, "checkpoint.keep_state=all")
    # A crash while writing the last checkpoint: its directory is half-written under its
    # temporary name, summary.json is missing, and metrics.jsonl got ahead of the checkpoints.
    (crashed / "summary.json").unlink()
    last = crashed / "checkpoints/step_0000012"
    tmp = last.with_name(".tmp-step_0000012")
    last.rename(tmp)
    (tmp / "model.safetensors").write_bytes(b"half")

    train(crashed, "checkpoint.keep_state=all")
    assert not tmp.exists()
    assert read(crashed / "run.json")["resumed"][0]["step"] == 4
    assert records(crashed) == records(reference)
    assert_same_weights(weights(crashed, 12), weights(reference, 12))


def test_a_finished_run_is_not_overwritten(tmp_path):
    final = train(tmp_path)
    before = (tmp_path / "summary.json").read_text()
    assert train(tmp_path) == final  # the same command again: done already
    with pytest.raises(FileExistsError, match=r"train\.steps: 12 -> 6.*train\.overwrite=true"):
        train(tmp_path, "train.steps=6")
    assert (tmp_path / "summary.json").read_text() == before
    train(tmp_path, "train.overwrite=true", "train.steps=6")
    assert read(tmp_path / "summary.json")["steps"] == 6
    assert [r["step"] for r in records(tmp_path)] == [0, 3, 6]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    train(tmp_path)
    (tmp_path / "summary.json").unlink()  # an unfinished run, resumable
    with pytest.raises(ValueError, match=r"model\.d_model: 16 -> 32"):
        train(tmp_path, "model.d_model=32")
    (tmp_path / "run.json").unlink()  # without the run's config, the checkpoint still says
    with pytest.raises(ValueError, match="d_model 16 != 32"):
        train(tmp_path, "model.d_model=32")


# --- sweeps and wandb -----------------------------------------------------------------------


def test_submitit_sweep_runs_every_point_and_requeues_a_preempted_job(tmp_path):
    """Two points through hydra-submitit-launcher (local executor, the SLURM code path). Job 0
    gets submitit's preemption signal (SIGUSR2) mid-run: the loop checkpoints, hands the signal
    to submitit, which requeues the job; it resumes and ends as an uninterrupted run would."""
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    train(reference, *RESUMABLE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *TINY, *RESUMABLE, "model.d_model=16,32",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(sweep / "0/checkpoints/step_0000002")
    os.kill(read(sweep / "0/run.json")["pid"], signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr

    for job, width in enumerate((16, 32)):
        assert read(sweep / str(job) / "summary.json")["status"] == "completed"
        info = read(sweep / str(job) / "run.json")
        assert f"model.d_model={width}" in info["overrides"]
        assert info["config"]["model"]["d_model"] == width
        assert info["group"] == sweep.name  # the sweep's runs share a wandb group
    assert len(read(sweep / "0/run.json")["resumed"]) == 1
    assert records(sweep / "0") == records(reference)
    assert_same_weights(weights(sweep / "0", 300), weights(reference, 300))


def test_wandb_offline_logs_locally_without_network(tmp_path, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    train(tmp_path / "run", "wandb.mode=offline")
    run_id = read(tmp_path / "run" / "run.json")["wandb_id"]
    offline = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert read(tmp_path / "run" / "summary.json")["status"] == "completed"


# --- errors ----------------------------------------------------------------------------------


def test_a_misspelt_key_fails_in_hydra_before_anything_runs(tmp_path):
    result = cli(*TINY, "train.stpes=10", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "train.stpes: no such key (did you mean train.steps?)" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, message", [
    ("model.n_ctx=4", "model.n_ctx=4"),
    ("model.d_vocab=3", "model.d_vocab=3"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.eval_every=0", "train.eval_every=0"),
    ("train.batch_size=null", "train.batch_size=null"),  # addition has no finite training set
    ("optim.schedule=cos", "optim.schedule='cos'"),
    ("compile=fast", "compile='fast'"),
    ("task.digits=0", "task.digits=0"),
])
def test_invalid_settings_fail_before_training(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        train(tmp_path, override)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_diverging_run_stops_naming_the_step_and_keeps_only_finite_checkpoints(tmp_path):
    result = cli(*TINY, "optim.lr=1e30", "optim.warmup_steps=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "not finite at step" in result.stderr
    summary = read(tmp_path / "summary.json")
    assert summary["status"] == "failed" and "not finite" in summary["error"]
    saved = list(tmp_path.glob("checkpoints/step_*/model.safetensors"))
    assert saved
    for path in saved:
        assert all(t.isfinite().all() for t in load_file(path).values())


# Tensor methods that wait for the device's queue to drain (a host sync) when called on a GPU
# tensor; called from phaselab's code, that is, torch's own internals are torch's business.
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def no_syncs_in_steps(monkeypatch) -> None:
    """Make every step (an update and the loop's bookkeeping of its loss) fail on a host sync
    from project code; log, eval and checkpoint steps, which read values on purpose, run
    outside the steps."""
    from train import ensemble, loop, state

    in_step = [False]

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if in_step[0] and caller.startswith(str(ROOT)) and ".venv" not in caller:
                raise AssertionError(f"Tensor.{name}, a host sync, inside a training step at "
                                     f"{caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return method

    def step(fn):
        def stepped(*args, **kwargs):
            in_step[0] = True
            try:
                return fn(*args, **kwargs)
            finally:
                in_step[0] = False
        return stepped

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    for owner, name in ((loop.PlainUpdate, "__call__"), (ensemble.BatchedUpdate, "__call__"),
                        (state.TrainStats, "add")):
        monkeypatch.setattr(owner, name, step(getattr(owner, name)))


@pytest.mark.parametrize("members", [1, 2])
def test_training_steps_never_wait_for_the_device(tmp_path, monkeypatch, members):
    # On a GPU each host sync stalls the queue once per step; only log steps may read values.
    no_syncs_in_steps(monkeypatch)
    train(tmp_path, f"train.ensemble={members}", "train.log_every=4", "train.eval_every=12",
          "checkpoint.log_spaced_until=0")
    assert len(records(tmp_path / ("member_1" if members > 1 else ""))) == 4  # steps 0, 4, 8, 12


def test_the_host_sync_guard_catches_a_loss_read_in_a_step(tmp_path, monkeypatch):
    from train import loop

    def reads_the_loss(*args):
        loss = masked_cross_entropy(*args)
        assert loss.item() >= 0
        return loss

    no_syncs_in_steps(monkeypatch)
    monkeypatch.setattr(loop, "masked_cross_entropy", reads_the_loss)
    with pytest.raises(AssertionError, match=r"Tensor\.item, a host sync"):
        train(tmp_path)


# --- pieces ----------------------------------------------------------------------------------


def test_checkpoint_schedule_is_log_spaced_then_periodic_plus_the_last():
    cfg = CheckpointConfig(log_spaced_until=512, every=1000)
    steps = [s for s in range(3001) if is_checkpoint_step(s, 2500, cfg)]
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 2500, 3000]
    no_periodic = CheckpointConfig(log_spaced_until=8, every=None)
    assert [s for s in range(100) if is_checkpoint_step(s, 50, no_periodic)] == [0, 1, 2, 4, 8, 50]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    linear = OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(25, linear, 100) == pytest.approx(0.75)
    constant = OptimConfig(warmup_steps=0, schedule="constant")
    assert lr_factor(99, constant, 100) == 1.0


def test_masked_loss_is_the_mean_over_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 9, generator=g)
    targets = torch.randint(9, (4, 6), generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.5
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert masked_cross_entropy(logits, targets, mask).item() == pytest.approx(expected.item())


def test_preemption_sets_a_flag_then_hands_the_signal_to_the_replaced_handler():
    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert preemption.signum == signal.SIGUSR2 and not received
        preemption.hand_over()  # as submitit's requeue handler would be called
        assert received == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_config_changes_name_what_a_resumed_run_may_not_change():
    old = {"model": {"d_model": 16}, "optim": {"lr": 1e-3}, "wandb": {"mode": "offline"}}
    new = {"model": {"d_model": 32}, "optim": {"lr": 1e-3}, "wandb": {"mode": "disabled"}}
    assert config_changes(old, new) == ["model.d_model: 16 -> 32"]


def test_the_training_process_loads_neither_matplotlib_nor_pandas():
    """Every training process, on a cluster node too, imports only what training needs; the
    analysis package still hands out its plotting and table entries on first use."""
    code = ("import sys, train.loop, train.__main__\n"
            "print(sorted(m for m in ('matplotlib', 'pandas', 'analysis.runs', 'analysis.plots')"
            " if m in sys.modules))\n"
            "from analysis import load_runs, plots, score\n"
            "print(load_runs.__name__, score.__module__, plots.__name__, 'pandas' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=True).stdout.splitlines()
    assert found == ["[]", "find_runs analysis.runs analysis.plots True"]
