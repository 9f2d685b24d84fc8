"""Mechanistic progress measures (`analysis.scoring` registers them as probes).

- Induction heads (Olsson et al. 2022): prefix-matching and previous-token scores per head from
  the attention patterns, the in-context-learning score and the loss on repeated tokens.
- Grokking (Nanda et al. 2023): the sum of squared weights and the sparsity of the number
  embeddings in the Fourier basis over Z_p.
- Causal checks: the loss with heads, attention or MLPs ablated through the model's hooks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from analysis.evaluate import Outputs
from models import hooks as model_hooks

POSITION_PREFIX = "answer_position/logprob/"  # eval set, per answer position, for forecasts


@torch.no_grad()
def head_scores(model, batch, batch_size: int = 1024) -> dict[str, Tensor]:
    """Attention scores [n_layers, n_heads] of every head from one cached pass over `batch`:
    "previous_token", and "prefix_matching" where the batch has `attend`.

    prefix_matching (Olsson et al. 2022): mean attention from each query with
    batch.attend >= 0 to the token after the earlier occurrence of the query's token; a perfect
    induction head scores ~1, uniform causal attention the mean of 1/(q+1) over those queries.
    previous_token: mean attention from each position q >= 1 to q - 1, the heads induction
    heads compose with."""
    n, seq = batch.tokens.shape
    keys = {"previous_token": torch.arange(-1, seq - 1).expand(n, -1)}  # q = 0 not counted
    if batch.attend is not None:
        keys["prefix_matching"] = batch.attend.cpu()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals, counts = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0)
    try:
        for lo in range(0, n, batch_size):
            _, cache = model(batch.tokens[lo : lo + batch_size].to(device), cache=True)
            patterns = [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(len(model.blocks))]
            pattern = torch.stack(patterns).float()  # [L, B, H, Q, K]
            n_layers, _, n_heads, _, _ = pattern.shape
            for name, key in keys.items():
                key = key[lo : lo + batch_size].to(device)
                index = key.clamp(min=0)[None, :, None, :, None].expand(n_layers, -1, n_heads,
                                                                         -1, 1)
                to_key = pattern.gather(-1, index).squeeze(-1)  # [L, B, H, Q]
                counted = (key >= 0)[None, :, None, :]
                totals[name] = totals[name] + reduce(to_key * counted, "l b h q -> l h",
                                                     "sum").cpu()
                counts[name] += int(counted.sum())
    finally:
        model.train(was_training)
    return {name: totals[name] / max(counts[name], 1) for name in keys}


def prefix_matching(model, batch) -> Tensor:
    """Prefix-matching score [n_layers, n_heads] (see head_scores)."""
    if batch.attend is None:
        raise ValueError("prefix matching needs a batch with `attend` (e.g. an induction "
                         "task's eval set)")
    return head_scores(model, batch)["prefix_matching"]


def previous_token_score(model, batch) -> Tensor:
    """Previous-token score [n_layers, n_heads] (see head_scores)."""
    return head_scores(model, batch)["previous_token"]


def _loss_by_position(out: Outputs) -> Tensor:
    """Mean loss at each position [T] over all examples (NaN where not computed)."""
    return -out.logprob.double().mean(0)


def icl_score(out: Outputs, early: int | None = None, late: int | None = None) -> float:
    """In-context-learning score (Olsson et al. 2022): mean loss at a late position minus mean
    loss at an early one; negative when later tokens, with more context, are predicted better.

    Olsson compare the 500th and the 50th token. Defaults keep their 10:1 ratio for short
    contexts: `late` = the last position, `early` = late / 10, moved up to the first position
    whose logits were computed (`task.loss_start`)."""
    loss = _loss_by_position(out)
    late = loss.shape[0] - 1 if late is None else late
    if early is None:
        first = int(loss.isfinite().nonzero()[0])
        early = max(round(late / 10), first)
    return (loss[late] - loss[early]).item()


def induction_loss(out: Outputs) -> float:
    """Mean loss on the repeated tokens: the masked positions whose next token an induction
    head can copy (attend >= 0); all masked positions if the batch has no `attend`."""
    counted = out.mask if out.attend is None else out.mask & (out.attend >= 0)
    return -out.logprob[counted].double().mean().item()


@torch.no_grad()
def ablated_loss(model, batch, hooks: dict, repeated: bool = False,
                 batch_size: int = 1024) -> float:
    """Mean loss over batch.mask (and attend >= 0 with `repeated`: the repeated tokens, as in
    induction_loss) of `model(tokens, hooks=hooks)`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counted = batch.mask & (batch.attend >= 0) if repeated else batch.mask
    total, count = 0.0, 0
    try:
        for lo in range(0, len(batch.tokens), batch_size):
            part = slice(lo, lo + batch_size)
            logits = model(batch.tokens[part].to(device), hooks=hooks).float()
            loss = F.cross_entropy(logits.flatten(0, 1), batch.targets[part].to(device).flatten(),
                                   reduction="none")
            keep = counted[part].to(device).flatten()
            total += loss[keep].double().sum().item()
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def head_ablations(model, batch, threshold: float = 0.5) -> dict:
    """The loss on the repeated tokens with heads zero-ablated (their z before the output
    projection set to 0): `clean`; `per_head` [n_layers, n_heads], each head alone;
    `induction_heads`, every head of prefix matching > `threshold` together (NaN if none);
    `previous_token_head`, the head of the highest previous-token score alone. Heads are often
    redundant, so a set can matter where each member alone barely does. Also the heads'
    `prefix_matching` and `previous_token` scores (head_scores)."""
    scores = head_scores(model, batch)
    matching, previous = scores["prefix_matching"], scores["previous_token"]
    n_heads = matching.shape[1]
    heads = [(layer, head) for layer in range(matching.shape[0]) for head in range(n_heads)]

    def loss(ablated) -> float:
        return ablated_loss(model, batch, model_hooks.ablate_heads(ablated), repeated=True)

    induction = [h for h in heads if matching[h] > threshold]
    top_previous = divmod(int(previous.argmax()), n_heads)
    return {"clean": loss([]),
            "per_head": torch.tensor([loss([h]) for h in heads], dtype=torch.float64)
            .view_as(matching),
            "induction_heads": loss(induction) if induction else math.nan,
            "n_induction_heads": len(induction),
            "previous_token_head": loss([top_previous]), "top_previous_token": top_previous,
            "prefix_matching": matching, "previous_token": previous}


def layer_ablations(model, batch) -> dict[str, float]:
    """The loss on batch.mask with each layer's attention (`attn_L{i}`) or MLP (`mlp_L{i}`)
    output zeroed (projection bias included), and `clean`."""
    losses = {"clean": ablated_loss(model, batch, {})}
    for i, block in enumerate(model.blocks):
        parts = {"attn": "hook_attn_out"} | ({} if block.mlp is None else {"mlp": "hook_mlp_out"})
        for part, point in parts.items():
            losses[f"{part}_L{i}"] = ablated_loss(model, batch,
                                                  model_hooks.zero(f"blocks.{i}.{point}"))
    return losses


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
