"""A run's training state and bookkeeping, one set of lines for a plain run and for every member
of an ensemble (a plain run is the one-run case).

`open_runs` seeds each run, builds or resumes its model, optimizer, schedule, data generator and
statistics, and opens its directory and logger; `RunState.record`, `save` and `finish` write its
metrics.jsonl records, checkpoints and summary.json. What computes a step (train/loop.py's
update of one model, or train/ensemble.py's batched update of N, both built from train/step.py)
is the only part that differs.

An ensemble resumes from the newest step at which every member holds state.pt: its members save
one after another, so a kill between two writes leaves them a step apart, and the older state is
kept (keep_state=last prunes only once every member has saved). A member whose summary says it
diverged while the others went further stays stopped, with a warning; any other member resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from analysis import layout
from models import GPT, GPTConfig, load_model
from train import checkpoint
from train.config import Config
from train.log import RunLogger
from train.run_dir import Ending, RunDir, read_json
from train.step import adamw, lr_factor

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


class TrainStats:
    """Sums of the training loss and gradient norm since the last record, kept on the device,
    and the first step whose loss or gradient norm was not finite (-1: none yet)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.count = self.step = 0
        self.first_bad = torch.full((), -1, device=device)

    def add(self, step: int, loss: Tensor, grad_norm: Tensor) -> None:
        self.loss += loss.detach().float()
        self.grad_norm += grad_norm.float()
        self.count, self.step = self.count + 1, step
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.first_bad = torch.where(finite | (self.first_bad >= 0), self.first_bad, step)

    def check(self, model: torch.nn.Module | None = None) -> None:
        """Raise Diverged naming the step (a host sync); with `model`, check its weights too."""
        if (bad := int(self.first_bad)) >= 0:
            raise Diverged(f"train/loss or train/grad_norm is not finite at step {bad}")
        if model is not None and not all(p.isfinite().all() for p in model.parameters()):
            raise Diverged(f"the weights are not finite after step {self.step}")

    def pop(self) -> dict[str, float]:
        """The means since the last call, then reset."""
        if not self.count:
            return {}
        means = {"train/loss": self.loss.item() / self.count,
                 "train/grad_norm": self.grad_norm.item() / self.count}
        self.loss.zero_()
        self.grad_norm.zero_()
        self.count = 0
        return means

    def state_dict(self) -> dict:
        return {"loss": self.loss, "grad_norm": self.grad_norm, "count": self.count,
                "step": self.step, "first_bad": self.first_bad}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value.to(self.loss.device) if torch.is_tensor(value) else value)


@dataclasses.dataclass
class Progress:
    """Where training is: updates done, training tokens seen per run, and the wall clock."""

    total: int  # train.steps
    step: int = 0
    tokens: int = 0
    t0: float = 0.0  # time.perf_counter() at step 0 of the first attempt
    resumed: bool = False  # from a checkpoint, whose step's record is written already

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def meta(self, flops_per_token: int) -> dict:
        return {"step": self.step, "tokens": self.tokens, "flops": flops_per_token * self.tokens}


@dataclasses.dataclass
class RunState:
    """One run: its config, directory, model, optimizer (torch's AdamW: the plain loop steps
    it; for an ensemble member it holds the settings and the state.pt format), schedule, data
    generator, statistics and logger."""

    cfg: Config
    dir: RunDir
    model: GPT
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    stats: TrainStats
    logger: RunLogger | None = None
    last: dict = dataclasses.field(default_factory=dict)  # the newest record
    unsaved: list = dataclasses.field(default_factory=list)  # records since the last checkpoint
    alive: bool = True
    error: str | None = None

    def record(self, progress: Progress, metrics: dict[str, float]) -> None:
        row = {**progress.meta(self.model.flops_per_token()), "elapsed_s": progress.elapsed(),
               **self.stats.pop()}
        if progress.step > 0:  # the lr of the last update
            row["train/lr"] = self.cfg.optim.lr * lr_factor(progress.step - 1, self.cfg.optim,
                                                            progress.total)
        self.last = {**row, **metrics}
        self.logger.log(self.last)
        self.unsaved.append(self.last)

    def save(self, progress: Progress, optimizer_state: dict) -> None:
        """Checkpoint weights and the full training state (pruning is the caller's, once every
        run of the step has saved)."""
        state = {"step": progress.step, "tokens": progress.tokens,
                 "elapsed_s": progress.elapsed(), "optimizer": optimizer_state,
                 "scheduler": self.scheduler.state_dict(),
                 "rng": checkpoint.rng_state(self.generator), "stats": self.stats.state_dict()}
        checkpoint.save(self.dir.checkpoints, progress.step, self.model,
                        progress.meta(self.model.flops_per_token()), state, self.unsaved)
        self.unsaved = []

    def finish(self, progress: Progress, status: str, diverged: Diverged | None = None) -> None:
        """Write summary.json and close the logger; `diverged`: the run stopped on it (the
        others, if any, go on)."""
        if diverged is not None:
            newest = checkpoint.resumable_steps(self.dir.checkpoints)
            saved = layout.step_dir_name(newest[-1]) if newest else "none"
            self.error = (f"{diverged} (optim.lr={self.cfg.optim.lr}); stopped. The newest "
                          f"checkpoint, {saved}, was saved before it.")
        summary = self.dir.finish(self.model, progress, self.last,
                                  Ending(status, self.error, diverged is not None))
        self.logger.close(summary, ok=status != "failed")
        self.dir.unlock()
        self.alive = False


