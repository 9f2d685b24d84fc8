"""Refusals that touch nothing, errors a person reads, and commands that can be run again.

A refused command (a bad value caught by a config's checks, the model's build, the device
check or the task's checks, an unknown key, a completed run of another config, a changed
config on resume, a directory in use) leaves the run directory byte for byte as it was, or,
for a new one, leaves no directory; it prints one short message naming the key. Running a
finished command again does nothing to its completed runs and finishes the others; a sweep
ends with the runs that did not complete and the command that finishes them.

`python -m train` runs here in this process (its entry, `train.__main__.cli`) where no signal
is involved; the signalled sweeps are subprocesses (slow tier). Runs are test_train.py's tiny
ones.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_faults import KEEP_ALL, finished_run, snapshot  # noqa: F401 (finished_run: a fixture)
from test_train import ROOT, TINY, read, records, train, wait_for

import train.__main__ as entry
from train.config import register, to_config


@pytest.fixture
def finished(finished_run):  # noqa: F811 (the fixture imported above)
    """test_faults.py's completed run (checkpoint.keep_state=all), shared by its tests."""
    return finished_run


@pytest.fixture
def command(monkeypatch, capsys):
    """`python -m train ARGS` in this process: (exit status, stdout, stderr). Hydra's logging
    set-up is undone afterwards, so that later tests do not log into these runs' train.log."""
    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["train", *args])
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # as a user has it
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            status = entry.cli()
        finally:
            GlobalHydra.instance().clear()
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
        out = capsys.readouterr()
        return status, out.out, out.err
    return call


def assert_one_message(stderr: str, message: str) -> None:
    """The refusal is a line or two naming what is wrong (Hydra's line with the command, then
    ours), with no traceback."""
    assert message in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) <= 2, stderr


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda is valid here")
REFUSED = [  # (overrides, what the message says): bad values of each kind of check
    (["optim.lr=-1"], "optim.lr=-1.0: must be finite and > 0"),  # a config's checks
    (["train.batch_size=0"], "train.batch_size=0: must be > 0"),
    (["model.n_heads=5"], "model.n_heads=5 must divide model.d_model=16"),  # the model's build
    pytest.param(["device=cuda"], "device=cuda: no CUDA device", marks=NO_CUDA),  # the device
    (["task.digits=0"], "task.digits=0: must be >= 1"),  # the task's checks
    (["model.n_ctx=4"], "model.n_ctx=4"),  # the task's check of the model
    (["+optim.weight_decy=0.5"], "+optim.weight_decy: no such key (did you mean "
                                 "optim.weight_decay?)"),  # unknown keys
    (["optim.weight_decy=0.5"], "optim.weight_decy: no such key (did you mean "
                                "optim.weight_decay?)"),
    (["train.overwrite=true", "optim.lr=-1"], "optim.lr=-1.0"),  # refused before the wipe
    (["train.overwrite=true", "+optim.weight_decy=0.5"], "did you mean optim.weight_decay?"),
]


@pytest.mark.parametrize("overrides, message", [
    *REFUSED,
    (["model.d_model=32"], "holds a completed run of another config (model.d_model: 16 -> 32)"),
])
def test_a_refused_command_leaves_a_finished_run_as_it_was(finished, command, overrides,
                                                           message):
    before = snapshot(finished)
    status, _, stderr = command(*TINY, *KEEP_ALL, *overrides, f"hydra.run.dir={finished}")
    assert status == 1
    assert_one_message(stderr, message)
    assert snapshot(finished) == before  # .hydra/ and train.log included


@pytest.mark.parametrize("overrides, message", REFUSED)
def test_a_refused_command_leaves_no_new_directory(tmp_path, command, overrides, message):
    status, _, stderr = command(*TINY, *overrides, f"hydra.run.dir={tmp_path}/new/run")
    assert status == 1
    assert_one_message(stderr, message)
    assert list(tmp_path.iterdir()) == []  # neither the run directory nor the parent made for it


@pytest.mark.parametrize("overrides, message", [
    (["model.d_model=32"], "holds a run with a different config"),  # after the lock
    (["optim.lr=-1"], "optim.lr=-1.0"),
    ([], "is in use by pid"),  # another process holds the directory
])
def test_a_refused_resume_leaves_an_unfinished_run_as_it_was(finished, tmp_path, command,
                                                             overrides, message):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # killed after its last checkpoint
    before = snapshot(run)
    with (run / ".lock").open("a") as holder:
        if not overrides:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, _, stderr = command(*TINY, *KEEP_ALL, *overrides, f"hydra.run.dir={run}")
    assert status == 1
    assert_one_message(stderr, message)
    assert snapshot(run) == before


