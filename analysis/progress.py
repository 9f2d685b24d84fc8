"""Nanda et al. 2023's progress measures for grokking of modular addition.

A model that has grokked a + b mod p computes its logits from a few key frequencies w: the logit
of c is a sum of cos(2 pi w (a + b - c) / p) terms (the Fourier multiplication algorithm).
From the logits over all p^2 pairs (`pair_logits`):

- key frequencies: the `n_key` frequencies w whose cos/sin(w(a + b - c)) components carry the
  most energy of the logits centred over c (`logit_frequencies`);
- restricted loss: the training loss with the logits kept only on those components (plus the
  mean over c): low once the circuit is there, whatever memorization does;
- excluded loss: the training loss with those components removed: what memorization alone
  still explains; it rises as the circuit takes over the fit of the training pairs.

Restricted loss falls, and excluded loss rises, during circuit formation: hundreds of steps
before test accuracy moves at CPU scale (docs/experiments.md). `progress_measures` returns the
scores of one checkpoint; `lead` reads them along training; `draw` adds them to a figure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pandas is imported where tables are read, not by training
    import pandas as pd

N_KEY = 5  # Nanda et al. find about five key frequencies


@torch.no_grad()
def pair_logits(model, p: int) -> Tensor:
    """Logits of the answers c = 0 .. p-1 for every pair: [a, b, c] (inputs `a b =`)."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(tokens.to(device), start=2)[:, -1, :p]
    finally:
        model.train(was_training)
    return logits.double().cpu().reshape(p, p, p)


