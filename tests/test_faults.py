"""Faults and bad input: nothing completed is lost and no record misleads. Bad configs are refused
before the run directory is touched; an unloadable checkpoint is skipped by analysis.

Runs are the tiny ones of test_train.py.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train import (
    RESUMABLE,
    ROOT,
    TINY,
    assert_same_weights,
    cli,
    config,
    preempt,
    read,
    records,
    train,
    wait_for,
    weights,
)

from analysis import layout
from analysis.runs import score
from train.log import resume_metrics
from train.loop import run


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below `root` and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- bad configs ------------------------------------------------------------------------------


KEEP_ALL = ["checkpoint.keep_state=all"]


def train_finished(path: Path) -> Path:
    """A completed run that kept state.pt in every checkpoint."""
    train(path, *KEEP_ALL)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_finished(tmp_path_factory.mktemp("finished"))


@pytest.mark.parametrize("overrides, message", [
    (["model.n_heads=5"], "model.n_heads=5 must divide model.d_model=16"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["optim.eps=-1"], "optim.eps=-1"),
    (["optim.lr=inf"], "optim.lr=inf"),
    (["optim.weight_decay=nan"], "optim.weight_decay=nan"),
    (["train.ensemble=2", "train.ensemble_lr=[1e-3,inf]"], "train.ensemble_lr"),
    (["task=modular", "task.p=11", "task.train_fraction=1"], "task.train_fraction=1"),
    (["task=modular", "task.p=11", "task.train_fraction=0.995"], "held-out"),
])
def test_a_bad_config_with_overwrite_is_refused_before_anything_is_deleted(
        finished_run, overrides, message):
    before = snapshot(finished_run)
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        train(finished_run, "train.overwrite=true", *overrides)
    assert snapshot(finished_run) == before


# --- analysis ---------------------------------------------------------------------------------


def test_analysis_skips_unloadable_checkpoints_with_a_warning(finished_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # A config asking for a model far too large to allocate, and a file that is not safetensors.
    good = run / "checkpoints/step_0000004/model.safetensors"
    huge = run / "checkpoints/step_0000002/model.safetensors"
    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
    config = json.loads(header["config"])
    header["config"] = json.dumps({**config, "d_model": 2**20, "d_mlp": 2**22})
    save_file(load_file(good), huge, metadata=header)
    layout.write_manifest(huge.parent, 2)  # intact files: only building the model fails
    (run / "checkpoints/step_0000001/model.safetensors").write_bytes(b"not a checkpoint")

    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        table = score(run, out=tmp_path / "analysis")
    assert sorted(set(table["step"])) == [0, 4, 12]
    skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(skipped) == 2
    assert any("step_0000002" in m and "allocate" in m for m in skipped)
    assert any("step_0000001" in m for m in skipped)


# --- wandb ------------------------------------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's `.wandb` file (LevelDB log format: 32 KiB
    blocks of chunks, each with a 7-byte header: checksum, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, pos = path.read_bytes(), [], b"", 7  # after the file header
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_fragments(run: Path) -> list[list]:
    """The records of each offline run below `run`, oldest first, once wandb's service has
    written everything (as it does when the training process exits)."""
    import wandb

    wandb.teardown()
    return [wandb_records(next(d.glob("*.wandb"))) for d in sorted(run.glob("wandb/offline-run-*"))]


def history_steps(records: list) -> list[int]:
    return [r.history.step.num for r in records if r.HasField("history")]


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def summary_of(records: list) -> dict:
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary |= {item.key: json.loads(item.value_json) for item in r.summary.update}
    return summary


def test_the_wandb_summary_holds_sizes_compute_and_sweep_coordinates(tmp_path, wandb_home):
    run_config = config("wandb.mode=offline", "optim.lr=0.003")
    run(run_config, tmp_path, overrides=["optim.lr=0.003", "task=addition"])
    (records,) = wandb_fragments(tmp_path)
    summary, expected = summary_of(records), read(tmp_path / "summary.json")
    for key in ("status", "params", "params_non_embedding", "flops_per_token", "flops",
                "tokens", "steps"):
        assert summary[key] == expected[key], key
    assert summary["sweep/optim.lr"] == 0.003 and summary["sweep/task"] == "addition"
    (exit_record,) = [r.exit for r in records if r.HasField("exit")]
    assert exit_record.exit_code == 0


@pytest.mark.slow
def test_a_preempted_run_is_marked_preempted_in_wandb(tmp_path, wandb_home):
    preempt(tmp_path, "wandb.mode=offline")
    assert read(tmp_path / "summary.json")["status"] == "preempted"
    (records,) = wandb_fragments(tmp_path)
    assert any(r.HasField("preempting") for r in records)
    (exit_record,) = [r.exit for r in records if r.HasField("exit")]
    assert exit_record.exit_code != 0  # wandb: preempting + nonzero exit = preempted
    assert summary_of(records)["status"] == "preempted"


@pytest.mark.slow
def test_online_without_an_answering_server_falls_back_to_offline_within_seconds(
        tmp_path, wandb_home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials that no server will check
    started = time.monotonic()
    train(tmp_path, "wandb.mode=online")
    assert time.monotonic() - started < 40  # wandb's own wait is 90 s
    (records,) = wandb_fragments(tmp_path)
    assert history_steps(records) == [0, 3, 6, 9, 12]


# --- metrics.jsonl ----------------------------------------------------------------------------


def test_a_kill_while_metrics_are_truncated_leaves_the_old_file(finished_run, tmp_path,
                                                                  monkeypatch):
    path = tmp_path / "metrics.jsonl"
    shutil.copy(finished_run / "metrics.jsonl", path)
    before = path.read_bytes()
    real_write = Path.write_text

    def killed_half_way(self, data, *args, **kwargs):
        real_write(self, data[:len(data) // 2], *args, **kwargs)
        raise SystemExit("killed")

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(SystemExit):
        resume_metrics(path, 4, [], dict)
    assert path.read_bytes() == before


def crashed_copy(finished_run: Path, tmp_path: Path) -> Path:
    """The finished run as a crash after step 12 was logged, before its checkpoint was complete:
    it resumes from step 4."""
    path = tmp_path / "crashed"
    shutil.copytree(finished_run, path)
    (path / "summary.json").unlink()
    shutil.rmtree(path / "checkpoints/step_0000012")
    return path


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(
        finished_run, tmp_path, caplog):
    path = crashed_copy(finished_run, tmp_path)
    with (path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "tok')
    with caplog.at_level(logging.WARNING, logger="train.log"):
        train(path, *KEEP_ALL)
    assert any(str(path / "metrics.jsonl") in r.getMessage() and "last line" in r.getMessage()
               for r in caplog.records)
    assert records(path) == records(finished_run)


def test_an_unreadable_metrics_line_inside_the_file_is_an_error_naming_it(finished_run,
                                                                         tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}, line 2"):
        resume_metrics(path, 4, [], dict)


# --- damaged training state -------------------------------------------------------------------


def test_an_unreadable_newest_state_falls_back_to_an_older_checkpoint(finished_run, tmp_path,
                                                                      caplog):
    path = tmp_path / "crashed"
    shutil.copytree(finished_run, path)
    (path / "summary.json").unlink()
    state = path / "checkpoints/step_0000012/state.pt"
    state.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="train.run_dir"):
        train(path, *KEEP_ALL)
    assert any(str(state) in r.getMessage() for r in caplog.records)
    assert records(path) == records(finished_run)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_run_without_a_loadable_state_is_refused_naming_the_file(tmp_path, damage):
    """keep_state=last: the newest state.pt is the only one; without it nothing can resume,
    and a fresh start would silently replace the checkpoints."""
    train(tmp_path, "train.steps=4")
    (tmp_path / "summary.json").unlink()  # as if killed after the last checkpoint
    state = tmp_path / "checkpoints/step_0000004/state.pt"
    if damage == "missing":
        state.unlink()
    else:
        state.write_bytes(b"\x80\x02garbage")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"{state}.*lose steps 0-4") as refusal:
        train(tmp_path, "train.steps=4")
    assert "weights_only" not in str(refusal.value)
    assert snapshot(tmp_path) == before


# --- two processes, one directory -------------------------------------------------------------


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    args = [*TINY, "train.steps=100000", "train.eval_every=100000", f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(tmp_path / "checkpoints/step_0000002")
        second = cli(*args)
    finally:
        first.kill()
        first.wait()
    assert second.returncode != 0
    assert f"{tmp_path} is in use by pid {first.pid} on host" in second.stderr


# --- refused resumes --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ended", ["killed", "completed"])
def test_a_refused_rerun_leaves_the_recorded_config(tmp_path, ended):
    """.hydra/ is written once a run is accepted, so a refused re-run leaves the run's."""
    args = [*TINY, "train.steps=4", f"hydra.run.dir={tmp_path}"]
    assert cli(*args).returncode == 0
    if ended == "killed":
        (tmp_path / "summary.json").unlink()
    recorded = read(tmp_path / "run.json")
    result = cli(*args, "model.d_model=32")
    assert result.returncode != 0
    assert ("different config" if ended == "killed" else "completed run") in result.stderr
    config = OmegaConf.to_container(OmegaConf.load(tmp_path / ".hydra/config.yaml"))
    assert config == recorded["config"] and config["model"]["d_model"] == 16
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / ".hydra/overrides.yaml")) == (
        recorded["overrides"])


