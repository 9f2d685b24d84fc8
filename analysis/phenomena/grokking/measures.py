"""Nanda et al. 2023's progress measures for grokking of modular addition, measured on a model.

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
scores of one checkpoint (the package's `report` reads them along training). Also the sum of
squared weights (`weight_norm`) and the sparsity of the number embeddings in the Fourier basis
over Z_p (`fourier_embedding`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

N_KEY = 5  # Nanda et al. find about five key frequencies
# The scores progress_measures writes (read by the report and the figures).
RESTRICTED_LOSS = "restricted_loss"
EXCLUDED_LOSS = "excluded_loss"


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
    scores = {RESTRICTED_LOSS: result["restricted_loss"],
              EXCLUDED_LOSS: result["excluded_loss"], "logit_key_share": result["key_share"]}
    scores |= {f"logit_key_freq/{i}": float(w) for i, w in enumerate(result["key_frequencies"])}
    return scores


def applies(task) -> bool:
    """Modular addition: the task whose algorithm (the Fourier circuit) these measures read."""
    cfg = getattr(task, "cfg", None)
    return getattr(cfg, "kind", None) == "modular" and getattr(cfg, "op", None) == "add"


def weight_norm(model) -> float:
    """Sum of squared weights over every parameter, which falls as the generalizing circuit
    replaces memorization (Nanda et al. 2023)."""
    return sum(p.detach().double().square().sum().item() for p in model.parameters())


def fourier_basis(p: int) -> Tensor:
    """Orthonormal Fourier basis over Z_p [p, p]: row 0 constant, then cos k and sin k for
    k = 1 .. (p - 1) / 2 (p odd), as in Nanda et al. 2023."""
    if p % 2 == 0:
        raise ValueError(f"task.p={p}: the Fourier view needs an odd modulus")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def fourier_embedding(model, p: int, n_key: int = 5) -> dict:
    """The number embeddings W_E[:p] in the Fourier basis over Z_p (Nanda et al. 2023).

    Returns `norms` (the embedding's norm at each frequency k = 0 .. (p - 1) / 2, cos and sin
    together), `key_frequencies` (the `n_key` largest, k >= 1: Nanda et al. find about five) and
    `top_fraction` (their share of the embedding's squared norm; ~n_key / (p / 2) at random
    init, near 1 once the embedding is sparse in frequency)."""
    embedding = model.embed.weight[:p].detach().double().cpu()  # [p, d_model]
    squared = (fourier_basis(p) @ embedding).square().sum(1)  # [p] per basis vector
    # Pair cos k (row 2k - 1) with sin k (row 2k); k = 0 is the constant alone.
    paired = rearrange(squared[1 : 1 + 2 * (p // 2)], "(k two) -> k two", two=2).sum(1)
    per_freq = torch.cat([squared[:1], paired])  # [p // 2 + 1]
    top = per_freq[1:].topk(min(n_key, p // 2)).indices + 1
    return {
        "norms": per_freq.sqrt().tolist(),
        "key_frequencies": sorted(top.tolist()),
        "top_fraction": (per_freq[top].sum() / per_freq.sum()).item(),
    }
