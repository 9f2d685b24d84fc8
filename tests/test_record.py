"""The record cannot mislead: checkpoints prove themselves (a sha256 manifest, verified by resume,
analysis and `python -m analysis.verify`), identical weights give identical bytes, a torn or
emptied record is restored or refused, never silently partial or doubled, and a full disk or a
damaged file is one message naming it. Each fault is injected: flipped bytes, truncation,
kill -9 at a chosen moment (a subprocess whose writer kills it), a small tmpfs.

Runs are the tiny ones of test_train.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_faults import KEEP_ALL, crashed_copy, snapshot, train_finished
from test_train import ROOT, TINY, assert_same_weights, cli, read, records, train, weights

from analysis import layout, verify
from analysis.__main__ import main as analyse
from analysis.runs import score


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_finished(tmp_path_factory.mktemp("finished"))


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def flip(path: Path, at: int = -64, n: int = 16) -> None:
    """Invert `n` bytes of `path` from offset `at` (from the end if negative): in a safetensors
    file, the last tensor's bytes."""
    data = bytearray(path.read_bytes())
    data[at:at + n or None] = bytes(b ^ 0xFF for b in data[at:at + n or None])
    path.write_bytes(bytes(data))


def set_dtype(path: Path, old: bytes, new: bytes) -> None:
    """Rename a dtype in a safetensors header (F32 -> I32: the same size, a different model)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    path.write_bytes(data[:8] + data[8:8 + n].replace(old, new, 1) + data[8 + n:])


# --- deterministic bytes and the manifest -----------------------------------------------------


SAVE = """
import hashlib, sys, torch
from models import GPT, GPTConfig, save_model
torch.manual_seed(0)
model = GPT(GPTConfig(d_model=16, n_layers=1, n_heads=2, d_vocab=12, n_ctx=8))
save_model(model, sys.argv[1], metadata={"step": 4, "tokens": 512, "flops": 9, "note": "x"})
"""


def test_two_processes_saving_the_same_model_write_identical_bytes(tmp_path):
    """safetensors keeps metadata in a hash map whose order differs between processes."""
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in paths:
        assert python(SAVE, str(path)).returncode == 0
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 1


def test_every_checkpoint_holds_a_manifest_of_its_files_and_step(finished_run):
    for step_dir in sorted((finished_run / "checkpoints").iterdir()):
        manifest = read(step_dir / layout.MANIFEST)
        assert manifest["step"] == layout.step_of(step_dir)
        files = {p.name for p in step_dir.iterdir()} - {layout.MANIFEST}
        assert set(manifest["sha256"]) == files >= {layout.WEIGHTS, layout.META}
        for name, digest in manifest["sha256"].items():
            assert hashlib.sha256((step_dir / name).read_bytes()).hexdigest() == digest
        assert layout.verify_checkpoint(step_dir) == files


def test_a_pruned_state_leaves_the_manifest_true(tmp_path):
    train(tmp_path)  # keep_state=last: state.pt of every older checkpoint is deleted
    for step_dir in (tmp_path / "checkpoints").iterdir():
        has_state = step_dir.name == "step_0000012"
        assert (layout.STATE in layout.verify_checkpoint(step_dir)) == has_state


# --- resume verifies ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped tensor bytes", "header dtype F32 -> I32"])
def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back_saying_what_is_lost(
        finished_run, tmp_path, caplog, damage):
    path = tmp_path / "run"
    shutil.copytree(finished_run, path)
    (path / "summary.json").unlink()  # killed after its last checkpoint
    damaged = path / "checkpoints/step_0000012/model.safetensors"
    flip(damaged) if damage.startswith("flipped") else set_dtype(damaged, b'"F32"', b'"I32"')
    with caplog.at_level(logging.WARNING):
        train(path, *KEEP_ALL)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{damaged}: corrupt checkpoint" in messages
    assert "steps 5-12 are lost and trained again" in messages
    assert records(path) == records(finished_run)
    assert_same_weights(weights(path, 12), weights(finished_run, 12))
    assert layout.verify_checkpoint(damaged.parent)  # written again


def test_a_damaged_only_resume_point_is_refused_naming_the_file(tmp_path):
    train(tmp_path, "train.steps=4")
    (tmp_path / "summary.json").unlink()
    damaged = tmp_path / "checkpoints/step_0000004/model.safetensors"
    flip(damaged)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"{damaged}: corrupt checkpoint.*lose steps 0-4"):
        train(tmp_path, "train.steps=4")
    assert snapshot(tmp_path) == before


# --- metrics.jsonl on resume --------------------------------------------------------------------


def test_an_emptied_record_is_rebuilt_from_the_checkpoints(finished_run, tmp_path, caplog):
    path = crashed_copy(finished_run, tmp_path)  # resumes from step 4
    (path / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING, logger="train.log"):
        train(path, *KEEP_ALL)
    assert any("lacked the records of steps 0, 3: restored" in r.getMessage()
               for r in caplog.records)
    assert records(path) == records(finished_run)


def test_a_record_that_cannot_be_rebuilt_is_refused_naming_the_file_and_steps(finished_run,
                                                                              tmp_path):
    """A run whose checkpoints carry no records (written by an older version)."""
    path = crashed_copy(finished_run, tmp_path)
    for step_dir in (path / "checkpoints").iterdir():
        meta = read(step_dir / layout.META)
        (step_dir / layout.META).write_text(json.dumps({k: v for k, v in meta.items()
                                                        if k != "records"}))
        layout.write_manifest(step_dir, layout.step_of(step_dir))
    metrics = path / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # only step 0 left
    before = snapshot(path)
    with pytest.raises(ValueError, match=f"{metrics} lacks the records of steps 3 "):
        train(path, *KEEP_ALL)
    assert snapshot(path) == before


def test_a_torn_last_record_of_the_resumed_checkpoint_is_restored_and_called_lost(
        finished_run, tmp_path, caplog):
    path = tmp_path / "run"
    shutil.copytree(finished_run, path)
    (path / "summary.json").unlink()  # killed while writing the last record
    metrics = path / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])
    with caplog.at_level(logging.WARNING, logger="train.log"):
        train(path, *KEEP_ALL)
    messages = [r.getMessage() for r in caplog.records]
    assert any("written only in part" in m and "is lost" in m for m in messages)
    assert any("records of steps 12: restored" in m for m in messages)
    assert records(path) == records(finished_run)


KILL_AFTER_SAVE = """
import os, runpy, signal, sys
from train import checkpoint
real_save = checkpoint.save
def save(checkpoints, step, *args, **kwargs):
    saved = real_save(checkpoints, step, *args, **kwargs)
    if step == int(os.environ["KILL_AFTER_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return saved
checkpoint.save = save
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__")
"""


def test_a_kill_right_after_checkpoint_0_writes_no_record_twice(finished_run, tmp_path):
    """Killed after step_0000000 is in place, before step 1: the resume starts at step 0."""
    args = [*TINY, *KEEP_ALL, f"hydra.run.dir={tmp_path}"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KILL_AFTER_STEP": "0"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000000"]
    assert cli(*args).returncode == 0
    assert records(tmp_path) == records(finished_run)


# --- damaged bookkeeping files ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run.json", "summary.json"])
def test_a_damaged_bookkeeping_file_is_named_and_the_run_resumes(finished_run, tmp_path, caplog,
                                                                 name):
    path = crashed_copy(finished_run, tmp_path)
    if name == "summary.json":
        (path / name).write_text('{"status": "preem')
    else:
        (path / name).write_text((path / name).read_text()[:100])
    with caplog.at_level(logging.WARNING, logger="train.run_dir"):
        train(path, *KEEP_ALL)
    assert any(f"{path / name} is damaged" in r.getMessage() for r in caplog.records)
    assert records(path) == records(finished_run)
    assert read(path / "summary.json")["status"] == "completed"


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs (a few tiny checkpoints), unmounted afterwards; skipped where mounting
    is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_says_no_space_left_naming_the_checkpoint_and_a_resume_is_exact(
        small_disk, tmp_path):
    every = ["checkpoint.every=1"]
    reference = tmp_path / "reference"
    train(reference, *every)
    args = [*TINY, *every, f"hydra.run.dir={small_disk / 'run'}"]
    full = cli(*args)
    assert full.returncode != 0
    assert "no space left on the device" in full.stderr and "inline_container" not in full.stderr
    failed = read(small_disk / "run/summary.json")
    assert failed["status"] == "failed" and "cannot write the checkpoint" in failed["error"]
    newest = layout.step_dir_name(failed["steps"])
    assert f"{small_disk / 'run/checkpoints' / newest}: no space left" in full.stderr
    saved = sorted((small_disk / "run/checkpoints").glob("step_*"))
    assert saved and all(layout.verify_checkpoint(p) is not None for p in saved)
    assert not list((small_disk / "run/checkpoints").glob(".tmp-*"))

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert cli(*args).returncode == 0
    assert records(small_disk / "run") == records(reference)
    assert_same_weights(weights(small_disk / "run", 12), weights(reference, 12))


# --- analysis -----------------------------------------------------------------------------------


@pytest.fixture
def analysed(finished_run, tmp_path):
    """A copy of the finished run (with the `.hydra/` the run writes), for analysis."""
    path = tmp_path / "run"
    shutil.copytree(finished_run, path)
    return path


def test_analysis_skips_a_corrupt_checkpoint_naming_it_in_its_log_and_report(analysed, caplog):
    damaged = analysed / "checkpoints/step_0000004/model.safetensors"
    flip(damaged)
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        assert analyse([str(analysed)]) == 0
    assert any(f"{damaged}: corrupt checkpoint" in r.getMessage() for r in caplog.records)
    table = pd.read_csv(analysed / "analysis/scores.csv")
    assert sorted(set(table["step"])) == [0, 1, 2, 12]
    report = (analysed / "analysis/report.md").read_text()
    assert "## Skipped checkpoints" in report and "step 4: CorruptCheckpoint" in report


def test_checkpoints_without_a_manifest_are_still_read(analysed, tmp_path, capsys):
    for manifest in analysed.glob("checkpoints/*/manifest.json"):
        manifest.unlink()
    assert sorted(set(score(analysed, out=tmp_path / "out")["step"])) == [0, 1, 2, 4, 12]
    assert verify.main([str(analysed)]) == 0
    assert capsys.readouterr().out.startswith("no manifest")


@pytest.mark.parametrize("damage", ["empty", "cut"])
def test_a_damaged_scores_table_is_rebuilt_naming_it(analysed, tmp_path, caplog, damage):
    out = tmp_path / "out"
    full = score(analysed, out=out)
    csv = out / "scores.csv"
    csv.write_text("" if damage == "empty" else csv.read_text()[:-30])
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        rebuilt = score(analysed, out=out)
    assert any(f"{csv} is damaged" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(rebuilt, full)


KILL_WHILE_WRITING = """
import io, os, runpy, signal, sys
real_open = io.open
class Torn:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def __iter__(self):
        return iter(self.f)
def killing_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if "w" in mode and os.path.basename(str(file)).startswith(os.environ["KILL_WRITING"]):
        return Torn(f)
    return f
io.open = __builtins__.open = killing_open
sys.argv = ["analysis", *sys.argv[1:]]
runpy.run_module("analysis", run_name="__main__")
"""


@pytest.mark.parametrize("name", ["scores.csv", "summary.csv"])
def test_a_kill_while_analysis_writes_a_table_leaves_the_one_before(analysed, tmp_path, name):
    out = tmp_path / "out"
    assert analyse([str(analysed), "--out", str(out), "--steps", "0,4"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(analysed), "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KILL_WRITING": name})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after = (out / name).read_bytes()
    assert after == before[name]  # not a part of the new one
    assert analyse([str(analysed), "--out", str(out)]) == 0
    assert sorted(set(pd.read_csv(out / "scores.csv")["step"])) == [0, 1, 2, 4, 12]


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda:0"], "--device cuda:0: no CUDA device is available here"),
    (["--device", "gpu"], "--device gpu: not a device"),
    (["--out", "FILE"], "--out FILE: a file; --out names the output directory"),
])
def test_bad_analysis_arguments_are_one_line_naming_them(analysed, tmp_path, caplog, args,
                                                         message):
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    with caplog.at_level(logging.ERROR, logger="analysis"):
        assert analyse([str(analysed), *args]) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith(message.replace("FILE", str(tmp_path / "FILE")))
    assert "\n" not in error and not (analysed / "analysis").exists()


# --- python -m analysis.verify ------------------------------------------------------------------


def duplicate_weights(run: Path) -> str:
    """Step 12's weights served as step 4 (the manifest rewritten to match): the Pythia case."""
    step_dir = run / "checkpoints/step_0000004"
    shutil.copy(run / "checkpoints/step_0000012/model.safetensors", step_dir)
    layout.write_manifest(step_dir, 4)
    return "the checkpoints of steps 4, 12 hold identical weights"


def record_twice(run: Path) -> str:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], *lines]) + "\n")
    return "step 0 is recorded twice"


