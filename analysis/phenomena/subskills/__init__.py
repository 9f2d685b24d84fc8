"""Which sub-skill appears where: the probe of each answer position's log-probability, and from
the per-slice scores (analysis.slices) the slice solved last, the findings, the "Where the errors
are" section and the figures (`report`). This module is what training imports: torch only.
"""

from __future__ import annotations

from analysis import metrics
from analysis.evaluate import Outputs
from analysis.phenomena import Probe

POSITION_PREFIX = "answer_position/logprob/"  # eval set, per answer position, for forecasts


def answer_positions(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Teacher-forced log-probability at each answer position of the eval set (for forecasts)."""
    by_position = metrics.answer_logprob_by_position(outputs["eval"])
    return {f"{POSITION_PREFIX}{i}": v for i, v in enumerate(by_position.tolist())}


def _answers(task) -> bool:
    return task.prompt_len is not None


PROBES = [Probe("answer_positions", _answers, answer_positions, ("eval",))]
