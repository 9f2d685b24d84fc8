"""The local learning coefficient (LLC) of a checkpoint, sampled with SGLD through devinterp
(Lau et al. 2023; devinterp >= 2, the `llc` extra), its health, the rule that calibrates the
sampler per run, and the weight masks of the refined LLC (one head, one layer).

The loss sampled is the one the model was trained on: the task's mask, on its training
distribution (the finite training set where the task has one, else a fixed seeded sample of
training batches). The whole-sequence loss of an induction model gave chain spreads of +-5 and
negative LLCs late in training where the masked loss gave spreads below 1.2.

Scores (`scores`): `llc` (NaN where the estimate is unhealthy: it is never drawn as a number),
`llc/estimate` (the number regardless), `llc/std` (spread over chains), `llc/healthy` (1 or 0),
`llc/drift` and `llc/spike` (the trace diagnostics below, in LLC units); a refined estimate
is named by its part, `llc_L1H2`, `llc_L0`, with the same suffixes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.base import stream_generator

STREAM = 7  # the generator stream of the fixed training sample of fresh-data tasks
# Health: the spread over chains at most SPREAD of the LLC (or SPREAD_FLOOR, near zero); the
# trace's mean over its last quarter within DRIFT of the LLC from its third quarter's
# (converged); no step SPIKE robust deviations above the trace's median plus the LLC itself.
SPREAD, SPREAD_FLOOR, DRIFT, SPIKE = 0.25, 1.0, 0.2, 10.0
# Calibration: step sizes tried from small to large under each (n_beta, localization), in order
# of preference; a step size is taken where its LLC is within FLAT of the next smaller one's.
STEP_SIZES = (1e-4, 3e-4, 1e-3)
TEMPERATURES = ((30.0, 100.0), (100.0, 100.0), (30.0, 300.0))
FLAT = 0.25


@dataclass(frozen=True)
class Settings:
    """The sampler's settings; the defaults are the middle of the calibration grid (at step
    size 1e-4 the chains had not converged after 120 steps on grokking_small)."""

    lr: float = 3e-4  # the SGLD step size
    n_beta: float = 30.0  # the inverse temperature n * beta
    localization: float = 100.0  # gamma: the pull back to the checkpoint's weights
    chains: int = 2
    draws: int = 100
    burnin: int = 40  # steps discarded before the draws
    batch_size: int = 64
    samples: int = 512  # training examples sampled, for tasks without a finite training set
    seed: int = 0

    def __post_init__(self):
        for name in ("lr", "n_beta", "chains", "draws", "batch_size", "samples"):
            if not getattr(self, name) > 0:
                raise ValueError(f"llc {name}={getattr(self, name)}: must be > 0")
        if self.localization < 0 or self.burnin < 0:
            raise ValueError(f"llc localization={self.localization}, burnin={self.burnin}: "
                             "must be >= 0")


@dataclass
class Estimate:
    llc: float  # mean over chains
    std: float  # spread over chains
    per_chain: list[float]
    trace: np.ndarray  # [chain, step]: n_beta * (loss - init loss), after the burn-in
    healthy: bool = False
    reasons: tuple[str, ...] = ()  # why not healthy
    drift: float = math.nan
    spike: float = math.nan


class _Plain(nn.Module):
    """The model under a module without `cfg`: devinterp takes any model with `cfg.n_heads` for
    a TransformerLens one and calls `.to(device, print_details=False)` on it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def estimate(model: nn.Module, rows: Tensor, loss, settings: Settings,
             masks: dict[str, Tensor | None] | None = None, device: str = "cpu") -> Estimate:
    """The LLC of `model` at its current weights. `rows` [n, width]: the data, one example per
    row; `loss(model, rows)` -> [rows] per-example losses whose mean is the loss sampled.
    `masks`: {parameter name: bool mask or None (all of it)}, the only weights SGLD moves
    (None: every weight). The model itself is not changed."""
    from datasets import Dataset  # the llc extra: imported where it is used
    from devinterp.slt.llc import llc

    width = rows.shape[1]
    if width < 2:
        raise ValueError(f"rows of width {width}: devinterp needs at least 2 columns")

    def per_token(wrapped: nn.Module, ids: Tensor) -> Tensor:  # devinterp's [batch, width - 1]
        return loss(wrapped.model, ids)[:, None].expand(-1, width - 1)

    data = Dataset.from_dict({"input_ids": rows.cpu().numpy()}).with_format("torch")
    logging.getLogger("devinterp").setLevel(logging.WARNING)  # a line per zarr store otherwise
    wrapped = _Plain(model)
    if masks is not None:
        masks = {f"model.{name}": mask for name, mask in masks.items()}
    # devinterp draws a progress bar per chain on stderr (no option turns it off) and warns of
    # a failed chain, whose NaN losses `check` reports.
    with (tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")
        found = llc(wrapped, data, {}, lr=settings.lr, n_beta=settings.n_beta,
                    localization=settings.localization, num_chains=settings.chains,
                    num_draws=settings.draws, num_burnin_steps=settings.burnin,
                    batch_size=min(settings.batch_size, len(rows)), init_seed=settings.seed,
                    param_masks=masks, loss_fn=per_token, device=device,
                    output_path=f"{tmp}/samples.zarr")
        trace = settings.n_beta * (np.asarray(found["loss_trace"].values, dtype=float)
                                   - float(found["init_loss"].values))
    # devinterp's llc_mean averages over the burn-in too, where the chains are still moving
    trace = trace[:, settings.burnin:]
    per_chain = trace.mean(axis=1).tolist()
    result = Estimate(float(np.mean(per_chain)), float(np.std(per_chain)), per_chain, trace)
    return check(result)


def check(result: Estimate) -> Estimate:
    """`result` with its health: finite, positive, chains that agree, a converged trace
    without spikes (devinterp's guidance; the thresholds are this module's constants)."""
    trace, llc = result.trace, result.llc
    if not (np.isfinite(trace).all() and math.isfinite(llc)):
        return replace(result, reasons=("not finite",))
    quarter = max(trace.shape[1] // 4, 1)
    mean = trace.mean(axis=0)
    drift = float(mean[-quarter:].mean() - mean[-2 * quarter:-quarter].mean())
    median = np.median(trace, axis=1, keepdims=True)
    scale = 1.4826 * np.median(np.abs(trace - median), axis=1, keepdims=True)
    spike = float(((trace - median) / (scale + abs(llc) / SPIKE + 1e-12)).max())
    reasons = [
        *(["negative"] if llc <= 0 else []),
        *([f"chains disagree (spread {result.std:.3g})"]
          if result.std > max(SPREAD * abs(llc), SPREAD_FLOOR) else []),
        *([f"not converged (drift {drift:.3g})"] if abs(drift) > max(DRIFT * abs(llc),
                                                                      SPREAD_FLOOR) else []),
        *([f"spike ({spike:.3g} deviations)"] if spike > SPIKE else []),
    ]
    return replace(result, healthy=not reasons, reasons=tuple(reasons), drift=drift,
                   spike=spike)


# --- phaselab's models and tasks --------------------------------------------------------------


def training_rows(task, samples: int, seed: int = 0) -> Tensor:
    """The training distribution as rows [n, 3 T]: tokens, targets and mask side by side (the
    mask rides along as columns of devinterp's input_ids). The finite training set where the
    task has one, else `samples` fresh training examples from a fixed seeded stream."""
    batch = task.train_set()
    if batch is None:
        batch = task.train_batch(samples, stream_generator(seed, STREAM))
    return torch.cat([batch.tokens, batch.targets, batch.mask.long()], dim=1).cpu()


def task_loss(start: int):
    """Per-example loss of the task's rows (training_rows): the masked cross-entropy the model
    was trained on, scaled so that the mean over a batch is the training loss of that batch
    (sum over masked positions / their number)."""

    def loss(model: nn.Module, rows: Tensor) -> Tensor:
        tokens, targets, mask = rows.long().chunk(3, dim=1)  # [B, T] each
        logits = model(tokens, start=start)  # [B, T - start, V]
        ce = F.cross_entropy(logits.transpose(1, 2), targets[:, start:], reduction="none")
        weight = mask[:, start:].to(ce.dtype)
        return (ce * weight).sum(1) / weight.sum(1).mean().clamp(min=1e-9)

    return loss


def parts(model) -> list[str]:
    """The parts a refined LLC is restricted to: every head (L0H1) and every layer (L0)."""
    cfg = model.cfg
    return [f"L{layer}H{head}" for layer in range(cfg.n_layers) for head in range(cfg.n_heads)
            ] + [f"L{layer}" for layer in range(cfg.n_layers)]


def masks(model, part: str) -> dict[str, Tensor | None]:
    """{parameter name: mask} of one part (see `parts`). A head is a slice of its layer's fused
    projections: rows h*d_head:(h+1)*d_head of each of the query, key and value blocks of
    `qkv`, and the same columns of `out`; a layer is every weight of its block."""
    names = dict(model.named_parameters())
    if part not in parts(model):
        raise ValueError(f"part={part!r}: unknown; the parts are {', '.join(parts(model))}")
    layer, _, head = part[1:].partition("H")
    prefix = f"blocks.{layer}."
    if not head:
        return {name: None for name in names if name.startswith(prefix)}
    d_head, d_attn = model.cfg.d_head, model.cfg.n_heads * model.cfg.d_head
    rows = torch.zeros(3 * d_attn, dtype=torch.bool)
    for block in range(3):
        rows[block * d_attn + int(head) * d_head:][:d_head] = True
    found = {}
    for name, p in names.items():
        if name.startswith(prefix + "attn.qkv."):
            found[name] = rows[:, None].expand_as(p).clone() if p.ndim == 2 else rows.clone()
        elif name == prefix + "attn.out.weight":
            found[name] = torch.zeros_like(p, dtype=torch.bool)
            found[name][:, int(head) * d_head:][:, :d_head] = True
    return found


def scores(name: str, result: Estimate) -> dict[str, float]:
    """The scores of one estimate under `name` (`llc`, `llc_L1H2`): see the module docstring."""
    return {name: result.llc if result.healthy else math.nan, f"{name}/estimate": result.llc,
            f"{name}/std": result.std, f"{name}/healthy": float(result.healthy),
            f"{name}/drift": result.drift, f"{name}/spike": result.spike}


def measure(model, task, settings: Settings, refine=(), device: str = "cpu") -> dict[str, float]:
    """The scores of the LLC of `model` on `task`'s training loss, and of the refined LLC of
    each part in `refine` (see `parts`)."""
    rows, loss = training_rows(task, settings.samples, settings.seed), task_loss(task.loss_start)
    found = scores("llc", estimate(model, rows, loss, settings, device=device))
    for part in refine:
        found |= scores(f"llc_{part}", estimate(model, rows, loss, settings, masks(model, part),
                                                device))
    return found


def probe(model, task, outputs) -> dict[str, float]:
    """The scoring entry's probe: the LLC under the default settings (no calibration)."""
    return measure(model, task, Settings())


def applies(task) -> bool:
    return True


# --- calibration ------------------------------------------------------------------------------


def choose(grid: list[dict]) -> tuple[int | None, bool]:
    """(index into `grid`, flat) of the calibration rule: `grid` lists estimates ("llc",
    "healthy") of STEP_SIZES in order under each of TEMPERATURES in order. Under each (n_beta,
    localization), the largest step size whose estimate is healthy and within FLAT of the next
    smaller step size's (also healthy); the first (n_beta, localization) with one wins. With
    none, the pair of neighbouring step sizes that is flattest over the grid gives its larger
    one, and `flat` is False; with no healthy neighbours at all, (None, False)."""
    pairs = [(i, abs(grid[i]["llc"] - grid[i - 1]["llc"]) / abs(grid[i - 1]["llc"]))
             for i in range(1, len(grid)) if i % len(STEP_SIZES)
             and grid[i]["healthy"] and grid[i - 1]["healthy"]]
    for block in range(len(TEMPERATURES)):
        flat = [i for i, change in pairs if i // len(STEP_SIZES) == block and change <= FLAT]
        if flat:
            return max(flat), True
    return (min(pairs, key=lambda pair: pair[1])[0] if pairs else None), False


def calibrate(model, task, base: Settings = Settings(), device: str = "cpu") -> dict:
    """The sampler's settings for one run, picked by `choose` on one checkpoint (the run's
    last) from the grid STEP_SIZES x TEMPERATURES, with every grid point's estimate recorded
    (an LLC flat over step sizes, from chains that converge without spikes). It stops at the
    first (n_beta, localization) with a flat range; with no healthy neighbours in the whole
    grid, `base` is kept."""
    rows, loss = training_rows(task, base.samples, base.seed), task_loss(task.loss_start)
    grid = []
    for n_beta, localization in TEMPERATURES:
        for lr in STEP_SIZES:
            settings = replace(base, lr=lr, n_beta=n_beta, localization=localization)
            result = estimate(model, rows, loss, settings, device=device)
            grid.append({"lr": lr, "n_beta": n_beta, "localization": localization,
                         "llc": result.llc, "std": result.std, "healthy": result.healthy,
                         "reasons": list(result.reasons)})
        index, flat = choose(grid)
        if flat:
            break
    chosen = {} if index is None else {k: grid[index][k] for k in ("lr", "n_beta",
                                                                    "localization")}
    rule = (f"largest step size of {list(STEP_SIZES)} whose healthy LLC is within {FLAT:.0%} "
            f"of the next smaller one's, under the first (n_beta, localization) of "
            f"{[list(t) for t in TEMPERATURES]} that has one; else the flattest such pair; "
            "else the defaults")
    return {"settings": asdict(replace(base, **chosen)), "flat": flat, "rule": rule,
            "grid": grid}
