"""Figures: a scores table (see analysis.runs.score) in, a matplotlib Figure out.

Built on `matplotlib.figure.Figure` rather than pyplot, so no global figure state or GUI backend
is involved (PNG through Agg); in a notebook a returned Figure displays itself. Parameters,
FLOPs and steps are drawn on log axes (symlog when step 0 is present). Curves average over
seeds, with each seed's points drawn faintly behind.

The primitives here know no phenomenon: each phenomenon draws its own figures with them
(`figures` of analysis.phenomena), and `make_figures` saves every figure that applies to the
data at hand as PNG.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis import emergence, phenomena
from analysis.runs import Run


def set_log_x(ax, x) -> None:
    x = np.asarray(x, dtype=float)
    positive = x[x > 0]
    if len(positive) and (x <= 0).any():
        ax.set_xscale("symlog", linthresh=positive.min())
    elif len(positive):
        ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labels on decades only


def final(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last checkpoint."""
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


# Small multiples: at most this many series (colours, legend entries) share a panel; a panel
# keeps its size in inches however many runs there are, so more series mean more panels.
MAX_SERIES = 8
PANEL = (5.2, 3.8)


def series_keys(df: pd.DataFrame, exclude=()) -> list[str]:
    """Coordinates (not size, not seed) that take more than one value: one line each."""
    coords = [c for c in df.columns if c not in emergence.TABLE_COLUMNS]
    skip = {*emergence.SIZE_COORDS, "seed", *exclude}
    return [c for c in coords if c not in skip and df[c].nunique(dropna=False) > 1]


def size_keys(df: pd.DataFrame) -> list[str]:
    """Coordinates that set the model's size and take more than one value."""
    return [c for c in emergence.SIZE_COORDS if c in df.columns
            and df[c].nunique(dropna=False) > 1]


def keys_label(keys: list[str], values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in zip(keys, values, strict=True))


def group_by(df: pd.DataFrame, keys: list[str]):
    return df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]


def grid(n: int, ncols: int = 4, panel=PANEL, sharey: bool = True):
    """A figure of n panels, each `panel` inches, in rows of up to `ncols` (as few empty slots
    as that allows); (figure, list of the n axes)."""
    ncols = min(range(min(n, ncols), 0, -1), key=lambda c: -n % c) if n > 1 else 1
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def first_column_ylabel(axes) -> None:
    """Panels that share a y axis: its label once, on the first column."""
    for ax in axes:
        if not ax.get_subplotspec().is_first_col():
            ax.set_ylabel("")


def legend(ax, entries: int) -> None:
    """A legend in the corner the curves leave free: upper left where they rise (they start
    low), upper right where they fall. Matplotlib's "best" place is searched against every
    point drawn, which with hundreds of seeds' curves takes seconds a panel."""
    lines = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata()) > 1]
    rising = np.mean([np.asarray(y, dtype=float)[-1] - np.asarray(y, dtype=float)[0]
                      for y in lines]) > 0 if lines else True
    ax.legend(fontsize="small" if entries <= 4 else "x-small",
              loc="upper left" if rising else "upper right")


def colours(n: int) -> list:
    """n colours in order (a ladder's rungs read from dark to light)."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return [colormaps["viridis"](v) for v in np.linspace(0, 0.9, n)]


def seeds_and_mean(ax, rows: pd.DataFrame, x: str, colour, label: str, marker=None) -> None:
    """Each seed's curve (a run's along steps, a seed's across rungs) thin and faint, their mean
    over seeds bold: one legend entry."""
    thin = "run" if x == "step" else "seed" if "seed" in rows else "run"
    wide = rows.pivot_table(index=x, columns=thin, values="value", aggfunc="mean")
    if wide.shape[1] > 1:  # one call for all seeds: hundreds of runs draw at once
        ax.plot(wide.index, wide.to_numpy(), color=colour, lw=0.7, alpha=0.35)
    mean = wide.mean(axis=1)
    ax.plot(mean.index, mean.to_numpy(), color=colour, lw=2.2, marker=marker, ms=4,
            label=label)


def order(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per series of `keys`, smallest model first; one unlabelled series without
    keys."""
    groups = [(keys_label(keys, k) if keys else "", rows) for k, rows in group_by(df, keys)]
    return sorted(groups, key=lambda g: (g[1]["params"].min(), g[0]))


def series_label(label: str, rows: pd.DataFrame) -> str:
    """A series' legend entry: its coordinates and, where one size, its parameter count."""
    if rows["params"].nunique() == 1:
        size = f"{int(rows['params'].iloc[0]):,} params"
        return f"{label} ({size})" if label else size
    return label or "all runs"


def split_panels(df: pd.DataFrame, colour_keys: list[str], panel_keys: list[str]) -> list:
    """[(panel title, [(series label, rows), ...])]: a panel per setting of `panel_keys`, at
    most MAX_SERIES series each."""
    panels = []
    for key, rows in group_by(df, panel_keys):
        series = order(rows, colour_keys)
        name = keys_label(panel_keys, key) if panel_keys else ""
        panels += [(name, series[i:i + MAX_SERIES]) for i in range(0, len(series), MAX_SERIES)]
    return panels


def params_label(series: pd.DataFrame) -> str:
    return f"{int(series['params'].iloc[0]):,} params"


def grouped(df: pd.DataFrame, x: str, ylabel: str, title: str, colour_keys: list[str],
            panel_keys: list[str], marker=None) -> Figure:
    """`value` against `x`: one panel per setting of `panel_keys` (split further when a panel
    would hold more than MAX_SERIES series), one colour per setting of `colour_keys` in it,
    each series its seeds thin and their mean bold, one legend entry per series."""
    panels = split_panels(df, colour_keys, panel_keys)
    fig, axes = grid(len(panels))
    for ax, (name, series) in zip(axes, panels, strict=True):
        for colour, (label, rows) in zip(colours(len(series)), series, strict=True):
            seeds_and_mean(ax, rows, x, colour, series_label(label, rows), marker)
        set_log_x(ax, df[x])
        ax.set(xlabel="parameters" if x == "params" else x, ylabel=ylabel, title=name or title)
        legend(ax, len(series))
    first_column_ylabel(axes)
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
        table, colours = final(table), []
    return grouped(table, "params", metric, f"{metric} vs parameters", colours,
                   series_keys(table), marker="o")


def metric_vs_step(df: pd.DataFrame, metric: str) -> Figure:
    """`metric` against training step: one colour per model size, seeds thin and their mean
    bold, a panel per setting of the other coordinates."""
    table = df[df["metric"] == metric]
    sizes = size_keys(table)
    settings = series_keys(table)
    colours, panels = (sizes, settings) if sizes else (settings, [])
    return grouped(table, "step", metric, f"{metric} during training", colours, panels)


def make_figures(df: pd.DataFrame, runs: list[Run], outdir: str | Path,
                 by_slice: pd.DataFrame | None = None) -> list[Path]:
    """Draw and save (PNG) every phenomenon's figures of each task's scores (`by_slice`: the
    scores on every slice, where there are slices); returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure | None] = {}
    for task, table in df.groupby("task", sort=False):
        sliced = None if by_slice is None else by_slice[by_slice["task"] == task]
        for draw in phenomena.having("figures"):
            figures |= {f"{task}_{name}": fig for name, fig in draw(table, sliced, runs).items()}
    paths = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = outdir / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