def _components(centred: Tensor, p: int) -> Tensor:
    """Coefficients [n_freq, 2] of the centred logits on cos and sin of w(a + b - c), w = 1 ..
    (p - 1) / 2, each basis function normalized over all p^3 (a, b, c). The logits' sum over
    each residue s = a + b - c mod p is a length-p signal whose DFT gives them all at once."""
    idx = torch.arange(p)
    s = (idx[:, None, None] + idx[None, :, None] - idx[None, None, :]) % p
    signal = torch.zeros(p, dtype=torch.float64).index_add_(0, s.flatten(), centred.flatten())
    w = torch.arange(1, p // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * w * torch.arange(p, dtype=torch.float64) / p  # [n_freq, p]
    norm = math.sqrt(p**3 / 2)  # of cos(w(a+b-c)) over the cube, w != 0
    return torch.stack([(signal * angle.cos()).sum(1), (signal * angle.sin()).sum(1)], 1) / norm


def _wave(coefficients: Tensor, freqs: Tensor, p: int) -> Tensor:
    """sum over `freqs` of the components [p, p, p] with the given coefficients."""
    idx = torch.arange(p, dtype=torch.float64)
    s = idx[:, None, None] + idx[None, :, None] - idx[None, None, :]
    angle = 2 * math.pi * freqs.double()[:, None, None, None] * s / p
    norm = math.sqrt(p**3 / 2)
    c = coefficients[freqs - 1]
    return ((c[:, 0, None, None, None] * angle.cos() + c[:, 1, None, None, None] * angle.sin())
            / norm).sum(0)


def logit_frequencies(logits: Tensor, n_key: int = N_KEY) -> dict:
    """`energy` [(p - 1) / 2] of each frequency w = 1 .. in the centred logits, the `n_key`
    `key` frequencies (the largest) and their `share` of the centred logits' squared norm."""
    p = logits.shape[0]
    centred = logits - logits.mean(-1, keepdim=True)
    coefficients = _components(centred, p)
    energy = coefficients.square().sum(1)
    key = energy.topk(min(n_key, p // 2)).indices + 1
    return {"coefficients": coefficients, "energy": energy, "key": key.sort().values,
            "share": float(energy[key - 1].sum() / centred.square().sum())}


def restricted_excluded(logits: Tensor, a: Tensor, b: Tensor, target: Tensor,
                        n_key: int = N_KEY) -> dict[str, float | list[int]]:
    """Cross-entropy on the pairs (a, b) -> target of the full, restricted and excluded logits
    (see the module docstring), the key frequencies and their energy share."""
    p = logits.shape[0]
    freqs = logit_frequencies(logits, n_key)
    key_part = _wave(freqs["coefficients"], freqs["key"], p)
    variants = {"loss": logits, "restricted_loss": logits.mean(-1, keepdim=True) + key_part,
                "excluded_loss": logits - key_part}
    out = {name: F.cross_entropy(v[a, b], target).item() for name, v in variants.items()}
    return out | {"key_frequencies": freqs["key"].tolist(), "key_share": freqs["share"]}


def progress_measures(model, task, n_key: int = N_KEY) -> dict[str, float]:
    """Scores of one checkpoint of a modular-addition run, on its training pairs:
    `restricted_loss`, `excluded_loss`, `logit_key_share` (the key frequencies' share of the
    centred logits) and `logit_key_freq/<i>` (the i-th smallest key frequency)."""
    p = task.cfg.p
    train = task.train_set()
    a, b = train.tokens[:, 0].cpu(), train.tokens[:, 1].cpu()
    result = restricted_excluded(pair_logits(model, p), a, b, train.targets[:, -1].cpu(), n_key)
    scores = {"restricted_loss": result["restricted_loss"],
              "excluded_loss": result["excluded_loss"], "logit_key_share": result["key_share"]}
    scores |= {f"logit_key_freq/{i}": float(w) for i, w in enumerate(result["key_frequencies"])}
    return scores


def applies(task) -> bool:
    """Modular addition: the task whose algorithm (the Fourier circuit) these measures read."""
    cfg = getattr(task, "cfg", None)
    return getattr(cfg, "kind", None) == "modular" and getattr(cfg, "op", None) == "add"


def lead(curve: pd.DataFrame, memorized: float = 0.99, generalized: float = 0.95) -> dict:
    """From one run's table indexed by step with `train_eval/exact_match`,
    `eval/exact_match`, `restricted_loss`, `excluded_loss`: the memorization step (train
    accuracy first >= `memorized`), the first step after it where restricted loss is below half
    its memorization-time value, the first step test accuracy reaches `generalized`, the lead
    between the two in steps and in evaluations, and excluded loss at the halving step relative
    to its memorization-time value. NaN where an event does not happen."""
    import pandas as pd

    curve = curve.sort_index()
    nan = {k: math.nan for k in ("memorization_step", "restricted_halved_step",
                                 "generalization_step", "lead_steps", "lead_evaluations",
                                 "excluded_ratio")}

    def first(mask) -> float:
        hits = curve.index[mask.to_numpy()]
        return float(hits[0]) if len(hits) else math.nan

    memorization = first(curve["train_eval/exact_match"] >= memorized)
    if math.isnan(memorization):
        return nan
    at_memorization = curve.loc[memorization]
    after = curve.index >= memorization
    halved = first(pd.Series(after, curve.index) & (curve["restricted_loss"]
                                                   < at_memorization["restricted_loss"] / 2))
    generalization = first(curve["eval/exact_match"] >= generalized)
    steps = curve.index.to_numpy(dtype=float)
    evaluations = (int(np.sum((steps >= halved) & (steps < generalization)))
                   if not (math.isnan(halved) or math.isnan(generalization)) else math.nan)
    ratio = (curve.loc[halved, "excluded_loss"] / at_memorization["excluded_loss"]
             if not math.isnan(halved) else math.nan)
    return {"memorization_step": memorization, "restricted_halved_step": halved,
            "generalization_step": generalization, "lead_steps": generalization - halved,
            "lead_evaluations": evaluations, "excluded_ratio": float(ratio)}


def draw(ax, table: pd.DataFrame) -> None:
    """Training, restricted and excluded loss against step on `ax` (log y), with the steps
    where restricted loss has halved and where test accuracy reaches 0.95 (`lead`) marked."""
    for column, label, style in (("train_eval/loss", "train loss", "-"),
                                 ("restricted_loss", "restricted loss", "-"),
                                 ("excluded_loss", "excluded loss", "--")):
        if column in table:
            curve = table[column].dropna()
            ax.plot(curve.index, curve.to_numpy(), style, label=label)
    if {"train_eval/exact_match", "eval/exact_match", "excluded_loss"} <= set(table.columns):
        events = lead(table[table["restricted_loss"].notna()])
        for step, label, color in ((events["restricted_halved_step"], "restricted loss halved",
                                    "C1"), (events["generalization_step"],
                                            "test accuracy 0.95", "black")):
            if math.isfinite(step):
                ax.axvline(step, color=color, ls=":", label=f"{label} (step {step:.0f})")
    ax.set(yscale="log", xlabel="step", ylabel="loss on training pairs",
           title="progress measures (Nanda et al. 2023)")
    ax.legend(fontsize="small")