def relabel(run: Path) -> str:
    hydra = run / ".hydra/config.yaml"
    config = yaml.safe_load(hydra.read_text())
    config["optim"]["lr"] = -1
    hydra.write_text(yaml.safe_dump(config))
    return ".hydra/config.yaml differs from run.json's config in optim.lr=-1"


def change_record(run: Path) -> str:
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"step": 3,', '"step": 3, "x": 1,'))
    return "metrics.jsonl's record of step 3 differs from checkpoint 4's"


def corrupt(run: Path) -> str:
    flip(run / "checkpoints/step_0000002/model.safetensors")
    return f"{run}/checkpoints/step_0000002/model.safetensors: corrupt checkpoint"


@pytest.mark.parametrize("damage", [corrupt, duplicate_weights, record_twice, relabel,
                                    change_record])
def test_verify_names_each_kind_of_damage_and_fails(analysed, capsys, damage):
    assert verify.main([str(analysed)]) == 0
    assert capsys.readouterr().out.startswith("ok ")
    problem = damage(analysed)
    assert verify.main([str(analysed)]) == 1
    (line, total) = capsys.readouterr().out.splitlines()
    assert line.startswith("FAILED") and problem in line, line
    assert total == "1 runs, 1 with problems"


def test_verify_is_a_command_that_does_not_import_train(analysed):
    (analysed.parent / "other").mkdir()
    shutil.copytree(analysed, analysed.parent / "other/run")
    flip(analysed / "checkpoints/step_0000004/meta.json", at=3, n=1)
    result = python("import runpy, sys; sys.argv = ['verify', sys.argv[1]]\n"
                    "try:\n    runpy.run_module('analysis.verify', run_name='__main__')\n"
                    "finally:\n    assert 'train' not in sys.modules", str(analysed.parent))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok ") and lines[0].split()[1] == "other/run:"
    assert lines[1].startswith("FAILED") and lines[1].split()[1] == "run:"
    assert "step_0000004/meta.json: corrupt checkpoint" in lines[1]


# --- export -------------------------------------------------------------------------------------


def test_export_without_the_interop_extra_names_it(analysed, tmp_path):
    result = python("import sys; sys.modules['transformers'] = None\n"
                    "from analysis.export import main; main(sys.argv[1:])",
                    str(analysed), "--to", "hf", str(tmp_path / "hf"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: transformers is not installed; export needs the "
                                      "interop extra: pip install -e '.[interop]'")