# --- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_is_one_error_naming_the_checkpoint_and_the_run_is_marked_failed(
        tmp_path, monkeypatch):
    real_write = Path.write_bytes

    def full_after_step_2(self, data):
        if "step_0000004" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_step_2)
    checkpoint = tmp_path / "checkpoints/step_0000004"
    with pytest.raises(OSError, match=f"cannot write the checkpoint {checkpoint}: no space") as e:
        train(tmp_path)
    assert e.value.errno == errno.ENOSPC and e.value.__cause__ is None
    summary = read(tmp_path / "summary.json")
    assert summary["status"] == "failed" and str(checkpoint) in summary["error"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000000", "step_0000001", "step_0000002"]


# --- random kills -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("members", [1, 2])
def test_random_kill_9s_then_a_resume_end_as_an_uninterrupted_run(tmp_path, members):
    """Six kill -9s at random points of a run checkpointing every step (inside a checkpoint
    write or between two), each attempt resuming the last; the run that finally completes has
    the records and weights of one never interrupted."""
    steps = ["train.steps=120", "checkpoint.every=1", f"train.ensemble={members}"]
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    train(reference, *RESUMABLE, *steps)
    runs = [""] if members == 1 else [f"member_{i}" for i in range(members)]
    args = [*TINY, *RESUMABLE, *steps, f"hydra.run.dir={faulty}"]
    rng = random.Random(members)
    for when in sorted(rng.sample(range(2, 110), 6)):
        proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(faulty / runs[-1] / f"checkpoints/step_{when:07d}")
        time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, stderr

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    for name in runs:
        assert read(faulty / name / "summary.json")["status"] == "completed"
        assert records(faulty / name) == records(reference / name)
        assert_same_weights(weights(faulty / name, 120), weights(reference / name, 120))


@pytest.mark.slow
def test_a_requeued_offline_run_is_one_wandb_run_logging_each_step_once(tmp_path, wandb_home):
    """Each attempt writes an offline-run-* fragment under the run's one id (run.json), so
    `wandb sync` of the fragments, oldest first, resumes one run; no step is logged twice."""
    args = preempt(tmp_path, "wandb.mode=offline")
    assert cli(*args).returncode == 0
    fragments = wandb_fragments(tmp_path)
    assert len(fragments) == 2
    ids = {r.run.run_id for fragment in fragments for r in fragment if r.HasField("run")}
    assert ids == {read(tmp_path / "run.json")["wandb_id"]}
    steps = [step for fragment in fragments for step in history_steps(fragment)]
    assert steps == [row["step"] for row in records(tmp_path)]
