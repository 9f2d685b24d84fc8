"""The run directory's layout: written by train/, read by analysis/, spelled only here.

    <run>/.hydra/config.yaml, overrides.yaml   the composed config and the command line
    <run>/run.json                             config, git state, host, resumes
    <run>/metrics.jsonl                        one JSON record per logged step
    <run>/summary.json                         how the run ended (written last)
    <run>/checkpoints/step_0000100/            model.safetensors, meta.json (+ state.pt)
    <run>/member_<i>/                          member i of an ensemble: a run of its own
"""

from __future__ import annotations

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