def seed_everything(seed: int) -> None:
    for rng in (torch.manual_seed, random.seed, np.random.seed):
        rng(seed)


def common_resume_step(dirs: list[RunDir], held: list[list[int]]) -> tuple[int | None, list]:
    """The step to resume every run from (None: a fresh start) and which runs stay stopped:
    those completed, and those whose summary says they diverged while another run got further."""
    newest = [d.last_record["step"] if d.completed else max(h, default=-1)
              for d, h in zip(dirs, held, strict=True)]
    diverged = [not d.completed and read_json(d.path / layout.SUMMARY).get("diverged", False)
                and n < max(newest) for d, n in zip(dirs, newest, strict=True)]
    stopped = [d.completed or stop for d, stop in zip(dirs, diverged, strict=True)]
    live = [set(h) for h, stop in zip(held, stopped, strict=True) if not stop]
    common = set.intersection(*live) if live else set()
    if any(live) and not common:
        raise ValueError(
            f"{dirs[0].path.parent}: the runs hold no checkpoint with state.pt at a step they all "
            f"reached (steps with state: {[sorted(h) for h in held]}); pass "
            f"train.overwrite=true to start over")
    for d, stop, n in zip(dirs, diverged, newest, strict=True):
        if stop:
            log.warning("%s diverged after step %d (its summary.json); it stays stopped", d.path, n)
    return max(common, default=None), stopped


def open_runs(specs: list[tuple[Config, Path, list[str]]], model_cfg: GPTConfig,
              device: torch.device, group: str | None) -> tuple[list[RunState], Progress] | None:
    """Open the runs `specs` lists (config, directory, overrides): every directory is checked
    before any is written to; each run is then initialized as its own plain run would be, or
    resumed from the common step. None when no run has anything left to do."""
    dirs = [RunDir(path, cfg, overrides, group) for cfg, path, overrides in specs]
    try:
        return start_runs(dirs, model_cfg, device, group)
    except BaseException:  # refused: every directory is released as it was
        for d in dirs:
            d.unlock()
        raise


def start_runs(dirs: list[RunDir], model_cfg: GPTConfig, device: torch.device,
               group: str | None) -> tuple[list[RunState], Progress] | None:
    resume_step, stopped = common_resume_step(dirs, [d.open() for d in dirs])
    if all(stopped):  # completed before (an ensemble: or diverged while the others completed)
        for d in dirs:
            d.unlock()
        return None
    progress = Progress(total=dirs[0].cfg.train.steps)
    runs = []
    for run_dir, stop in zip(dirs, stopped, strict=True):
        cfg = run_dir.cfg
        resume = None if resume_step is None or stop else (
            run_dir.checkpoints / layout.step_dir_name(resume_step))
        seed_everything(cfg.seed)
        model = GPT(model_cfg) if resume is None else (  # initialized on the CPU: the same
            load_model(resume / layout.WEIGHTS, expect=model_cfg)[0])  # weights anywhere
        model.to(device)
        if not stop:
            run_dir.begin(resume)
        optimizer = adamw(model, cfg.optim, device)
        schedule = functools.partial(lr_factor, cfg=cfg.optim, total_steps=progress.total)
        run = RunState(cfg, run_dir, model, optimizer,
                       torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                       torch.Generator(device).manual_seed(cfg.data_seed), TrainStats(device),
                       last=run_dir.last_record, alive=not stop)
        if resume is not None:
            state = run_dir.load_state(resume_step)
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"], run.generator)
            run.stats.load_state_dict(state["stats"])
            progress.step, progress.tokens, elapsed = (state["step"], state["tokens"],
                                                       state["elapsed_s"])
            progress.t0, progress.resumed = time.perf_counter() - elapsed, True
        runs.append(run)
    if resume_step is None:
        progress.t0 = time.perf_counter()
    start = {"step": progress.step, "tokens": progress.tokens, "elapsed_s": progress.elapsed()}
    for run in runs:
        if run.alive:
            run.logger = RunLogger(run.dir.path, run.cfg.wandb, run_id=run.dir.info["wandb_id"],
                                   config=run.dir.info["config"], group=group,
                                   total_steps=progress.total, start=start,
                                   overrides=run.dir.info["overrides"])
    return runs, progress
