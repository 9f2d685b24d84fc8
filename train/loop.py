"""The training loop: `run(cfg, run_dir)` trains a model (or, with `train.ensemble=N`, N models at
once) on one task and fills its run directory.

Per step: a batch from the task on the device, masked next-token cross-entropy, AdamW with
warmup and a cosine/linear/constant schedule, gradient clipping. Nothing leaves the device
between log steps: the loss and gradient norm are summed there and read (one host sync) only
when a record is written or a checkpoint saved. Evaluation scores the task's fixed sets with
`analysis.scoring.score`, the entry `python -m analysis` uses.

A plain run and an ensemble go through the same loop, the same bookkeeping (`train.state`) and
the same step's pieces (`train.step`); they differ only in the update: `PlainUpdate` below steps
one model with torch's AdamW, `train.ensemble.BatchedUpdate` steps N stacked models under vmap.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import torch
from torch import Tensor

import tasks
from analysis import layout, scoring
from models import GPTConfig
from train import checkpoint, ensemble
from train.config import Config, check_buildable
from train.log import is_eval_step, is_log_step
from train.run_dir import read_json, write_hydra_files
from train.state import Diverged, Progress, RunState, open_runs
from train.step import compiled, masked_cross_entropy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA device is available; use device=auto or cpu")
    return device


def model_config_for(model: GPTConfig, task: tasks.Task) -> GPTConfig:
    """model.n_ctx and model.d_vocab from the task where unset; raises naming the field where
    a set value cannot hold the task's sequences or tokens."""
    model = dataclasses.replace(
        model,
        n_ctx=task.seq_len if model.n_ctx is None else model.n_ctx,
        d_vocab=task.d_vocab if model.d_vocab is None else model.d_vocab,
    )
    task.check_model(model.n_ctx, model.d_vocab)
    return model


def precision(cfg: Config, device: torch.device):
    """The autocast context of cfg.dtype (bfloat16 where asked, or by default on CUDA; else
    a no-op), after turning on TF32 for the float32 matmuls outside it on CUDA."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    return functools.partial(torch.autocast, device.type, torch.bfloat16, enabled=bf16)


class PlainUpdate:
    """One model's training step: forward, backward, clip_grad_norm_, torch's AdamW (fused on
    CPU and CUDA) and its schedule. Its model is the run's model, so `sync` has nothing to do."""

    def __init__(self, runs: list[RunState], task: tasks.Task, cfg: Config, autocast):
        (self.run,) = runs
        self.task, self.cfg, self.autocast = task, cfg, autocast
        self.forward = compiled(self.run.model, cfg.compile)

    def __call__(self) -> tuple[Tensor, Tensor, int]:
        """One update: (losses [1], gradient norms [1], training tokens)."""
        run, start = self.run, self.task.loss_start
        batch = self.task.train_batch(self.cfg.train.batch_size, run.generator)
        with self.autocast():
            logits = self.forward(batch.tokens, start=start)
            loss = masked_cross_entropy(logits, batch.targets[:, start:], batch.mask[:, start:])
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(),
                                                   self.cfg.train.grad_clip or math.inf)
        run.optimizer.step()
        run.scheduler.step()
        return loss[None], grad_norm[None], batch.tokens.numel()

    def sync(self, i: int) -> None:
        """Run i's model holds its current weights already."""

    def optimizer_state(self, i: int) -> dict:
        return self.run.optimizer.state_dict()


@dataclasses.dataclass(frozen=True)
class Due:
    """What a step owes the record: scores of the fixed sets, a metrics.jsonl record, a
    checkpoint."""

    eval: bool = False
    log: bool = False
    save: bool = False

    @classmethod
    def at(cls, step: int, total: int, cfg: Config, preempted: bool) -> Due:
        return cls(eval=is_eval_step(step, total, cfg.train),
                   log=is_log_step(step, total, cfg.train),
                   save=checkpoint.is_checkpoint_step(step, total, cfg.checkpoint) or preempted)

    def __bool__(self) -> bool:
        return self.log or self.save


