"""Ensemble training: `train.ensemble=N` trains N same-shape models at once in one process.

The loop and every line of bookkeeping are the plain run's (`train.loop.run`, `train.state`);
this module holds what batching adds: the members' configs, their stacked weights with the
stacked AdamW, and `BatchedUpdate`, the step that replaces the plain `PlainUpdate`.

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
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import tasks
from analysis import layout
from models import GPT
from train.config import Config
from train.state import RunState
from train.step import compiled, masked_cross_entropy

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


def member_specs(cfg: Config, run_dir: Path, overrides: list[str]) -> list[tuple]:
    """(config, directory, overrides) of each member: the runs `train.loop.run` opens."""
    return [(member, run_dir / layout.member_dir_name(i), member_overrides(overrides, cfg, member))
            for i, member in enumerate(member_configs(cfg))]


class Stacked:
    """The weights of N same-shape models as one [N, P] tensor, with AdamW's moments.

    Row i holds member i's parameters flattened in `named_parameters` order. `params` maps each
    name to a [N, *shape] view of its block of columns: the leaves that `functional_call`
    reads and autograd differentiates, so an update of the rows is seen by the next forward."""

    def __init__(self, models: list[GPT], optimizers: list[torch.optim.Optimizer]):
        """The models' weights, and the moments their optimizers hold (a resumed run's, loaded
        from state.pt), which move into the rows: the optimizers keep only their settings."""
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
        for i, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            if optimizer.state:
                moments = [optimizer.state[p] for p in model.parameters()]
                self.exp_avg[i] = torch.cat([m["exp_avg"].flatten() for m in moments])
                self.exp_avg_sq[i] = torch.cat([m["exp_avg_sq"].flatten() for m in moments])
                self.count = int(moments[0]["step"])
                optimizer.state.clear()

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


def hyperparameter(members: list[RunState], key: str, device: torch.device) -> Tensor:
    """[N, n_params]: each member's optimizer setting `key` (lr, weight_decay) for each of its
    parameters, as its parameter group holds it."""
    group_of = {p: j for j, group in enumerate(members[0].optimizer.param_groups)
                for p in group["params"]}
    index = torch.tensor([group_of[p] for p in members[0].model.parameters()], device=device)
    table = [[group[key] for group in m.optimizer.param_groups] for m in members]
    return torch.tensor(table, device=device)[:, index]


def training_data(task: tasks.Task, members: list[RunState],
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


class BatchedUpdate:
    """The members' training step as one computation: a vmapped forward and backward over the
    stacked weights, per-member clipping and the stacked AdamW (see the module docstring)."""

    def __init__(self, runs: list[RunState], task: tasks.Task, cfg: Config, autocast):
        device = runs[0].generator.device
        self.runs, self.task, self.cfg, self.autocast = runs, task, cfg, autocast
        self.stacked = Stacked([r.model for r in runs], [r.optimizer for r in runs])
        self.weight_decay = self.stacked.column(hyperparameter(runs, "weight_decay", device))
        # Each member's lr per parameter before the schedule (LambdaLR's initial_lr), scaled
        # each step by the schedule's factor, a Python number: building the lr column from the
        # optimizers' lists every step would copy it to the device, a host sync on CUDA.
        self.base_lr = self.stacked.column(hyperparameter(runs, "initial_lr", device))
        self.loss_fn = member_loss_fn(runs[0].model, task.loss_start,
                                      shared_data=cfg.train.batch_size is None)
        self.loss_fn = compiled(self.loss_fn, cfg.compile)
        # The CPU's fused attention kernel has no vmap batching rule (it would loop over members).
        self.attention = (functools.partial(sdpa_kernel, SDPBackend.MATH)
                          if device.type == "cpu" else contextlib.nullcontext)
        self.buffers = dict(runs[0].model.named_buffers())

    def __call__(self) -> tuple[Tensor, Tensor, int]:
        """One update of every member: (losses [N], gradient norms [N], tokens per member)."""
        stacked, optim = self.stacked, self.cfg.optim
        data = training_data(self.task, self.runs, self.cfg.train.batch_size)
        with self.autocast(), self.attention():
            losses = self.loss_fn(stacked.params, self.buffers, *data)
        grads = torch.autograd.grad(losses.sum(), list(stacked.params.values()))
        grad = torch.cat([g.flatten(1) for g in grads], dim=1)
        grad_norms = stacked.clip_(grad, self.cfg.train.grad_clip or math.inf)
        schedule = self.runs[0].scheduler  # the members differ in lr, not in its schedule
        lr = self.base_lr * schedule.lr_lambdas[0](schedule.last_epoch)
        stacked.adamw_(grad, lr, self.weight_decay, optim.betas, optim.eps)
        advance([r.scheduler for r in self.runs])
        return losses, grad_norms, math.prod(data[0].shape[-2:])

    def sync(self, i: int) -> None:
        """Member i's current weights into its model (for evaluation and checkpoints)."""
        self.stacked.copy_to(i, self.runs[i].model)

    def optimizer_state(self, i: int) -> dict:
        return self.stacked.optimizer_state(i, self.runs[i].model, self.runs[i].optimizer)
