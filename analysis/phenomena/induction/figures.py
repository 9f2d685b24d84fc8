"""The induction figures: the loss on repeated tokens with each seed's phase change and max
prefix matching beside it, the prefix-matching heatmap of the best checkpoint, and the
attention pattern of its top head.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from analysis import plots
from analysis.phenomena.induction import (
    INDUCTION_LOSS,
    PER_HEAD,
    PREFIX_MATCHING_MAX,
    measures,
    report,
)
from analysis.runs import BAD_ITEM, Run

HEAD = re.compile(re.escape(PER_HEAD) + r"L(\d+)H(\d+)")


def induction_phase_change(df: pd.DataFrame) -> Figure:
    """Induction loss against step, a colour per series (size and setting; seeds thin, their
    mean bold), each seed's phase change (report.phase_change) dotted where it has one, and
    the series' mean largest prefix-matching score dashed on a twin axis (Olsson et al. 2022)."""
    loss = df[df["metric"] == INDUCTION_LOSS]
    matching = df[df["metric"] == PREFIX_MATCHING_MAX]
    panels = plots.split_panels(loss, [*plots.size_keys(loss), *plots.series_keys(loss)], [])
    fig, axes = plots.grid(len(panels))
    for ax, (_, series) in zip(axes, panels, strict=True):
        twin = ax.twinx() if len(matching) else None
        for colour, (label, rows) in zip(plots.colours(len(series)), series, strict=True):
            plots.seeds_and_mean(ax, rows, "step", colour, plots.series_label(label, rows))
            for _, run in rows.groupby("run"):
                change = report.phase_change(run["step"], run["value"])
                if np.isfinite(change["step"]):  # none where the loss never falls enough
                    ax.axvline(change["step"], color=colour, linestyle=":", lw=1, alpha=0.8)
            if twin is not None:
                mean = matching[matching["run"].isin(rows["run"])].groupby("step")["value"]
                twin.plot(mean.mean().index, mean.mean().to_numpy(), color=colour,
                          linestyle="--", alpha=0.7)
        plots.set_log_x(ax, df["step"])
        ax.set(xlabel="step", ylabel="induction loss (solid; dotted: phase change)",
               title="induction heads: loss on repeated tokens")
        if twin is not None:
            twin.set(ylabel="max prefix matching (dashed)", ylim=(-0.02, 1.02))
        plots.legend(ax, len(series))
    return fig


def prefix_matching_heatmap(df: pd.DataFrame, run: str | None = None,
                            step: int | None = None) -> Figure:
    """Prefix-matching score of every head (layer x head) of one checkpoint; by default the
    checkpoint with the highest score of all."""
    if run is None or step is None:
        best = df[df["metric"] == PREFIX_MATCHING_MAX].sort_values("value").iloc[-1]
        run, step = best["run"], int(best["step"])
    rows = df[(df["run"] == run) & (df["step"] == step)]
    heads = {tuple(map(int, m.groups())): v for name, v in zip(rows["metric"], rows["value"],
             strict=True) if (m := HEAD.fullmatch(name))}
    matrix = np.full((max(k[0] for k in heads) + 1, max(k[1] for k in heads) + 1), np.nan)
    for (layer, head), value in heads.items():
        matrix[layer, head] = value
    fig = Figure(figsize=(1.2 + 0.8 * matrix.shape[1], 1.2 + 0.7 * matrix.shape[0]),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for (layer, head), value in heads.items():
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize="small",
                color="white" if value < 0.5 else "black")
    ax.set(xlabel="head", ylabel="layer", xticks=range(matrix.shape[1]),
           yticks=range(matrix.shape[0]), title=f"prefix matching, {run} step {step}")
    fig.colorbar(image, ax=ax)
    return fig


@torch.no_grad()
def attention_pattern(model, batch, layer: int | None = None, head: int | None = None,
                      example: int = 0, vocab: list[str] | None = None) -> Figure:
    """Attention pattern of one head on one sequence of `batch`, by default the head with the
    highest prefix-matching score; dots mark where an induction head should attend."""
    if layer is None or head is None:
        scores = measures.prefix_matching(model, batch)
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
    tokens = batch.tokens[example : example + 1].to(next(model.parameters()).device)
    was_training = model.training
    _, cache = model.eval()(tokens, cache=True)
    model.train(was_training)
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].float().cpu().numpy()
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
    if batch.attend is not None:
        query = np.flatnonzero(batch.attend[example].cpu().numpy() >= 0)
        key = batch.attend[example].cpu().numpy()[query]
        ax.scatter(key, query, s=6, color="red", label="induction target")
        ax.legend(fontsize="small", loc="upper right")
    if vocab is not None and len(pattern) <= 48:
        labels = [vocab[t] for t in tokens[0].tolist()]
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set(xlabel="key position", ylabel="query position",
           title=f"attention pattern, layer {layer} head {head}")
    fig.colorbar(image, ax=ax)
    return fig


def _top_head_attention(df: pd.DataFrame, runs: dict[str, Run]) -> Figure | None:
    """attention_pattern of the checkpoint with the highest prefix-matching score, or None
    if that checkpoint cannot be loaded."""
    best = df[df["metric"] == PREFIX_MATCHING_MAX].sort_values("value").iloc[-1]
    run = runs.get(best["run"])
    if run is None:
        return None
    try:
        model = run.load_model(int(best["step"]))
        task = run.task()
    except BAD_ITEM:
        return None
    return attention_pattern(model, task.eval_set(), vocab=task.vocab)


def figures(df: pd.DataFrame, by_slice, runs: list[Run]) -> dict[str, Figure | None]:
    """The phase change where there is an induction loss; the heatmap and the top head's
    attention where there is prefix matching."""
    metrics, found = set(df["metric"]), {}
    if INDUCTION_LOSS in metrics:
        found["induction"] = induction_phase_change(df)
    if PREFIX_MATCHING_MAX in metrics:
        found["prefix_matching"] = prefix_matching_heatmap(df)
        found["attention"] = _top_head_attention(df, {run.name: run for run in runs})
    return found
