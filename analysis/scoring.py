"""One scoring entry, `score(model, task)`, for the training loop's evaluations and for
`python -m analysis`: which fixed sets a model is scored on, the metrics on each (on the whole
set and per slice), and the probes that read the model or the outputs.

A probe is one function (model, task, outputs by set name) -> {name: value} and one `Probe` in
its phenomenon's PROBES (analysis.phenomena), saying which tasks it applies to and which scored
sets it reads. The loop logs the probes named in `train.eval_probes`; analysis scores every
probe that applies, but the opt-in ones (the LLC: `python -m analysis DIR --llc`).
"""

from __future__ import annotations

import contextlib

from analysis import metrics, phenomena, slices
from analysis.evaluate import evaluate

SETS = ("eval", "train_eval", "ood")


def fixed_sets(task, names=SETS) -> dict:
    """{name: Batch} of the task's fixed sets among `names` that exist and are not empty."""
    unknown = set(names) - set(SETS)
    if unknown:
        raise ValueError(f"sets={sorted(unknown)}: unknown; the fixed sets are {', '.join(SETS)}")
    found = {"eval": task.eval_set(), "train_eval": task.train_eval_set(), "ood": task.ood_set()}
    return {name: found[name] for name in names if found[name] is not None and len(found[name])}


PROBES = phenomena.probes()  # in the phenomena's order (analysis.phenomena.PHENOMENA)
PROBE_NAMES = tuple(probe.name for probe in PROBES)


def check_probes(names, key: str = "probes") -> None:
    """Raise naming `key` when a name is not a registered probe."""
    unknown = [name for name in names if name not in PROBE_NAMES]
    if unknown:
        raise ValueError(f"{key}={list(names)}: unknown probe(s) {unknown}; the probes are "
                         f"{', '.join(PROBE_NAMES)}")


# --- the entry --------------------------------------------------------------------------------


def score(model, task, sets=SETS, probes=None, slices_of: str | None = "all",
          autocast=contextlib.nullcontext) -> dict[str, float]:
    """Every score of `model` on `task`, as one flat dict:

    - `metrics.compute` on each fixed set in `sets` (`eval/exact_match`, `train_eval/loss`, ...);
    - per slice of the sets' attributes: every metric with slices_of="all" (`eval/loss@len_a=1`),
      only exact match on the task's main attribute with "main" (what training logs), none
      with None;
    - the probes named in `probes` (None: all but the opt-in ones) that apply to the task and
      whose sets were scored.

    `autocast` is the context the model runs under (the training loop's precision)."""
    probes = [p.name for p in PROBES if not p.opt_in] if probes is None else probes
    check_probes(probes)
    if slices_of not in ("all", "main", None):
        raise ValueError(f"slices_of={slices_of!r}: must be 'all', 'main' or None")
    scores, outputs = {}, {}
    for name, batch in fixed_sets(task, sets).items():
        with autocast():
            out = outputs[name] = evaluate(model, task, batch)
        scores |= {f"{name}/{k}": v for k, v in metrics.compute(out).items()}
        if slices_of == "all":
            per_slice = slices.by_slice(out, batch.attributes)
        elif slices_of == "main" and task.main_attribute in batch.attributes:
            per_slice = slices.by_slice(out, batch.attributes, [task.main_attribute],
                                        ["exact_match"])
        else:
            per_slice = {}
        scores |= {slices.key(f"{name}/{metric}", part): value
                   for part, values in per_slice.items() for metric, value in values.items()}
    for probe in PROBES:
        if probe.name in probes and set(probe.reads) <= set(outputs) and probe.applies(task):
            with autocast():
                scores |= probe.fn(model, task, outputs)
    return scores
