"""Ensemble training: `train.ensemble=N` trains N same-shape models at once in one process.

Member i is the ordinary run of its own config: `seed + i` (initialization), `data_seed + i`
(its own training batches; full-batch training shares the one training set) and, where
`train.ensemble_lr` / `train.ensemble_weight_decay` list one value per member, that member's
`optim.lr` / `optim.weight_decay`. It gets its own run directory `<run dir>/member_<i>/` with
`.hydra/config.yaml` (its resolved config, `train.ensemble=1`), metrics.jsonl, checkpoints/ and
summary.json, so `python -m analysis` sees N ordinary runs, and `python -m train` on a member's
config trains the same model alone (tests/test_ensemble.py checks the losses agree).

How: the members' weights are one [N, P] tensor (row i: member i's parameters, flattened);
`torch.func.functional_call` under `vmap` runs the N forwards as one batched forward over
[N, *shape] views of it, one backward gives every member's gradient, and AdamW is a handful of
elementwise operations on the [N, P] rows: the same update as `torch.optim.AdamW` with the
loop's per-member gradient clipping, each member's learning rate and weight decay per parameter
group coming from its own torch optimizer (which holds settings and is never stepped) and its
LambdaLR schedule. These also give each member's state.pt torch's own format, so a member's
checkpoint resumes like any run's, in an ensemble or alone.

A member whose loss turns non-finite is stopped (status failed); the others go on. Elapsed
times are the ensemble's wall clock. On CPU the fused SDPA kernel has no vmap batching rule, so
attention runs its math form there (one batched computation instead of a loop over members).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import tasks
from models import GPT, GPTConfig, load_model
from train import checkpoint
from train.config import Config
from train.log import RunLogger
from train.loop import Diverged, TrainStats, evaluate_all, lr_factor, masked_cross_entropy
from train.run_dir import RunDir

ENSEMBLE_KEYS = ("train.ensemble", "train.ensemble_lr", "train.ensemble_weight_decay")


def member_configs(cfg: Config) -> list[Config]:
    """The config of each member: an ordinary single run's (train.ensemble=1)."""
    train = dataclasses.replace(cfg.train, ensemble=1, ensemble_lr=None,
                                ensemble_weight_decay=None)
    members = []
    for i in range(cfg.train.ensemble):
        optim = dataclasses.replace(
            cfg.optim,
            lr=cfg.optim.lr if cfg.train.ensemble_lr is None else cfg.train.ensemble_lr[i],
            weight_decay=(cfg.optim.weight_decay if cfg.train.ensemble_weight_decay is None
                          else cfg.train.ensemble_weight_decay[i]))
        members.append(dataclasses.replace(cfg, seed=cfg.seed + i, data_seed=cfg.data_seed + i,
                                           optim=optim, train=train))
    return members


def member_overrides(overrides: list[str], cfg: Config, member: Config) -> list[str]:
    """A member's sweep coordinates: the ensemble's overrides without the ensemble keys, plus
    the member's value of each hyperparameter that varies between members (seeds are
    coordinates already)."""
    grid = {key: value for key, value, values in (
        ("optim.lr", member.optim.lr, cfg.train.ensemble_lr),
        ("optim.weight_decay", member.optim.weight_decay, cfg.train.ensemble_weight_decay),
    ) if values is not None}
    drop = (*ENSEMBLE_KEYS, *grid)
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in drop]
    return kept + [f"{key}={value}" for key, value in grid.items()]