@dataclasses.dataclass
class Book:
    """The bookkeeping of one process's runs at the steps that owe the record something."""

    runs: list[RunState]
    update: PlainUpdate | ensemble.BatchedUpdate
    progress: Progress
    task: tasks.Task
    cfg: Config
    autocast: object  # the training precision's context (`precision`)

    def __call__(self, due: Due) -> None:
        """Record and save every live run as `due` says; a run whose loss or weights are not
        finite is finished as failed instead (never saved). keep_state=last prunes older
        states only once every run has saved this step, so the runs always share a resumable
        step."""
        saved = []
        for i, run in enumerate(self.runs):
            if not run.alive:
                continue
            if due.eval or due.save:
                self.update.sync(i)
            try:
                run.stats.check(run.model if due.save else None)
            except Diverged as e:
                run.finish(self.progress, "failed", diverged=e)
                continue
            if due.log:
                run.record(self.progress, scoring.score(
                    run.model, self.task, probes=self.cfg.train.eval_probes, slices_of="main",
                    autocast=self.autocast) if due.eval else {})
            if due.save:
                run.save(self.progress, self.update.optimizer_state(i))
                saved.append(run)
        if self.cfg.checkpoint.keep_state == "last":
            for run in saved:
                checkpoint.prune_states(run.dir.checkpoints, keep=self.progress.step)


def run(cfg: Config, run_dir: str | Path, overrides: list[str] | None = None,
        group: str | None = None) -> float | None:
    """Train as `cfg` says, writing everything into `run_dir` (resuming what is there), and
    return the final eval/loss (an ensemble: the mean over the members that completed; None if
    the run stopped early)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = tasks.build(cfg.task, device)
    model_cfg = model_config_for(cfg.model, task)
    check_buildable(cfg, model_cfg)  # a config that cannot train fails before run_dir is touched
    if cfg.train.batch_size is None and task.train_set() is None:
        raise ValueError("train.batch_size=null (full batch) needs a task with a finite training "
                         "set; set train.batch_size, or task.train_size where the task has one")
    run_dir, overrides = Path(run_dir), overrides or []
    members = cfg.train.ensemble > 1  # N runs in one process, each its own run_dir/member_i
    if members:
        specs, group = ensemble.member_specs(cfg, run_dir, overrides), group or run_dir.name
    else:
        specs = [(cfg, run_dir, overrides)]
    if (opened := open_runs(specs, model_cfg, device, group)) is None:  # ran before: done
        summaries = [read_json(path / layout.SUMMARY) for _, path, _ in specs]
        return final_loss([s["metrics"] for s in summaries if s["status"] == "completed"])
    runs, progress = opened
    if members:  # the ensemble's command, beside its members' own
        write_hydra_files(run_dir, cfg, overrides)
    autocast = precision(cfg, device)
    update = (ensemble.BatchedUpdate if members else PlainUpdate)(runs, task, cfg, autocast)
    book = Book(runs, update, progress, task, cfg, autocast)

    status = "failed"
    try:
        with checkpoint.Preemption() as preemption:
            if not progress.resumed:  # step 0's record and checkpoint
                book(Due(eval=True, log=True, save=True))
            while (progress.step < progress.total and preemption.signum is None
                   and any(r.alive for r in runs)):
                losses, grad_norms, tokens = update()
                progress.step += 1
                progress.tokens += tokens
                for i, r in enumerate(runs):
                    if r.alive:
                        r.stats.add(progress.step, losses[i], grad_norms[i])

                due = Due.at(progress.step, progress.total, cfg, preemption.signum is not None)
                if due:
                    book(due)
            if progress.step >= progress.total:
                status = "completed"
            elif preemption.signum is not None:
                status = "preempted"
    except BaseException as e:
        for r in runs:
            r.error = r.error or f"{type(e).__name__}: {e}"
        raise
    finally:
        for i, r in enumerate(runs):
            if r.alive:
                update.sync(i)
                r.finish(progress, status)
    if status == "failed":  # no exception: every run diverged
        raise Diverged("; ".join(r.error for r in runs if r.error))
    if status == "preempted":
        preemption.hand_over()  # under submitit: requeue this job
    completed = [r.last for r in runs if r.error is None and r.last.get("step") == progress.total]
    return final_loss(completed) if status == "completed" else None


def final_loss(metrics: list[dict]) -> float | None:
    """The mean final eval/loss of the completed runs whose `metrics` hold one."""
    finals = [m["eval/loss"] for m in metrics if "eval/loss" in m]
    return sum(finals) / len(finals) if finals else None