def test_an_unknown_key_added_with_plus_is_refused_when_the_config_is_typed():
    """The compose API (tests, notebooks) gets the same refusal as the command line."""
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+optim.weight_decy=0.5"])
    with pytest.raises(ValueError, match=r"optim\.weight_decy: no such key \(did you mean "
                                         r"optim\.weight_decay\?\)"):
        to_config(cfg)


def test_hydra_full_error_shows_the_traceback(tmp_path, command, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train", *TINY, "optim.lr=-1", f"hydra.run.dir={tmp_path}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    try:
        with pytest.raises(ValueError, match="optim.lr=-1.0"):
            entry.cli()
    finally:
        GlobalHydra.instance().clear()


# --- running a command again ------------------------------------------------------------------


def test_running_a_sweep_again_skips_its_completed_runs_and_finishes_the_others(tmp_path,
                                                                                command):
    args = ["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    assert command(*args)[0] == 0
    finished = records(tmp_path / "1")
    (tmp_path / "1/summary.json").unlink()  # killed after its last checkpoint
    before = snapshot(tmp_path / "0")

    status, stdout, stderr = command(*args)
    assert status == 0, stderr
    assert f"{tmp_path / '0'}: completed, skipped" in stdout
    assert snapshot(tmp_path / "0") == before
    assert read(tmp_path / "1/summary.json")["status"] == "completed"
    assert records(tmp_path / "1") == finished


def test_an_ensemble_killed_as_it_finished_completes_on_the_same_command(tmp_path):
    final = train(tmp_path, "train.ensemble=2")
    finished = records(tmp_path / "member_1")
    (tmp_path / "member_1/summary.json").unlink()  # killed between the members' summaries
    before = snapshot(tmp_path / "member_0")
    assert train(tmp_path, "train.ensemble=2") == final
    assert snapshot(tmp_path / "member_0") == before
    assert read(tmp_path / "member_1/summary.json")["status"] == "completed"
    assert records(tmp_path / "member_1") == finished


# --- signalled sweeps (subprocesses) ----------------------------------------------------------

LONG = ["train.steps=100000", "train.eval_every=100000"]  # stopped by a signal long before


def sweep(out, *args: str) -> subprocess.Popen:
    """`python -m train -m` of two tiny runs into `out`, in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={out}",
         *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("launcher, signum", [("parallel", signal.SIGUSR2),
                                              ("local", signal.SIGTERM),
                                              ("basic", signal.SIGTERM)])
def test_a_signalled_sweep_saves_every_run_and_ends_in_order(tmp_path, launcher, signum):
    """The sweep's process group gets the signal (as from SLURM or a terminal): every run
    saves, and the sweep command ends 0 listing them with the command that resumes them. The
    sequential launcher (one run after another in the sweep's process) starts no more runs."""
    proc = sweep(tmp_path, f"hydra/launcher={launcher}", *LONG)
    running = (0,) if launcher == "basic" else (0, 1)
    for job in running:
        wait_for(tmp_path / f"{job}/checkpoints/step_0000002")
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    for job in running:
        summary = read(tmp_path / f"{job}/summary.json")
        assert summary["status"] == "preempted"
        assert f"{tmp_path / str(job)}: preempted at step {summary['steps']} of 100000" in stderr
    if launcher == "basic":
        assert f"{tmp_path / '1'}: not started" in stderr and not (tmp_path / "1").exists()
    assert f"seed=0,1 hydra.sweep.dir={tmp_path} hydra/launcher={launcher}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_sweep_with_a_preempted_run_fails_listing_it_and_its_command_finishes_it(tmp_path):
    """Only run 0's process gets SIGTERM: nobody stopped the sweep, so it does not exit 0
    while run 0 is unfinished; its command, run again, resumes run 0 and skips run 1."""
    args = ["hydra/launcher=parallel", "train.steps=300", "train.eval_every=1000"]
    proc = sweep(tmp_path, *args)
    wait_for(tmp_path / "0/checkpoints/step_0000002")
    os.kill(read(tmp_path / "0/run.json")["pid"], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert read(tmp_path / "0/summary.json")["status"] == "preempted"
    assert read(tmp_path / "1/summary.json")["status"] == "completed"
    assert f"{tmp_path / '0'}: preempted" in stderr and f"{tmp_path / '1'}" not in stderr

    again = sweep(tmp_path, *args)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"{tmp_path / '1'}: completed, skipped" in stdout
    assert read(tmp_path / "0/summary.json")["status"] == "completed"
    assert len(read(tmp_path / "0/run.json")["resumed"]) == 1