class Stacked:
    """The weights of N same-shape models as one [N, P] tensor, with AdamW's moments.

    Row i holds member i's parameters flattened in `named_parameters` order. `params` maps each
    name to a [N, *shape] view of its block of columns: the leaves that `functional_call`
    reads and autograd differentiates, so an update of the rows is seen by the next forward."""

    def __init__(self, models: list[GPT]):
        named = list(models[0].named_parameters())
        self.sizes = [p.numel() for _, p in named]
        self.weights = torch.stack([torch.cat([p.detach().flatten() for p in m.parameters()])
                                    for m in models])  # [N, P]
        n = len(models)
        columns = self.weights.split(self.sizes, dim=1)
        self.params = {name: block.view(n, *p.shape).requires_grad_()
                       for (name, p), block in zip(named, columns, strict=True)}
        self.exp_avg = torch.zeros_like(self.weights)
        self.exp_avg_sq = torch.zeros_like(self.weights)
        self.count = 0  # updates so far (AdamW's bias corrections)

    def column(self, values: Tensor) -> Tensor:
        """[N, n_params] per-parameter values -> [N, P], each repeated over its parameter."""
        sizes = torch.tensor(self.sizes, device=values.device)
        return values.repeat_interleave(sizes, dim=1, output_size=self.weights.shape[1])

    @torch.no_grad()
    def clip_(self, grad: Tensor, max_norm: float) -> Tensor:
        """Scale each member's gradient row to norm <= max_norm, as the plain loop's
        clip_grad_norm_ does per run; returns the norms before clipping [N]."""
        norm = torch.linalg.vector_norm(grad, dim=1)
        grad *= (max_norm / (norm + 1e-6)).clamp(max=1.0)[:, None]
        return norm

    @torch.no_grad()
    def adamw_(self, grad: Tensor, lr: Tensor, weight_decay: Tensor, betas, eps: float) -> None:
        """One AdamW update (Loshchilov & Hutter 2019) as torch.optim.AdamW computes it, with
        lr and weight_decay [N, P] per member and parameter."""
        beta1, beta2 = betas
        self.count += 1
        self.weights.mul_(1 - lr * weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.count)).add_(eps)
        self.weights.sub_(self.exp_avg / denom * (lr / (1 - beta1**self.count)))

    @torch.no_grad()
    def copy_to(self, i: int, model: GPT) -> None:
        """Member i's current weights into `model` (for evaluation and checkpoints)."""
        for p, w in zip(model.parameters(), self.weights[i].split(self.sizes), strict=True):
            p.copy_(w.view_as(p))

    def optimizer_state(self, i: int, model: GPT, optimizer: torch.optim.Optimizer) -> dict:
        """Member i's optimizer state in torch.optim.AdamW's state_dict format."""
        moments = zip(model.parameters(), self.exp_avg[i].split(self.sizes),
                      self.exp_avg_sq[i].split(self.sizes), strict=True)
        for p, m, v in moments:
            optimizer.state[p] = {"step": torch.tensor(float(self.count)),
                                  "exp_avg": m.view_as(p).clone(),
                                  "exp_avg_sq": v.view_as(p).clone()}
        state = optimizer.state_dict()
        optimizer.state.clear()
        return state

    @torch.no_grad()
    def load_optimizer_state(self, i: int, model: GPT, optimizer: torch.optim.Optimizer,
                             state: dict) -> None:
        optimizer.load_state_dict(state)
        for j, p in enumerate(model.parameters()):
            moments = optimizer.state[p]
            columns = slice(sum(self.sizes[:j]), sum(self.sizes[: j + 1]))
            self.exp_avg[i, columns] = moments["exp_avg"].flatten()
            self.exp_avg_sq[i, columns] = moments["exp_avg_sq"].flatten()
            self.count = int(moments["step"])
        optimizer.state.clear()


@dataclass
class Member:
    """One member's ordinary-run machinery: its model (a copy of its row of the stacked
    weights, refreshed before evaluation and saving), optimizer and schedule (the source of
    its per-group lr and weight decay), data generator, statistics, directory and logger."""

    cfg: Config
    model: GPT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    stats: TrainStats
    run_dir: RunDir
    logger: RunLogger | None = None
    last: dict = dataclasses.field(default_factory=dict)
    alive: bool = True


def write_hydra_files(path: Path, cfg: Config, overrides: list[str]) -> None:
    """`.hydra/config.yaml` and `overrides.yaml`, as Hydra writes them for a run it launches."""
    hydra_dir = path / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")


