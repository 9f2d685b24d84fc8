"""The run directory's bookkeeping: run.json, summary.json, resume and overwrite rules.

Re-running a command in the same directory resumes from the newest checkpoint holding
state.pt, provided the config is the same (only `wandb.*`, `compile`, `threads` and
`train.overwrite` may change); a directory holding a completed run of the same config is left
as it is (the command is done), one of another config is refused; `train.overwrite=true` starts
either over. A refusal writes nothing: `.hydra/` and the lock's holder are written by `begin`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from analysis import layout
from train import checkpoint
from train.config import Config
from train.log import is_log_step, resume_metrics, spans

if TYPE_CHECKING:
    from train.state import Progress

log = logging.getLogger(__name__)

_damaged: set[Path] = set()  # the damaged JSON files this process has reported

# Keys a resumed run may change: they do not touch what is computed.
MAY_CHANGE_ON_RESUME = ("wandb.", "compile", "threads", "train.overwrite")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict:
    """A JSON file of the run directory, {} where there is none. A damaged one (cut or edited)
    reads as none, with a warning naming it: the run writes it again, and resumes where its
    checkpoints allow."""
    try:
        return layout.read_json(path) or {}
    except ValueError as e:
        if path not in _damaged:  # said once, however often it is read
            _damaged.add(path)
            log.warning("%s; read as absent, and written again by this run", e)
        return {}


def write_json(path: Path, data: dict) -> None:
    layout.write_atomic(path, json.dumps(data, indent=1) + "\n")


def git_state() -> dict | None:
    """The commit of the code that trains, and whether the checkout has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_changes(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key that differs, except those allowed to change."""
    old, new = flatten(old), flatten(new)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not key.startswith(MAY_CHANGE_ON_RESUME)
    ]


def write_hydra_files(path: Path, cfg: Config, overrides: list[str]) -> None:
    """`.hydra/config.yaml` and `overrides.yaml` (what Hydra would write before the run starts,
    written here once the run is accepted: conf/config.yaml sets hydra.output_subdir=null)."""
    (path / layout.HYDRA_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path / layout.HYDRA_CONFIG)
    OmegaConf.save(OmegaConf.create(overrides), path / layout.HYDRA_OVERRIDES)


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a run ended, for summary.json: its status, the error that stopped it, and whether
    that error was divergence (an ensemble resumes without a member that diverged)."""

    status: str  # completed, preempted or failed
    error: str | None = None
    diverged: bool = False


class RunDir:
    """One run's directory, from the check that it may be trained in to its summary: `open`
    checks it (and takes its lock), `begin` writes what a live run owns, `finish` writes how it
    ended; `unlock` releases it. Refused before `begin`, the directory is as it was."""

    def __init__(self, path: Path, cfg: Config, overrides: list[str], group: str | None):
        self.path, self.checkpoints = path, path / layout.CHECKPOINTS
        self.lock_file = None  # open and flock'ed while this process holds the directory
        self.cfg, self.overrides, self.group = cfg, overrides, group
        self.completed = False  # a completed run of this config, left as it is
        self.info: dict = {}
        self.states: dict[int, dict] = {}  # the newest loadable state.pt, read by `open`
        self.last_record: dict = {}  # the newest record in metrics.jsonl when training starts

    def open(self) -> list[int]:
        """Check the directory (wiping it for train.overwrite=true); return the steps it can
        resume from (ascending), none for a completed run. Writes nothing else: `begin` does,
        once the model has loaded."""
        if not self.cfg.train.overwrite and self.finished():
            return []
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        try:
            return self.check()
        except BaseException:
            self.unlock()
            raise

    def finished(self) -> bool:
        """Whether the directory holds a completed run of this config: running its command
        again leaves it as it is. A completed run of another config is refused."""
        summary = read_json(self.path / layout.SUMMARY)
        if summary.get("status") != "completed":
            return False
        previous = read_json(self.path / layout.RUN_INFO)
        changes = (config_changes(previous["config"], dataclasses.asdict(self.cfg)) if previous
                   else ["run.json is missing"])
        if changes:
            raise FileExistsError(
                f"{self.path} holds a completed run of another config ({'; '.join(changes)}); "
                f"pass train.overwrite=true to train it again from scratch with this one, or "
                f"choose another directory (hydra.run.dir=...)")
        print(f"{self.path}: completed, skipped (train.overwrite=true trains it again)",
              flush=True)
        self.completed = True
        self.last_record = {"step": summary["steps"], **summary["metrics"]}
        return True

    def check(self) -> list[int]:
        if self.cfg.train.overwrite:
            for name in (layout.CHECKPOINTS, "wandb"):
                shutil.rmtree(self.path / name, ignore_errors=True)
            for name in (layout.METRICS, layout.SUMMARY, layout.RUN_INFO):
                (self.path / name).unlink(missing_ok=True)
        resumable = self.loadable(checkpoint.resumable_steps(self.checkpoints))
        previous = read_json(self.path / layout.RUN_INFO)
        if resumable and previous:
            if changes := config_changes(previous["config"], dataclasses.asdict(self.cfg)):
                raise ValueError(
                    f"{self.path} holds a run with a different config, which a resumed run must "
                    f"keep: {'; '.join(changes)}. Use the same settings to resume it, pass "
                    f"train.overwrite=true to start it over, or choose another directory")
            self.info = previous
        return resumable

    def lock(self) -> None:
        """Hold the directory for this process (released by `unlock` or when it exits): two
        processes training in one directory would interleave their records and checkpoints.
        `begin` writes the holder into the file, so that a refused run leaves it as it was."""
        if self.lock_file is not None:
            return
        f = (self.path / layout.LOCK).open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not yet written its PID"
            f.close()
            raise RuntimeError(f"{self.path} is in use by {holder}; wait for it to end, or "
                               f"choose another directory") from None
        self.lock_file = f

    def unlock(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None

    def loadable(self, steps: list[int]) -> list[int]:
        """`steps` up to the newest whose checkpoint passes its manifest and whose state.pt
        loads (kept for `load_state`): a damaged newer one is skipped with a warning naming the
        file, and the steps after the resumed one are lost and trained again (bitwise as
        before). A directory whose checkpoints hold no loadable state is refused: starting
        over would silently discard them."""
        problem = None
        while steps:
            step_dir = self.checkpoints / layout.step_dir_name(steps[-1])
            try:
                verified = layout.verify_checkpoint(step_dir)
                if verified is not None and layout.STATE not in verified:
                    raise ValueError(f"{step_dir / layout.STATE} is not in the checkpoint's "
                                     f"{layout.MANIFEST}: an unfinished removal")
                self.states = {steps[-1]: checkpoint.load_state(step_dir)}
                break
            except ValueError as e:
                problem = problem or str(e)
                log.warning("%s; resuming from an older checkpoint", e)
                steps = steps[:-1]
        saved = checkpoint.saved_steps(self.checkpoints)
        if saved and not steps and not self.cfg.train.overwrite:
            newest = self.checkpoints / layout.step_dir_name(saved[-1]) / layout.STATE
            raise ValueError(
                f"{self.path} cannot resume: no checkpoint holds a loadable state.pt (the newest: "
                f"{problem or f'{newest} is missing'}). Starting over would lose steps 0-"
                f"{saved[-1]} and their checkpoints; restore the file, pass train.overwrite=true "
                f"to start over, or choose another directory")
        if saved and steps and saved[-1] > steps[-1]:
            lost = [s for s in saved if s > steps[-1]]
            log.warning("%s: resuming from step %d; the checkpoints of steps %s have no usable "
                        "state: steps %d-%d are lost and trained again, and their records in %s "
                        "are dropped", self.path, steps[-1], spans(lost), steps[-1] + 1,
                        saved[-1], layout.METRICS)
        return steps

    def load_state(self, step: int) -> dict:
        """The training state of checkpoint `step` (loaded once)."""
        if step not in self.states:
            self.states = {step: checkpoint.load_state(
                self.checkpoints / layout.step_dir_name(step))}
        return self.states.pop(step)

    def begin(self, resume: Path | None) -> None:
        """Write the lock's holder, `.hydra/` and run.json, drop the metrics recorded after the
        resumed checkpoint and the summary of the attempt before: the run is live again."""
        lock = self.lock_file
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        lock.flush()
        write_hydra_files(self.path, self.cfg, self.overrides)
        if self.info:
            self.info["resumed"].append({"at": now(), "step": layout.step_of(resume),
                                         "git": git_state(), "host": socket.gethostname(),
                                         "pid": os.getpid()})
            log.info("resuming %s from %s", self.path, resume.name)
        else:
            self.info = {"config": dataclasses.asdict(self.cfg), "overrides": self.overrides,
                         "group": self.group, "git": git_state(), "host": socket.gethostname(),
                         "pid": os.getpid(), "started": now(), "resumed": [],
                         "wandb_id": uuid.uuid4().hex[:12]}
        step = None if resume is None else layout.step_of(resume)
        expected = [] if step is None else [
            s for s in range(step + 1) if is_log_step(s, self.cfg.train.steps, self.cfg.train)]
        self.last_record = resume_metrics(
            self.path / layout.METRICS, step, expected,
            lambda: checkpoint.saved_records(self.checkpoints, step))
        write_json(self.path / layout.RUN_INFO, self.info)
        (self.path / layout.SUMMARY).unlink(missing_ok=True)

    def finish(self, model, progress: Progress, last: dict, ending: Ending) -> dict:
        """Write summary.json: sizes, compute, the last recorded metrics and how the run ended."""
        summary = {
            "status": ending.status,
            "error": ending.error,
            "diverged": ending.diverged,
            "steps": progress.step,
            "total_steps": progress.total,
            "tokens": progress.tokens,
            "params": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "flops_per_token": model.flops_per_token(),
            "flops": model.flops_per_token() * progress.tokens,
            "wall_time_s": progress.elapsed(),
            "metrics": {key: value for key, value in last.items() if "/" in key},
            "finished": now(),
        }
        try:
            write_json(self.path / layout.SUMMARY, summary)
        except OSError as e:  # a full disk: the error that stopped the run is the one to see
            log.error("cannot write %s: %s", self.path / layout.SUMMARY, e)
        return summary
