"""The run directory's layout: written by train/, read by analysis/, spelled only here.

    <run>/.hydra/config.yaml, overrides.yaml   the composed config and the command line
    <run>/run.json                             config, git state, host, resumes
    <run>/metrics.jsonl                        one JSON record per logged step
    <run>/summary.json                         how the run ended (written last)
    <run>/checkpoints/step_0000100/            model.safetensors, meta.json (+ state.pt),
                                               manifest.json (written last)
    <run>/member_<i>/                          member i of an ensemble: a run of its own

A checkpoint proves itself: its manifest.json, written last and atomically, holds its step and
the sha256 of each of its files, so a reader can tell a complete, intact checkpoint from a
damaged one (`verify_checkpoint`). Checkpoints written before manifests existed have none and
are read as they are ("no manifest").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

HYDRA_CONFIG = ".hydra/config.yaml"
HYDRA_OVERRIDES = ".hydra/overrides.yaml"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"  # flock'ed while a process trains in the run directory; names its PID and host
CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
META = "meta.json"
STATE = "state.pt"  # optimizer, schedule and RNG state: what a resume needs beyond the weights
MANIFEST = "manifest.json"  # {"step": N, "sha256": {file name: hex digest}}

STEP_DIR = re.compile(r"step_(\d{7,})")
MEMBER_DIR = re.compile(r"member_(\d+)")


# Overrides that change how a run is executed, logged or named, not what it learns: never one of
# its coordinates (the analysis's table columns and series labels, the console's run names).
NOT_COORDINATES = ("hydra", "wandb", "experiment", "ladder", "threads", "device", "compile",
                   "train.overwrite", "train.eval_every", "train.log_every", "train.eval_probes",
                   "checkpoint")


def is_coordinate(key: str) -> bool:
    """Whether an override's key (`optim.lr`, `hydra/launcher`, `+wandb.tags`) can tell one
    run of a sweep from another."""
    key = key.lstrip("+~")
    return not any(key == p or key.startswith((f"{p}.", f"{p}/")) for p in NOT_COORDINATES)


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def step_of(path: Path) -> int | None:
    """The step of a checkpoint directory; None for a directory that is not one."""
    match = STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def member_dir_name(i: int) -> str:
    return f"member_{i}"


def is_member(path: Path) -> bool:
    return MEMBER_DIR.fullmatch(path.name) is not None


def is_ensemble(path: Path) -> bool:
    """An ensemble's directory: its members, below it, are the runs."""
    return any(is_member(p) and p.is_dir() for p in path.glob("member_*"))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` so that a reader, or a kill at any moment, sees the old file or the new one,
    never a part (a temporary file renamed into place; removed again if the write fails)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict | None:
    """A JSON object file of the run directory: None where there is none, ValueError naming it
    where it is damaged (cut, edited, not an object). Each reader decides what damage means."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is damaged ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (not a JSON object)")
    return data


def sha256(path: Path) -> str:
    digest = hashlib.sha256()  # in blocks: hashlib.file_digest needs Python 3.11
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is missing, unreadable or not the one its manifest lists."""


def write_manifest(step_dir: Path, step: int) -> None:
    """The manifest of every file now in `step_dir`: the last write of a checkpoint."""
    files = {p.name: sha256(p) for p in sorted(step_dir.iterdir())
             if p.is_file() and p.name != MANIFEST}
    write_atomic(step_dir / MANIFEST, json.dumps({"step": step, "sha256": files}, indent=1) + "\n")


def read_manifest(step_dir: Path) -> dict | None:
    """`step_dir`'s manifest (None where there is none: a checkpoint of an older version)."""
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not (isinstance(manifest["step"], int) and isinstance(manifest["sha256"], dict)):
            raise ValueError("no step or no sha256 table")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint: its manifest is unreadable "
                                f"({e})") from None
    if manifest["step"] != step_of(step_dir):
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint: the manifest is of step "
                                f"{manifest['step']}, the directory of step {step_of(step_dir)}")
    return manifest


def verify_checkpoint(step_dir: Path) -> set[str] | None:
    """Check each file `step_dir`'s manifest lists against its sha256; the names of the files
    verified, or None for a checkpoint without a manifest. CorruptCheckpoint names the first
    file that is missing, unreadable or changed since it was written."""
    manifest = read_manifest(step_dir)
    if manifest is None:
        return None
    for name, digest in manifest["sha256"].items():
        path = step_dir / name
        try:
            actual = sha256(path)
        except OSError as e:
            raise CorruptCheckpoint(f"{path}: corrupt checkpoint: the file is missing or "
                                    f"unreadable ({e.strerror})") from None
        if actual != digest:
            raise CorruptCheckpoint(
                f"{path}: corrupt checkpoint: its bytes are not those written (sha256 differs "
                f"from {MANIFEST}'s); the file was damaged after it was saved")
    return set(manifest["sha256"])


def remove_from_checkpoint(path: Path) -> None:
    """Delete one file of a checkpoint (state.pt, once a newer one holds the state): the
    manifest drops it first, so a kill in between leaves an unlisted file, never a listed one
    missing."""
    manifest = read_manifest(path.parent)
    if manifest is not None and path.name in manifest["sha256"]:
        del manifest["sha256"][path.name]
        write_atomic(path.parent / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    path.unlink()
