"""Grokking (Power et al. 2022) and its progress measures (Nanda et al. 2023): the probes that
score a modular-arithmetic model (`measures`), and the memorization and generalization steps,
the lead of the restricted loss, the verdict and the figure (`report`). This module is what
training imports: torch only.
"""

from __future__ import annotations

from analysis import metrics
from analysis.evaluate import Outputs
from analysis.phenomena import Probe
from analysis.phenomena.grokking import measures
from tasks.modular import Modular

# The metrics the probes write (defined here, read by the report and the figures).
WEIGHT_NORM = "weight_norm"
TRAIN_TEST_GAP = "train_test_gap"
FOURIER = "fourier_top_fraction"


def weight_norm(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    return {WEIGHT_NORM: measures.weight_norm(model)}


def train_test_gap(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Train accuracy minus test accuracy: ~1 while memorized, ~0 once grokked."""
    return {TRAIN_TEST_GAP: metrics.exact_match(outputs["train_eval"])
            - metrics.exact_match(outputs["eval"])}


def fourier(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Share of the number embeddings' norm in their key frequencies (Nanda et al. 2023)."""
    return {FOURIER: measures.fourier_embedding(model, task.cfg.p)["top_fraction"]}


def progress_measures(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    return measures.progress_measures(model, task)


def modular(task) -> bool:
    return isinstance(task, Modular)


def _modular_addition(task) -> bool:  # the Fourier circuit is the known algorithm for addition
    return isinstance(task, Modular) and task.cfg.op == "add"


PROBES = [
    Probe("weight_norm", modular, weight_norm),
    Probe("train_test_gap", modular, train_test_gap, ("eval", "train_eval")),
    Probe("fourier", _modular_addition, fourier),
    Probe("progress", measures.applies, progress_measures),
]
