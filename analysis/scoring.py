"""One scoring entry, `score(model, task)`, for the training loop's evaluations and for
`python -m analysis`: which fixed sets a model is scored on, the metrics on each (on the whole
set and per slice), and the probes that read the model or the outputs.

A probe is one function (model, task, outputs by set name) -> {name: value} and one line in
`PROBES`, saying which tasks it applies to and which scored sets it reads. The loop logs the
probes named in `train.eval_probes`; analysis scores every probe that applies, but the
opt-in ones (the LLC: `python -m analysis DIR --llc`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from analysis import mechanistic, metrics, progress, slices
from analysis.evaluate import Outputs, evaluate
from analysis.stages import llc
from tasks.modular import Modular

SETS = ("eval", "train_eval", "ood")


def fixed_sets(task, names=SETS) -> dict:
    """{name: Batch} of the task's fixed sets among `names` that exist and are not empty."""
    unknown = set(names) - set(SETS)
    if unknown:
        raise ValueError(f"sets={sorted(unknown)}: unknown; the fixed sets are {', '.join(SETS)}")
    found = {"eval": task.eval_set(), "train_eval": task.train_eval_set(), "ood": task.ood_set()}
    return {name: found[name] for name in names if found[name] is not None and len(found[name])}


# --- probes -----------------------------------------------------------------------------------


def answer_positions(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Teacher-forced log-probability at each answer position of the eval set (for forecasts)."""
    by_position = metrics.answer_logprob_by_position(outputs["eval"])
    return {f"{mechanistic.POSITION_PREFIX}{i}": v for i, v in enumerate(by_position.tolist())}


def prefix_matching(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Prefix-matching score of every head on the eval set, its max, and the max
    previous-token score (one cached pass)."""
    heads = mechanistic.head_scores(model, task.eval_set())
    matching = heads["prefix_matching"]
    scores = {f"prefix_matching/L{layer}H{head}": value
              for layer, row in enumerate(matching.tolist()) for head, value in enumerate(row)}
    return scores | {"prefix_matching_max": matching.max().item(),
                     "previous_token_max": heads["previous_token"].max().item()}


def in_context(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """In-context-learning score and loss on the repeated tokens of the eval set."""
    return {"icl_score": mechanistic.icl_score(outputs["eval"]),
            "induction_loss": mechanistic.induction_loss(outputs["eval"])}


def head_ablation(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Loss on the repeated tokens of the eval set with heads zero-ablated (causal/...): each
    head alone, the heads of prefix matching > 0.5 together, the top previous-token head; and
    every head's previous-token score."""
    found = mechanistic.head_ablations(model, task.eval_set())
    per_head = {f"causal/head_loss/L{layer}H{head}": value
                for layer, row in enumerate(found["per_head"].tolist())
                for head, value in enumerate(row)}
    previous = {f"previous_token/L{layer}H{head}": value
                for layer, row in enumerate(found["previous_token"].tolist())
                for head, value in enumerate(row)}
    return per_head | previous | {
        "causal/clean_loss": found["clean"],
        "causal/induction_heads_loss": found["induction_heads"],
        "causal/n_induction_heads": float(found["n_induction_heads"]),
        "causal/previous_token_head_loss": found["previous_token_head"]}


def layer_ablation(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Eval loss with each layer's attention or MLP zero-ablated (causal/loss/attn_L0, ...)."""
    return {f"causal/loss/{part}": value
            for part, value in mechanistic.layer_ablations(model, task.eval_set()).items()}


def weight_norm(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    return {"weight_norm": mechanistic.weight_norm(model)}


def train_test_gap(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Train accuracy minus test accuracy: ~1 while memorized, ~0 once grokked."""
    return {"train_test_gap": metrics.exact_match(outputs["train_eval"])
            - metrics.exact_match(outputs["eval"])}


def fourier(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    """Share of the number embeddings' norm in their key frequencies (Nanda et al. 2023)."""
    return {"fourier_top_fraction": mechanistic.fourier_embedding(model, task.cfg.p)[
        "top_fraction"]}


def progress_measures(model, task, outputs: dict[str, Outputs]) -> dict[str, float]:
    return progress.progress_measures(model, task)


@dataclass(frozen=True)
class Probe:
    name: str  # what train.eval_probes lists
    applies: Callable[[object], bool]  # task -> whether the probe means anything for it
    fn: Callable[..., dict[str, float]]  # (model, task, outputs) -> scores
    reads: tuple[str, ...] = ()  # the scored sets it needs
    opt_in: bool = False  # scored only where named (it costs sampling), not by default


def _answers(task) -> bool:
    return task.prompt_len is not None


def _induction(task) -> bool:
    return task.eval_set().attend is not None


def _modular(task) -> bool:
    return isinstance(task, Modular)


def _modular_addition(task) -> bool:  # the Fourier circuit is the known algorithm for addition
    return isinstance(task, Modular) and task.cfg.op == "add"


PROBES = [
    Probe("answer_positions", _answers, answer_positions, ("eval",)),
    Probe("prefix_matching", _induction, prefix_matching),
    Probe("in_context", _induction, in_context, ("eval",)),
    Probe("head_ablation", _induction, head_ablation),
    Probe("weight_norm", _modular, weight_norm),
    Probe("train_test_gap", _modular, train_test_gap, ("eval", "train_eval")),
    Probe("fourier", _modular_addition, fourier),
    Probe("layer_ablation", _modular, layer_ablation),
    Probe("progress", progress.applies, progress_measures),
    Probe("llc", llc.applies, llc.probe, opt_in=True),
]
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