def open_members(cfg: Config, model_cfg: GPTConfig, device: torch.device, run_dir: Path,
                 overrides: list[str], group: str | None) -> tuple[list[Member], list]:
    """Build every member (initialized as its own run would be) and open its directory.
    Returns the members and each one's checkpoint to resume from (None: fresh start).

    A member whose newest state is older than the others' stopped early (diverged) and stays
    stopped; any other mismatch means the members cannot continue in step."""
    configs = member_configs(cfg)
    dirs = [RunDir(run_dir / f"member_{i}", c, member_overrides(overrides, cfg, c), group)
            for i, c in enumerate(configs)]
    points = [None if cfg.train.overwrite or not d.checkpoints.exists()
              else checkpoint.resume_point(d.checkpoints) for d in dirs]
    steps = [-1 if p is None else checkpoint.step_of(p) for p in points]
    stopped = [s < max(steps) and d.path.joinpath("summary.json").exists()
               for s, d in zip(steps, dirs, strict=True)]
    if len({s for s, out in zip(steps, stopped, strict=True) if not out}) > 1:
        raise ValueError(f"{run_dir}: the ensemble's members stopped at different steps "
                         f"{steps}; pass train.overwrite=true to start it over")
    # Every directory is checked before any is written to.
    resumes = [None if stop else run.open() for run, stop in zip(dirs, stopped, strict=True)]
    members = []
    for member_cfg, run, stop, resume in zip(configs, dirs, stopped, resumes, strict=True):
        for rng in (torch.manual_seed, random.seed, np.random.seed):
            rng(member_cfg.seed)
        model = (GPT(model_cfg) if resume is None
                 else load_model(resume / "model.safetensors", expect=model_cfg)[0]).to(device)
        if not stop:
            write_hydra_files(run.path, member_cfg, run.overrides)
            run.begin(resume)
        optim = member_cfg.optim
        optimizer = torch.optim.AdamW(
            model.param_groups(optim.lr, optim.weight_decay, optim.decay_embeddings),
            lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
        schedule = functools.partial(lr_factor, cfg=optim, total_steps=cfg.train.steps)
        members.append(Member(
            member_cfg, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
            torch.Generator(device).manual_seed(member_cfg.data_seed), TrainStats(device), run,
            alive=not stop))
    return members, resumes


def hyperparameter(members: list[Member], key: str, device: torch.device) -> Tensor:
    """[N, n_params]: each member's optimizer setting `key` (lr, weight_decay) for each of its
    parameters, as its parameter group holds it."""
    group_of = {p: j for j, group in enumerate(members[0].optimizer.param_groups)
                for p in group["params"]}
    index = torch.tensor([group_of[p] for p in members[0].model.parameters()], device=device)
    table = [[group[key] for group in m.optimizer.param_groups] for m in members]
    return torch.tensor(table, device=device)[:, index]


def training_data(task: tasks.Task, members: list[Member],
                  batch_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, targets, mask): [N, B, T], a batch per member from its own generator, or, for
    full-batch training (batch_size None), the training set [B, T] that all members share."""
    if batch_size is None:
        batch = task.train_batch(None, members[0].generator)
        return batch.tokens, batch.targets, batch.mask
    batches = [task.train_batch(batch_size, m.generator) for m in members]
    return tuple(torch.stack([getattr(b, key) for b in batches])
                 for key in ("tokens", "targets", "mask"))


def advance(schedulers: list[torch.optim.lr_scheduler.LambdaLR]) -> None:
    """Step the members' schedules. Their optimizers only hold settings (the stacked update is
    done above), so the scheduler's warning that optimizer.step() was never called is moot."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
        for scheduler in schedulers:
            scheduler.step()


def member_loss_fn(model: GPT, start: int, shared_data: bool):
    """(params, buffers, tokens, targets, mask) -> [N] losses: each member's masked
    cross-entropy, vmapped over the members' stacked weights (and data unless shared)."""
    shell = copy.deepcopy(model).to("meta")  # structure only: functional_call brings weights

    def loss(params, buffers, tokens, targets, mask):
        logits = functional_call(shell, (params, buffers), (tokens,), {"start": start})
        return masked_cross_entropy(logits, targets[:, start:], mask[:, start:])

    data = None if shared_data else 0
    return vmap(loss, in_dims=(0, None, data, data, data), randomness="different")


