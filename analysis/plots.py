"""Figures: a scores table (see analysis.runs.score) in, a matplotlib Figure out.

Built on `matplotlib.figure.Figure` rather than pyplot, so no global figure state or GUI backend
is involved (PNG through Agg); in a notebook a returned Figure displays itself. Parameters,
FLOPs and steps are drawn on log axes (symlog when step 0 is present). Curves average over
seeds, with each seed's points drawn faintly behind.

`make_figures` draws every figure that applies to the data at hand and saves them as PNG.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis import emergence, mechanistic, progress
from analysis.mechanistic import POSITION_PREFIX as POSITION
from analysis.runs import BAD_ITEM, Run

HEAD = re.compile(r"prefix_matching/L(\d+)H(\d+)")
MIRAGE_METRICS = ("exact_match", "token_accuracy", "edit_distance", "answer_logprob")


def _set_log_x(ax, x) -> None:
    x = np.asarray(x, dtype=float)
    positive = x[x > 0]
    if len(positive) and (x <= 0).any():
        ax.set_xscale("symlog", linthresh=positive.min())
    elif len(positive):
        ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labels on decades only


def _final(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last checkpoint."""
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


# Small multiples: at most this many series (colours, legend entries) share a panel; a panel
# keeps its size in inches however many runs there are, so more series mean more panels.
MAX_SERIES = 8
PANEL = (5.2, 3.8)


def _series_keys(df: pd.DataFrame, exclude=()) -> list[str]:
    """Coordinates (not size, not seed) that take more than one value: one line each."""
    coords = [c for c in df.columns if c not in emergence.TABLE_COLUMNS]
    skip = {*emergence.SIZE_COORDS, "seed", *exclude}
    return [c for c in coords if c not in skip and df[c].nunique(dropna=False) > 1]


def _size_keys(df: pd.DataFrame) -> list[str]:
    """Coordinates that set the model's size and take more than one value."""
    return [c for c in emergence.SIZE_COORDS if c in df.columns
            and df[c].nunique(dropna=False) > 1]


def _label(keys: list[str], values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in zip(keys, values, strict=True))


def _by(df: pd.DataFrame, keys: list[str]):
    return df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]


def _grid(n: int, ncols: int = 4, panel=PANEL, sharey: bool = True):
    """A figure of n panels, each `panel` inches, in rows of up to `ncols` (as few empty slots
    as that allows); (figure, list of the n axes)."""
    ncols = min(range(min(n, ncols), 0, -1), key=lambda c: -n % c) if n > 1 else 1
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _first_column_ylabel(axes) -> None:
    """Panels that share a y axis: its label once, on the first column."""
    for ax in axes:
        if not ax.get_subplotspec().is_first_col():
            ax.set_ylabel("")


def _legend(ax, entries: int) -> None:
    """A legend in the corner the curves leave free: upper left where they rise (they start
    low), upper right where they fall. Matplotlib's "best" place is searched against every
    point drawn, which with hundreds of seeds' curves takes seconds a panel."""
    lines = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata()) > 1]
    rising = np.mean([np.asarray(y, dtype=float)[-1] - np.asarray(y, dtype=float)[0]
                      for y in lines]) > 0 if lines else True
    ax.legend(fontsize="small" if entries <= 4 else "x-small",
              loc="upper left" if rising else "upper right")


def _colours(n: int) -> list:
    """n colours in order (a ladder's rungs read from dark to light)."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return [colormaps["viridis"](v) for v in np.linspace(0, 0.9, n)]


def _seeds_and_mean(ax, rows: pd.DataFrame, x: str, colour, label: str, marker=None) -> None:
    """Each seed's curve (a run's along steps, a seed's across rungs) thin and faint, their mean
    over seeds bold: one legend entry."""
    thin = "run" if x == "step" else "seed" if "seed" in rows else "run"
    wide = rows.pivot_table(index=x, columns=thin, values="value", aggfunc="mean")
    if wide.shape[1] > 1:  # one call for all seeds: hundreds of runs draw at once
        ax.plot(wide.index, wide.to_numpy(), color=colour, lw=0.7, alpha=0.35)
    mean = wide.mean(axis=1)
    ax.plot(mean.index, mean.to_numpy(), color=colour, lw=2.2, marker=marker, ms=4,
            label=label)


def _order(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per series of `keys`, smallest model first; one unlabelled series without
    keys."""
    groups = [(_label(keys, k) if keys else "", rows) for k, rows in _by(df, keys)]
    return sorted(groups, key=lambda g: (g[1]["params"].min(), g[0]))


