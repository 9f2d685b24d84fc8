"""Checkpoints: which steps keep weights, atomic saves, and the training state that resumes a run.

`<run>/checkpoints/step_0000100/` holds `model.safetensors` (weights and model config, written
by `models.save_model`), `meta.json` (step, tokens, flops, and the metrics.jsonl records logged
since the previous checkpoint, from which a damaged metrics.jsonl is rebuilt), in the newest
checkpoint only unless `checkpoint.keep_state=all`, `state.pt`: optimizer, scheduler, every RNG,
the data generator and the loop's counters, everything a resumed run needs to continue bitwise
as if it had never stopped, and last `manifest.json` (analysis/layout.py: the sha256 of each
file). A checkpoint is written under `checkpoints/.tmp-step_...` and renamed into place, so a
directory named `step_*` is always complete; leftovers of a crash are removed.

state.pt holds only tensors and plain containers, so it loads with `weights_only=True` (no
pickled code runs on load).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from analysis import layout
from models import save_model
from train.config import CheckpointConfig
from train.log import write_error

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def is_checkpoint_step(step: int, total_steps: int, cfg: CheckpointConfig) -> bool:
    """Step 0, the powers of two up to `log_spaced_until`, every `every` steps and the last."""
    log_spaced = 0 < step <= cfg.log_spaced_until and step & (step - 1) == 0
    periodic = cfg.every is not None and step % cfg.every == 0
    return step in (0, total_steps) or log_spaced or periodic


def save(checkpoints: Path, step: int, model: torch.nn.Module, meta: dict,
         state: dict | None, records: tuple | list[dict] = ()) -> Path:
    """Write checkpoints/step_XXXXXXX atomically, its manifest last; with `state`, it is a
    resume point. `records`: the metrics.jsonl records since the previous checkpoint."""
    final = checkpoints / layout.step_dir_name(step)
    tmp = checkpoints / (TMP_PREFIX + final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_model(model, tmp / layout.WEIGHTS, metadata=meta)
        (tmp / layout.META).write_text(json.dumps({**meta, "records": list(records)},
                                                  indent=1) + "\n")
        if state is not None:  # to memory, then one plain write: a full disk is an OSError
            buffer = io.BytesIO()
            torch.save(state, buffer)
            (tmp / layout.STATE).write_bytes(buffer.getbuffer())
        layout.write_manifest(tmp, step)
    except OSError as e:  # a full disk, say: one error naming the checkpoint, not the writers'
        shutil.rmtree(tmp, ignore_errors=True)
        e = write_error(e, f"the checkpoint {final}")
        raise OSError(e.errno, f"{e.strerror}; the checkpoints before it are unchanged") from None
    if final.exists():  # left by an earlier attempt at this run that got further than its state
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prune_states(checkpoints: Path, keep: int) -> None:
    """Delete state.pt everywhere but in step `keep` (checkpoint.keep_state=last)."""
    for path in checkpoints.glob(f"step_*/{layout.STATE}"):
        if path.parent.name != layout.step_dir_name(keep):
            layout.remove_from_checkpoint(path)


def saved_steps(checkpoints: Path) -> list[int]:
    """The steps of every complete checkpoint, ascending, with or without state.pt."""
    return sorted(step for path in checkpoints.glob("step_*")
                  if (step := layout.step_of(path)) is not None)


def resumable_steps(checkpoints: Path) -> list[int]:
    """The steps whose checkpoint holds state.pt, ascending, after removing half-written ones."""
    for tmp in checkpoints.glob(TMP_PREFIX + "*"):
        log.warning("removing %s, an unfinished checkpoint of an interrupted run", tmp)
        shutil.rmtree(tmp)
    return sorted(step for path in checkpoints.glob("step_*")
                  if (step := layout.step_of(path)) is not None and (path / layout.STATE).is_file())


def saved_records(checkpoints: Path, upto: int) -> dict[int, dict]:
    """step -> record: the metrics.jsonl records that the checkpoints up to step `upto` carry in
    meta.json. A checkpoint that fails its manifest is left out with a warning."""
    found = {}
    for step in saved_steps(checkpoints):
        step_dir = checkpoints / layout.step_dir_name(step)
        if step > upto:
            break
        try:
            layout.verify_checkpoint(step_dir)
            meta = json.loads((step_dir / layout.META).read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: its records cannot restore %s", e, layout.METRICS)
            continue
        found |= {record["step"]: record for record in meta.get("records", [])}
    return found


def rng_state(data_generator: torch.Generator) -> dict:
    """Every random number generator a training step can touch, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, float or None): plain values
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),  # model init and dropout draw from the global generator
        "data": data_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data_generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(checkpoint: Path) -> dict:
    """state.pt of `checkpoint`; ValueError naming the file where it does not load. It holds
    only tensors and plain containers, so loading it never needs weights_only=False."""
    path = checkpoint / layout.STATE
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several types, with advice that does not apply here
        raise ValueError(f"{path} is not a readable training state ({type(e).__name__}): "
                         f"truncated, damaged or not written by this code") from None


class Preemption:
    """Context manager that turns SIGTERM, SIGUSR1 and SIGUSR2 (SLURM's and submitit's
    preemption and time-limit signals) into a flag; the loop saves a checkpoint at the next
    step boundary and stops.

    `hand_over()`, called once the run is saved and closed, passes the signal on to the handler
    it replaced when that is a Python function: under hydra-submitit-launcher that is submitit's,
    which requeues the job (when `hydra.launcher.max_num_timeout` > 0) and exits; the requeued
    job runs the same overrides in the same directory and resumes from the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        # Handlers can only be installed from the main thread (not, e.g., a threaded launcher).
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def hand_over(self) -> None:
        handler = self._previous.get(self.signum)
        if self.signum is not None and callable(handler):
            handler(self.signum, None)
