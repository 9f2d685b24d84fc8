"""Causal checks: the probes that zero-ablate parts of a model (`measures`) and the report's
"Causal checks" section (`report`). This module is what training imports: torch only.
"""

from __future__ import annotations

from analysis.evaluate import Outputs
from analysis.phenomena import Probe, grokking, induction
from analysis.phenomena.causal import measures

PREFIX = "causal/"  # every score of these probes
HEAD_LOSS = PREFIX + "head_loss/"  # + L0H1: that head ablated alone
LAYER_LOSS = PREFIX + "loss/"  # + attn_L0, mlp_L0, clean
PREVIOUS_TOKEN = "previous_token/"  # + L0H1: each head's previous-token score


def head_ablation(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Loss on the repeated tokens of the eval set with heads zero-ablated (causal/...): each
    head alone, the heads of prefix matching > 0.5 together, the top previous-token head; and
    every head's previous-token score."""
    found = measures.head_ablations(model, task.eval_set())
    per_head = {f"{HEAD_LOSS}L{layer}H{head}": value
                for layer, row in enumerate(found["per_head"].tolist())
                for head, value in enumerate(row)}
    previous = {f"{PREVIOUS_TOKEN}L{layer}H{head}": value
                for layer, row in enumerate(found["previous_token"].tolist())
                for head, value in enumerate(row)}
    return per_head | previous | {
        f"{PREFIX}clean_loss": found["clean"],
        f"{PREFIX}induction_heads_loss": found["induction_heads"],
        f"{PREFIX}n_induction_heads": float(found["n_induction_heads"]),
        f"{PREFIX}previous_token_head_loss": found["previous_token_head"]}


def layer_ablation(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Eval loss with each layer's attention or MLP zero-ablated (causal/loss/attn_L0, ...)."""
    return {f"{LAYER_LOSS}{part}": value
            for part, value in measures.layer_ablations(model, task.eval_set()).items()}


PROBES = [
    Probe("head_ablation", induction.applies, head_ablation),
    Probe("layer_ablation", grokking.modular, layer_ablation),
]