def _series_label(label: str, rows: pd.DataFrame) -> str:
    """A series' legend entry: its coordinates and, where one size, its parameter count."""
    if rows["params"].nunique() == 1:
        size = f"{int(rows['params'].iloc[0]):,} params"
        return f"{label} ({size})" if label else size
    return label or "all runs"


def _panels(df: pd.DataFrame, colour_keys: list[str], panel_keys: list[str]) -> list:
    """[(panel title, [(series label, rows), ...])]: a panel per setting of `panel_keys`, at
    most MAX_SERIES series each."""
    panels = []
    for key, rows in _by(df, panel_keys):
        series = _order(rows, colour_keys)
        name = _label(panel_keys, key) if panel_keys else ""
        panels += [(name, series[i:i + MAX_SERIES]) for i in range(0, len(series), MAX_SERIES)]
    return panels


def _params(series: pd.DataFrame) -> str:
    return f"{int(series['params'].iloc[0]):,} params"


def grouped(df: pd.DataFrame, x: str, ylabel: str, title: str, colour_keys: list[str],
            panel_keys: list[str], marker=None) -> Figure:
    """`value` against `x`: one panel per setting of `panel_keys` (split further when a panel
    would hold more than MAX_SERIES series), one colour per setting of `colour_keys` in it,
    each series its seeds thin and their mean bold, one legend entry per series."""
    panels = _panels(df, colour_keys, panel_keys)
    fig, axes = _grid(len(panels))
    for ax, (name, series) in zip(axes, panels, strict=True):
        for colour, (label, rows) in zip(_colours(len(series)), series, strict=True):
            _seeds_and_mean(ax, rows, x, colour, _series_label(label, rows), marker)
        _set_log_x(ax, df[x])
        ax.set(xlabel="parameters" if x == "params" else x, ylabel=ylabel, title=name or title)
        _legend(ax, len(series))
    _first_column_ylabel(axes)
    return fig


def _pick_steps(df: pd.DataFrame, k: int = 6) -> list[int]:
    """Up to k steps, evenly spread over the checkpoints every run has (log-spaced when the
    checkpoints are)."""
    common = sorted(set.intersection(*(set(g["step"]) for _, g in df.groupby("run"))))
    picked = np.unique(np.round(np.linspace(0, len(common) - 1, k)).astype(int))
    return [common[i] for i in picked] if common else []


def metric_vs_params(df: pd.DataFrame, metric: str, steps: list[int] | None = None) -> Figure:
    """`metric` against parameter count, one colour per training step (budget), a panel per
    setting of the other coordinates."""
    table = df[df["metric"] == metric]
    steps = _pick_steps(table) if steps is None else steps
    if steps:
        table = table[table["step"].isin(steps)]
        colours = ["step"]
    else:  # the runs share no step: compare each run's last checkpoint
        table, colours = _final(table), []
    return grouped(table, "params", metric, f"{metric} vs parameters", colours,
                   _series_keys(table), marker="o")


def metric_vs_step(df: pd.DataFrame, metric: str) -> Figure:
    """`metric` against training step: one colour per model size, seeds thin and their mean
    bold, a panel per setting of the other coordinates."""
    table = df[df["metric"] == metric]
    sizes = _size_keys(table)
    settings = _series_keys(table)
    colours, panels = (sizes, settings) if sizes else (settings, [])
    return grouped(table, "step", metric, f"{metric} during training", colours, panels)


