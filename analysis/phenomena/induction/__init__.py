"""Induction heads (Olsson et al. 2022): the probes that score them on a model (`measures`), and
the phase change of the loss on repeated tokens with the head's formation beside it, its verdict
and figures (`report`, `figures`). This module is what training imports: torch only.
"""

from __future__ import annotations

from analysis.evaluate import Outputs
from analysis.phenomena import Probe
from analysis.phenomena.induction import measures

# The metrics the probes write (defined here, read by the report, the figures, the causal checks).
PER_HEAD = "prefix_matching/"  # + L0H1: each head's prefix-matching score
PREFIX_MATCHING_MAX = "prefix_matching_max"
PREVIOUS_TOKEN_MAX = "previous_token_max"
INDUCTION_LOSS = "induction_loss"
ICL_SCORE = "icl_score"


def prefix_matching(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Prefix-matching score of every head on the eval set, its max, and the max
    previous-token score (one cached pass)."""
    heads = measures.head_scores(model, task.eval_set())
    matching = heads["prefix_matching"]
    scores = {f"{PER_HEAD}L{layer}H{head}": value
              for layer, row in enumerate(matching.tolist()) for head, value in enumerate(row)}
    return scores | {PREFIX_MATCHING_MAX: matching.max().item(),
                     PREVIOUS_TOKEN_MAX: heads["previous_token"].max().item()}


def in_context(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """In-context-learning score and loss on the repeated tokens of the eval set."""
    return {ICL_SCORE: measures.icl_score(outputs["eval"]),
            INDUCTION_LOSS: measures.induction_loss(outputs["eval"])}


def applies(task) -> bool:
    return task.eval_set().attend is not None


PROBES = [
    Probe("prefix_matching", applies, prefix_matching),
    Probe("in_context", applies, in_context, ("eval",)),
]