def run_ensemble(cfg: Config, task: tasks.Task, model_cfg: GPTConfig, device: torch.device,
                 run_dir: Path, overrides: list[str], group: str | None,
                 autocast) -> float | None:
    """Train cfg.train.ensemble members as one batched computation (see the module docstring);
    returns the mean final eval/loss of the members that completed (None if none did)."""
    group = group or run_dir.name  # the members share a wandb group
    members, resumes = open_members(cfg, model_cfg, device, run_dir, overrides, group)
    stacked = Stacked([m.model for m in members])
    step, tokens, elapsed = 0, 0, 0.0
    for i, (m, resume) in enumerate(zip(members, resumes, strict=True)):
        if resume is not None:
            state = checkpoint.load_state(resume)
            stacked.load_optimizer_state(i, m.model, m.optimizer, state["optimizer"])
            m.scheduler.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"], m.generator)
            m.stats.load_state_dict(state["stats"])
            step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]
    weight_decay = stacked.column(hyperparameter(members, "weight_decay", device))

    shared_data = cfg.train.batch_size is None  # the whole training set, the same for all
    loss_fn = member_loss_fn(members[0].model, task.loss_start, shared_data)
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    # The CPU's fused attention kernel has no vmap batching rule (it would loop over members).
    attention = (functools.partial(sdpa_kernel, SDPBackend.MATH) if device.type == "cpu"
                 else contextlib.nullcontext)
    buffers = dict(members[0].model.named_buffers())
    total, flops_per_token = cfg.train.steps, members[0].model.flops_per_token()
    for m in members:
        if m.alive:
            m.logger = RunLogger(m.run_dir.path, m.cfg.wandb, run_id=m.run_dir.info["wandb_id"],
                                 config=m.run_dir.info["config"], group=group,
                                 total_steps=total,
                                 start={"step": step, "tokens": tokens, "elapsed_s": elapsed},
                                 overrides=m.run_dir.info["overrides"])
    t0 = time.perf_counter() - elapsed

    def save(i: int, m: Member) -> None:
        meta = {"step": step, "tokens": tokens, "flops": flops_per_token * tokens}
        state = {"step": step, "tokens": tokens, "elapsed_s": time.perf_counter() - t0,
                 "optimizer": stacked.optimizer_state(i, m.model, m.optimizer),
                 "scheduler": m.scheduler.state_dict(),
                 "rng": checkpoint.rng_state(m.generator), "stats": m.stats.state_dict()}
        checkpoint.save(m.run_dir.checkpoints, step, m.model, meta, state,
                        cfg.checkpoint.keep_state)

    def record(m: Member, with_eval: bool) -> None:
        row = {"step": step, "tokens": tokens, "flops": flops_per_token * tokens,
               "elapsed_s": time.perf_counter() - t0, **m.stats.pop()}
        if step > 0:
            row["train/lr"] = m.cfg.optim.lr * lr_factor(step - 1, m.cfg.optim, total)
        if with_eval:
            row.update(evaluate_all(m.model, task, autocast))
        m.logger.log(row)
        m.last = row

    def finish(m: Member, status: str, error: str | None) -> None:
        summary = m.run_dir.finish(m.model, status, error, step, total, tokens,
                                   time.perf_counter() - t0, m.last)
        m.logger.close(summary, ok=status != "failed")
        m.alive = False

    def record_and_save(at_eval: bool, at_log: bool, at_save: bool) -> None:
        for i, m in enumerate(members):
            if not m.alive:
                continue
            if at_eval or at_save:
                stacked.copy_to(i, m.model)
            try:
                m.stats.check(m.model if at_save else None)  # never save a diverged model
            except Diverged as e:
                finish(m, "failed", f"{e} (optim.lr={m.cfg.optim.lr}); stopped, the other "
                       f"members went on")
                continue
            if at_log:
                record(m, with_eval=at_eval)
            if at_save:
                save(i, m)

    status, error = "failed", None
    try:
        with checkpoint.Preemption() as preemption:
            if all(r is None for r in resumes):
                record_and_save(at_eval=True, at_log=True, at_save=True)
            while step < total and preemption.signum is None and any(m.alive for m in members):
                data = training_data(task, members, cfg.train.batch_size)
                with autocast(), attention():
                    losses = loss_fn(stacked.params, buffers, *data)
                grads = torch.autograd.grad(losses.sum(), list(stacked.params.values()))
                grad = torch.cat([g.flatten(1) for g in grads], dim=1)
                grad_norms = stacked.clip_(grad, cfg.train.grad_clip or math.inf)
                lr = stacked.column(hyperparameter(members, "lr", device))
                stacked.adamw_(grad, lr, weight_decay, cfg.optim.betas, cfg.optim.eps)
                advance([m.scheduler for m in members])
                step += 1
                tokens += math.prod(data[0].shape[-2:])  # per member
                for i, m in enumerate(members):
                    if m.alive:
                        m.stats.add(step, losses[i], grad_norms[i])

                at_eval = step % cfg.train.eval_every == 0 or step == total
                at_log = at_eval or step % cfg.train.log_every == 0
                at_save = (checkpoint.is_checkpoint_step(step, total, cfg.checkpoint)
                           or preemption.signum is not None)
                if at_log or at_save:
                    record_and_save(at_eval, at_log, at_save)
            status = "completed" if step >= total else "preempted"
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        for i, m in enumerate(members):
            if m.alive:
                stacked.copy_to(i, m.model)
                finish(m, status, error)
    preemption.hand_over()
    finals = [m.last.get("eval/loss") for m in members if m.last.get("step") == total]
    finals = [f for f in finals if f is not None]
    return None if status != "completed" or not finals else sum(finals) / len(finals)