def mirage(df: pd.DataFrame, prefix: str = "eval/") -> Figure:
    """Exact and continuous metrics of the same runs side by side against parameters (at each
    run's last checkpoint), and the p^L prediction beside measured exact match (Schaeffer et al.
    2023). A colour per setting of the coordinates other than size (a row of panels per
    MAX_SERIES of them); each seed's ladder thin, the mean over seeds bold."""
    table = _final(df)
    names = [m for m in MIRAGE_METRICS if prefix + m in set(table["metric"])]
    chunks = _panels(table[table["metric"] == prefix + names[0]], _series_keys(table), [])
    fig, axes = _grid(len(chunks) * (len(names) + 1), ncols=len(names) + 1, panel=(3.2, 3.2),
                      sharey=False)
    for row, (_, series) in enumerate(chunks):
        labels = [label for label, _ in series]
        panels = axes[row * (len(names) + 1):(row + 1) * (len(names) + 1)]
        for ax, name in zip(panels, names, strict=False):
            rows = table[table["metric"] == prefix + name]
            for colour, label in zip(_colours(len(labels)), labels, strict=True):
                _seeds_and_mean(ax, _match(rows, series, label), "params", colour,
                                label or "mean over seeds", marker="o")
            ax.set(xlabel="parameters", ylabel=prefix + name, title=name)
        _legend(panels[0], len(labels))
        ax = panels[-1]
        for colour, (name, label) in zip(_colours(3), (
                ("exact_match", "measured"),
                ("predicted_exact_match_from_mean", "token accuracy ^ L"),
                ("predicted_exact_match_from_positions", "product over positions")),
                strict=True):
            rows = table[table["metric"] == prefix + name]
            rows = pd.concat([_match(rows, series, label) for label in labels])
            if len(rows):
                _seeds_and_mean(ax, rows, "params", colour, label, marker="o")
        ax.set(xlabel="parameters", ylabel="exact match", title="p^L check")
        _legend(ax, 3)
    for ax in axes:
        _set_log_x(ax, table["params"])
    return fig


def _match(rows: pd.DataFrame, series: list, label: str) -> pd.DataFrame:
    """The rows of `rows` whose runs are those of the series named `label`."""
    runs = dict(series)[label]["run"].unique()
    return rows[rows["run"].isin(runs)]


def answer_positions(df: pd.DataFrame) -> Figure | None:
    """Which answer token is learned where: the teacher-forced log-probability of the right
    token at each answer position (`answer_position/logprob/<i>`, i = 0 the first answer token)
    against parameters at every run's last checkpoint (a colour per position), then against
    steps, a panel per position with a colour per model size (seeds thin, mean bold). A
    position that stays at chance (log 1/10 for a digit) where the others are learned is the
    sub-skill that appears last. None without per-position scores."""
    table = df[df["metric"].str.startswith(POSITION)]
    if table.empty:
        return None
    table = table.assign(position=table["metric"].str.removeprefix(POSITION).astype(int))
    positions = sorted(table["position"].unique())
    across = table["params"].nunique() > 1
    fig, axes = _grid(len(positions) + across)
    if across:
        ax = axes.pop(0)
        final = _final(table)
        for colour, position in zip(_colours(len(positions)), positions, strict=True):
            _seeds_and_mean(ax, final[final["position"] == position], "params", colour,
                            f"position {position}", marker="o")
        _set_log_x(ax, final["params"])
        ax.set(xlabel="parameters", ylabel="log p(right token)",
               title="per answer position, last checkpoint")
        _legend(ax, len(positions))
    keys = _size_keys(table) or _series_keys(table, exclude=["position"])
    for ax, position in zip(axes, positions, strict=True):
        rows = table[table["position"] == position]
        series = _order(rows, keys)[-MAX_SERIES:]  # the largest models where there are more
        for colour, (label, one) in zip(_colours(len(series)), series, strict=True):
            _seeds_and_mean(ax, one, "step", colour, _series_label(label, one))
        _set_log_x(ax, rows["step"])
        ax.set(xlabel="step", ylabel="log p(right token)",
               title=f"answer position {position} during training")
    if len(axes):
        _legend(axes[0], MAX_SERIES)
    _first_column_ylabel(fig.axes)
    return fig


