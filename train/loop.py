"""The training loop: `run(cfg, run_dir)` trains one model on one task and fills its run directory.

Per step: a batch from the task on the device, masked next-token cross-entropy, AdamW with
warmup and a cosine/linear/constant schedule, gradient clipping. Nothing leaves the device
between log steps: the loss and gradient norm are summed there and read (one host sync) only
when a record is written or a checkpoint saved. Evaluation scores `task.eval_set()`,
`task.train_eval_set()` and `task.ood_set()` with `analysis.evaluate` + `analysis.metrics`, the
same functions `python -m analysis` uses. Run-directory bookkeeping lives in `train.run_dir`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

import tasks
from analysis.evaluate import evaluate
from analysis.metrics import compute
from models import GPT, GPTConfig, load_model
from train import checkpoint
from train.config import Config, OptimConfig, check_buildable
from train.log import RunLogger
from train.run_dir import RunDir


class Diverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr for update `step` (0-based): linear warmup, then decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    decay = {
        "constant": 0.0,
        "linear": progress,
        "cosine": (1 - math.cos(math.pi * progress)) / 2,
    }[cfg.schedule]
    return 1 - (1 - cfg.min_lr_ratio) * decay


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the masked positions of logits [B, T, V]. Weighting, not
    boolean indexing: an indexed tensor's size depends on the data, which costs a host sync."""
    ce = F.cross_entropy(rearrange(logits, "b t v -> b v t"), targets, reduction="none")  # [B, T]
    weight = mask.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp(min=1)


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


def evaluate_all(model: GPT, task: tasks.Task, autocast) -> dict[str, float]:
    """eval/, train_eval/ and ood/ metrics of the current model."""
    sets = {"eval": task.eval_set(), "train_eval": task.train_eval_set(), "ood": task.ood_set()}
    scores = {}
    for prefix, batch in sets.items():
        if batch is not None:
            with autocast():
                outputs = evaluate(model, task, batch)
            scores.update({f"{prefix}/{name}": v for name, v in compute(outputs).items()})
    return scores


def precision(cfg: Config, device: torch.device):
    """The autocast context of cfg.dtype (bfloat16 where asked, or by default on CUDA; else
    a no-op), after turning on TF32 for the float32 matmuls outside it on CUDA."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    return functools.partial(torch.autocast, device.type, torch.bfloat16, enabled=bf16)


def run(cfg: Config, run_dir: str | Path, overrides: list[str] | None = None,
        group: str | None = None) -> float | None:
    """Train as `cfg` says, writing everything into `run_dir` (resuming what is there), and
    return the final eval/loss (None if the run stopped early)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = tasks.build(cfg.task, device)
    model_cfg = model_config_for(cfg.model, task)
    check_buildable(cfg, model_cfg)  # a config that cannot train fails before run_dir is touched
    if cfg.train.batch_size is None and task.train_set() is None:
        raise ValueError("train.batch_size=null (full batch) needs a task with a finite training "
                         "set; set train.batch_size, or task.train_size where the task has one")
    if cfg.train.ensemble > 1:  # N models in one process, each its own run in run_dir/member_i
        from train.ensemble import run_ensemble  # (imports this module)

        return run_ensemble(cfg, task, model_cfg, device, Path(run_dir), overrides or [], group,
                            precision(cfg, device))
    run_dir = RunDir(Path(run_dir), cfg, overrides or [], group)
    resume = run_dir.open()  # refuses a finished run or a changed config

    for rng in (torch.manual_seed, random.seed, np.random.seed):
        rng(cfg.seed)
    if resume is None:
        model = GPT(model_cfg)  # initialized on the CPU: the same weights on every device
    else:
        model = load_model(resume / "model.safetensors", expect=model_cfg)[0]
    model.to(device)
    run_dir.begin(resume)
    optimizer = torch.optim.AdamW(
        model.param_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.decay_embeddings),
        lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
        fused=device.type == "cuda",
    )
    total = cfg.train.steps
    schedule = functools.partial(lr_factor, cfg=cfg.optim, total_steps=total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    data_generator = torch.Generator(device).manual_seed(cfg.data_seed)
    stats = TrainStats(device)
    step, tokens, elapsed = 0, 0, 0.0
    if resume is not None:
        state = checkpoint.load_state(resume)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"], data_generator)
        stats.load_state_dict(state["stats"])
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]

    autocast = precision(cfg, device)
    forward = torch.compile(model) if cfg.compile else model
    flops_per_token = model.flops_per_token()
    logger = RunLogger(run_dir.path, cfg.wandb, run_id=run_dir.info["wandb_id"],
                       config=run_dir.info["config"], group=group, total_steps=total,
                       start={"step": step, "tokens": tokens, "elapsed_s": elapsed},
                       overrides=run_dir.info["overrides"])
    t0 = time.perf_counter() - elapsed

    def save(step: int, with_state: bool) -> None:
        meta = {"step": step, "tokens": tokens, "flops": flops_per_token * tokens}
        state = None
        if with_state:
            state = {"step": step, "tokens": tokens, "elapsed_s": time.perf_counter() - t0,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": checkpoint.rng_state(data_generator), "stats": stats.state_dict()}
        checkpoint.save(run_dir.checkpoints, step, model, meta, state, cfg.checkpoint.keep_state)

    def record(step: int, with_eval: bool) -> dict:
        row = {"step": step, "tokens": tokens, "flops": flops_per_token * tokens,
               "elapsed_s": time.perf_counter() - t0, **stats.pop()}
        if step > 0:
            row["train/lr"] = cfg.optim.lr * schedule(step - 1)  # of the last update
        if with_eval:
            row.update(evaluate_all(model, task, autocast))
        logger.log(row)
        return row

    status, error, last = "failed", None, run_dir.last_record
    start = task.loss_start
    try:
        with checkpoint.Preemption() as preemption:
            if resume is None:
                last = record(0, with_eval=True)
                save(0, with_state=True)
            while step < total and preemption.signum is None:
                batch = task.train_batch(cfg.train.batch_size, data_generator)
                with autocast():
                    logits = forward(batch.tokens, start=start)
                    loss = masked_cross_entropy(logits, batch.targets[:, start:],
                                                batch.mask[:, start:])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.train.grad_clip or math.inf)
                optimizer.step()
                scheduler.step()
                step += 1
                tokens += batch.tokens.numel()
                stats.add(step, loss, grad_norm)

                at_eval = step % cfg.train.eval_every == 0 or step == total
                at_log = at_eval or step % cfg.train.log_every == 0
                at_save = (checkpoint.is_checkpoint_step(step, total, cfg.checkpoint)
                           or preemption.signum is not None)
                if at_log or at_save:
                    stats.check(model if at_save else None)  # never save a diverged model
                if at_log:
                    last = record(step, with_eval=at_eval)
                if at_save:
                    save(step, with_state=True)
            status = "completed" if step >= total else "preempted"
    except Diverged as e:
        newest = checkpoint.resume_point(run_dir.checkpoints)
        error = (f"{e} (optim.lr={cfg.optim.lr}); stopped. The newest checkpoint, "
                 f"{newest.name if newest else 'none'}, was saved before it.")
        raise Diverged(error) from None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary = run_dir.finish(model, status, error, step, total, tokens,
                                 time.perf_counter() - t0, last)
        logger.close(summary, ok=status != "failed")
    if status == "preempted":
        preemption.hand_over()  # under submitit: requeue this job
    return last.get("eval/loss") if status == "completed" else None
