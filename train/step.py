"""What one training step computes, apart from the run's bookkeeping (train/state.py): the
masked next-token loss, torch's AdamW over the model's parameter groups, the learning-rate
schedule and torch.compile as the `compile` setting says. The plain update (train/loop.py) and
the ensemble's batched one (train/ensemble.py) are built from these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from models import GPT
from train.config import OptimConfig


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


def adamw(model: GPT, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """torch's AdamW over the model's parameter groups, fused (one kernel over every parameter)
    on CPU and CUDA: 2-7% of a small model's step on CPU (bench/RESULTS.md)."""
    groups = model.param_groups(optim.lr, optim.weight_decay, optim.decay_embeddings)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             fused=device.type in ("cpu", "cuda"))


def compiled(fn, setting: bool | str):
    """`fn` under torch.compile as the `compile` setting says (false: `fn` itself)."""
    if setting is False:
        return fn
    return torch.compile(fn, mode=None if setting is True else setting)


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the masked positions of logits [B, T, V]. Weighting, not
    boolean indexing: an indexed tensor's size depends on the data, which costs a host sync."""
    ce = F.cross_entropy(rearrange(logits, "b t v -> b v t"), targets, reduction="none")  # [B, T]
    weight = mask.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp(min=1)
