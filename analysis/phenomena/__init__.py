"""The phenomena the analysis knows, one module or package each, and the interface they share.

A phenomenon joins by one line in PHENOMENA: the module that reads its tables (it may import
pandas and matplotlib). Where the phenomenon measures something on a model, that module sits in a
package whose `__init__` lists the measurements as PROBES: the training process imports the
probes (torch only), never the tables' side. Every attribute below is optional; the scoring
entry, the summary, the figures and the report read them through this registry, in its order.

Probes (the package's `__init__`):
- `PROBES`: [Probe]; scored by `analysis.scoring.score`.

Statistics (the module):
- `step_statistics(x, wide, finite) -> {(metric, statistic): (value, why none)}`: of one seed's
  curve along steps (`wide`: a column per metric, indexed by step; `finite`: whether the run
  trains on a finite set it could memorize).
- `NON_NEGATIVE`: statistics whose interval over seeds is cut at zero.
- `EXCLUDED`: metric prefixes (per head, per position) that are no curves of their own.
- `STEP_EVENTS`, `STEP_EVENTS_TEXT`: statistics along steps that the report's events table
  lists, and the sentence that explains them.
- `STEP_MARKS`: statistics that are a step where something happens, which other phenomena's
  figures along steps may mark (the LLC's).
- `KEY_METRICS`: final metrics the report's runs table shows.

Report (the module; `evidence` is analysis.report.Evidence):
- `findings(evidence) -> list[str]`: sentences for the report's opening Findings.
- `statistics_section(evidence) -> str | None`: placed after the runs, before the events.
- `events_notes(evidence, events) -> list[str]`: paragraphs above the events table.
- `section(evidence) -> str | None`: placed before the figures.
- `verdicts(summary) -> list[str]`: lines for the Verdicts over the whole summary;
  `step_verdict(rows) -> str | None`: the line of one series along steps.
- `rules() -> str`: the rule its verdicts follow, for the text above them.
- `figures(df, by_slice, runs) -> {name: Figure | None}`: of one task's scores.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

PHENOMENA = ("mirage", "subskills.report", "grokking.report", "induction.report", "plateau",
             "causal.report", "forecast", "stages.detect", "transfer")


@dataclass(frozen=True)
class Probe:
    name: str  # what train.eval_probes lists
    applies: Callable[[object], bool]  # task -> whether the probe means anything for it
    fn: Callable[..., dict[str, float]]  # (model, task, outputs) -> scores
    reads: tuple[str, ...] = ()  # the scored sets it needs
    opt_in: bool = False  # scored only where named (it costs sampling), not by default


def probes() -> list[Probe]:
    """Every phenomenon's PROBES, from the packages' light `__init__` modules."""
    packages = [name.rsplit(".", 1)[0] for name in PHENOMENA if "." in name]
    return [probe for package in packages
            for probe in getattr(importlib.import_module(f"{__name__}.{package}"), "PROBES", ())]


@functools.cache
def modules() -> tuple:
    """The phenomena's table-reading modules, in PHENOMENA's order."""
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in PHENOMENA)


def gather(attribute: str) -> tuple:
    """An attribute over every phenomenon, in order: a tuple's items (STEP_EVENTS,
    NON_NEGATIVE, ...) or a string (STEP_EVENTS_TEXT)."""
    found = [getattr(module, attribute) for module in modules() if hasattr(module, attribute)]
    return tuple(item for value in found
                 for item in ((value,) if isinstance(value, str) else value))


def having(hook: str) -> list[Callable]:
    """The phenomena's functions named `hook`, in order."""
    return [getattr(module, hook) for module in modules() if hasattr(module, hook)]
