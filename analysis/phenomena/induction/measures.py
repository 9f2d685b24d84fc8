"""Induction heads (Olsson et al. 2022) measured on a model: prefix-matching and previous-token
scores per head from the attention patterns, the in-context-learning score and the loss on
repeated tokens. Torch only: the training loop scores them.
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor

from analysis.evaluate import Outputs


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
