"""Causal checks measured on a model: the loss with heads, attention or MLP outputs zero-ablated
through the model's hooks. Torch only (the training loop may score them)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from analysis.phenomena.induction.measures import head_scores
from models import hooks as model_hooks


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