def grokking_curves(table: pd.DataFrame, title: str = "",
                    seeds: list[pd.DataFrame] = ()) -> Figure:
    """Train and test accuracy against step, sum of squared weights on a twin axis; where the
    table has restricted_loss, a second panel of the progress measures (analysis.progress).
    `table` has one row per step (index or `step` column) and any of the columns
    train_eval/exact_match, eval/exact_match, weight_norm, train_eval/loss, restricted_loss,
    excluded_loss (e.g. metrics.jsonl joined with scores): one run, or the mean of `seeds`,
    tables of the same kind whose accuracies are drawn thin behind it."""
    table = table.set_index("step") if "step" in table.columns else table
    measures = "restricted_loss" in table  # Nanda et al.'s progress measures, a second panel
    fig = Figure(figsize=(6.4 * (1 + measures), 4.4), layout="constrained")
    ax, *more = fig.subplots(1, 1 + measures, squeeze=False)[0]
    if measures:
        progress.draw(more[0], table)  # linear steps: the lead reads as a distance
    for colour, (column, label) in zip(("C0", "C1"), (("train_eval/exact_match", "train"),
                                                      ("eval/exact_match", "test")), strict=True):
        for seed in seeds:
            seed = seed.set_index("step") if "step" in seed.columns else seed
            if column in seed:
                curve = seed[column].dropna()
                ax.plot(curve.index, curve.to_numpy(), color=colour, lw=0.7, alpha=0.35)
        if column in table:
            curve = table[column].dropna()
            ax.plot(curve.index, curve.to_numpy(), color=colour, lw=2 if len(seeds) else 1.5,
                    label=f"{label} accuracy" + (f" (mean of {len(seeds)} seeds)"
                                                 if len(seeds) > 1 else ""))
    ax.set(xlabel="step", ylabel="accuracy", title=title or "grokking")
    handles, labels = ax.get_legend_handles_labels()
    if "weight_norm" in table:
        twin = ax.twinx()
        curve = table["weight_norm"].dropna()
        twin.plot(curve.index, curve.to_numpy(), color="gray", linestyle="--",
                  label="sum of squared weights")
        twin.set_ylabel("sum of squared weights")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    _set_log_x(ax, table.index)
    ax.legend(handles, labels, fontsize="small")
    return fig


def induction_phase_change(df: pd.DataFrame) -> Figure:
    """Induction loss against step, a colour per series (size and setting; seeds thin, their
    mean bold), each seed's phase change (emergence.phase_change) dotted where it has one, and
    the series' mean largest prefix-matching score dashed on a twin axis (Olsson et al. 2022)."""
    loss = df[df["metric"] == "induction_loss"]
    matching = df[df["metric"] == "prefix_matching_max"]
    panels = _panels(loss, [*_size_keys(loss), *_series_keys(loss)], [])
    fig, axes = _grid(len(panels))
    for ax, (_, series) in zip(axes, panels, strict=True):
        twin = ax.twinx() if len(matching) else None
        for colour, (label, rows) in zip(_colours(len(series)), series, strict=True):
            _seeds_and_mean(ax, rows, "step", colour, _series_label(label, rows))
            for _, run in rows.groupby("run"):
                change = emergence.phase_change(run["step"], run["value"])
                if np.isfinite(change["step"]):  # none where the loss never falls enough
                    ax.axvline(change["step"], color=colour, linestyle=":", lw=1, alpha=0.8)
            if twin is not None:
                mean = matching[matching["run"].isin(rows["run"])].groupby("step")["value"]
                twin.plot(mean.mean().index, mean.mean().to_numpy(), color=colour,
                          linestyle="--", alpha=0.7)
        _set_log_x(ax, df["step"])
        ax.set(xlabel="step", ylabel="induction loss (solid; dotted: phase change)",
               title="induction heads: loss on repeated tokens")
        if twin is not None:
            twin.set(ylabel="max prefix matching (dashed)", ylim=(-0.02, 1.02))
        _legend(ax, len(series))
    return fig


def prefix_matching_heatmap(df: pd.DataFrame, run: str | None = None,
                            step: int | None = None) -> Figure:
    """Prefix-matching score of every head (layer x head) of one checkpoint; by default the
    checkpoint with the highest score of all."""
    if run is None or step is None:
        best = df[df["metric"] == "prefix_matching_max"].sort_values("value").iloc[-1]
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
        scores = mechanistic.prefix_matching(model, batch)
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


def _run_table(df: pd.DataFrame, run: Run | None, name: str) -> pd.DataFrame:
    """One row per step: the run's metrics.jsonl (denser, logged in training), filled in with
    its scores."""
    scores = df[df["run"] == name].pivot_table(index="step", columns="metric", values="value")
    logged = run.metrics() if run is not None else pd.DataFrame()
    if "step" not in logged:
        return scores
    return logged.groupby("step").mean(numeric_only=True).combine_first(scores)


def make_figures(df: pd.DataFrame, runs: list[Run], outdir: str | Path) -> list[Path]:
    """Draw and save (PNG) every figure that applies to the scores at hand; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    by_name = {run.name: run for run in runs}
    figures: dict[str, Figure] = {}
    for task, table in df.groupby("task", sort=False):
        metrics = set(table["metric"])
        main = "eval/exact_match" if "eval/exact_match" in metrics else "eval/loss"
        if table["params"].nunique() > 1 and main in metrics:
            figures[f"{task}_vs_params"] = metric_vs_params(table, main)
            if {"eval/token_accuracy", "eval/edit_distance"} <= metrics:
                figures[f"{task}_mirage"] = mirage(table)
        if table["step"].nunique() > 1:
            for metric in sorted({main, "eval/loss"} & metrics):
                figures[f"{task}_{metric.replace('/', '_')}_vs_step"] = metric_vs_step(
                    table, metric)
        if any(m.startswith(POSITION) for m in metrics):
            figures[f"{task}_answer_positions"] = answer_positions(table)
        if "weight_norm" in metrics:  # a figure per series, its seeds behind their mean
            keys = [*_size_keys(table), *_series_keys(table)]
            for label, rows in _order(table, keys):
                seeds = [_run_table(table, by_name.get(name), name)
                         for name in rows["run"].unique()]
                mean = pd.concat(seeds).groupby(level=0).mean() if len(seeds) > 1 else seeds[0]
                name = re.sub(r"[^\w.-]+", "_", label) or "all_runs"
                figures[f"{task}_grokking_{name}"] = grokking_curves(
                    mean, f"grokking, {label or 'all runs'}", seeds if len(seeds) > 1 else ())
        if "induction_loss" in metrics:
            figures[f"{task}_induction"] = induction_phase_change(table)
        if "prefix_matching_max" in metrics:
            figures[f"{task}_prefix_matching"] = prefix_matching_heatmap(table)
            figures[f"{task}_attention"] = _top_head_attention(table, by_name)
    paths = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = outdir / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _top_head_attention(df: pd.DataFrame, runs: dict[str, Run]) -> Figure | None:
    """attention_pattern of the checkpoint with the highest prefix-matching score, or None
    if that checkpoint cannot be loaded."""
    best = df[df["metric"] == "prefix_matching_max"].sort_values("value").iloc[-1]
    run = runs.get(best["run"])
    if run is None:
        return None
    try:
        model = run.load_model(int(best["step"]))
        task = run.task()
    except BAD_ITEM:
        return None
    return attention_pattern(model, task.eval_set(), vocab=task.vocab)


def exact_match_by_slice(by_slice: pd.DataFrame, attribute: str,
                         metric: str = "eval/exact_match") -> Figure | None:
    """`metric` on each slice of one attribute (`carries=0`, `carries=1`, ...): against
    parameters at every run's last checkpoint (seed means), and against step for the largest
    model (mean over its runs). A slice that rises later than the others is a sub-skill that
    appears later; one that stays low where the whole set looks solved is a ceiling."""
    table = by_slice[(by_slice["metric"] == metric)
                     & by_slice["slice"].str.startswith(attribute + "=")]
    if table.empty:
        return None
    value_of = lambda name: int(name.split("=")[1])
    wide_x = table["params"].nunique() > 1
    fig = Figure(figsize=(6.4 * (1 + wide_x), 4.2), layout="constrained")
    axes = fig.subplots(1, 1 + wide_x, squeeze=False)[0]
    top = table[table["params"] == table["params"].max()]
    panels = [(axes[-1], top, "step")]
    if wide_x:
        panels.insert(0, (axes[0], _final(table), "params"))
    for ax, rows, x in panels:
        for name in sorted(rows["slice"].unique(), key=value_of):
            series = rows[rows["slice"] == name]
            curve = series.groupby(x)["value"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=name)
        _set_log_x(ax, rows[x])
        ax.set(xlabel="parameters" if x == "params" else "step", ylabel=metric)
    if wide_x:
        axes[0].set_title(f"{metric} per slice vs parameters (last checkpoint)")
    axes[-1].set_title(f"{metric} per slice during training, {_params(top)}")
    _legend(axes[-1], 4)
    return fig


def slice_figures(by_slice: pd.DataFrame, outdir: str | Path) -> list[Path]:
    """One `exact_match_by_<attribute>` figure per sliced attribute of each task; the paths."""
    paths = []
    for task, table in by_slice.groupby("task", sort=False):
        sliced = table.loc[table["slice"] != "all", "slice"]
        for attribute in sorted(set(sliced.str.split("=").str[0])):
            fig = exact_match_by_slice(table, attribute)
            if fig is not None:
                path = Path(outdir) / f"{task}_exact_match_by_{attribute}.png"
                fig.savefig(path, dpi=120)
                paths.append(path)
    return paths
