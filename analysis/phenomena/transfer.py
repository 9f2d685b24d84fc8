"""Learning-rate transfer across width (Yang et al. 2022, Tensor Programs V, Fig. 1).

A sweep of learning rates x widths under standard parametrization and muP
(`experiment=mup_transfer_small`) gives one final loss per run. Under muP the best learning rate
should stay put as width grows; under standard parametrization it moves. `transfer_table` reads
the runs (the I/O edge), everything after it is a pure function of that table:
`best_lrs` (each width's best lr: the grid point of lowest loss, and the vertex of a parabola in
log lr through it and its two neighbours, which resolves optima between grid points and damps
seed noise on a flat valley), `spread` (how many grid steps the best lr moves across widths) and
`figure` (loss against lr, one curve per width, one panel per
parametrization, each width's best lr marked).

    python -m analysis multirun/mup_transfer --transfer   # transfer.csv, figure, transfer.md
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import OmegaConf

METRIC = "eval/loss"


def transfer_table(runs, metric: str = METRIC) -> pd.DataFrame:
    """One row per finished run: parametrization, d_model, lr, loss (the final `metric` from
    summary.json; +inf for a run that diverged or failed, so it is never a width's best).
    Runs without summary.json (still running) are left out."""
    rows = []
    for run in runs:
        summary = run.summary()
        if not summary:
            continue
        value = summary.get("metrics", {}).get(metric, math.nan)
        if summary.get("status") not in (None, "completed") or not math.isfinite(value):
            value = math.inf
        rows.append({
            "run": run.name,
            "parametrization": OmegaConf.select(run.config, "model.parametrization"),
            "d_model": OmegaConf.select(run.config, "model.d_model"),
            "lr": OmegaConf.select(run.config, "optim.lr"),
            "seed": OmegaConf.select(run.config, "seed"),
            "loss": value,
        })
    return pd.DataFrame(rows)


def _vertex(log_lr: np.ndarray, loss: np.ndarray, i: int) -> float:
    """log lr of the parabola's minimum through points i-1, i, i+1 (point i where it is at the
    grid's edge, a neighbour diverged, or the three do not curve upward)."""
    if i in (0, len(loss) - 1) or not np.isfinite(loss[i - 1 : i + 2]).all():
        return float(log_lr[i])
    c2, c1, _ = np.polyfit(log_lr[i - 1 : i + 2], loss[i - 1 : i + 2], 2)
    return float(-c1 / (2 * c2)) if c2 > 0 else float(log_lr[i])


def best_lrs(table: pd.DataFrame) -> pd.DataFrame:
    """Per parametrization and width: `best_lr` (the grid lr of the lowest mean loss over
    seeds) with its loss, its `grid_index` on that parametrization's lr grid and whether it
    sits at the grid's edge (then the optimum may lie outside the grid), and `fitted_lr`, the
    parabola vertex in log lr around it; `fitted_steps` is that in grid steps from grid[0]."""
    rows = []
    for param, group in table.groupby("parametrization"):
        grid = np.sort(group["lr"].unique())
        ratio = np.exp(np.mean(np.diff(np.log(grid)))) if len(grid) > 1 else 1.0
        for width, curve in group.groupby("d_model"):
            mean = curve.groupby("lr")["loss"].mean().reindex(grid)
            if not np.isfinite(mean).any():
                continue
            index = int(np.nanargmin(np.where(np.isfinite(mean), mean, np.nan)))
            fitted = _vertex(np.log(grid), mean.to_numpy(), index)
            rows.append({"parametrization": param, "d_model": int(width),
                         "best_lr": float(grid[index]), "best_loss": float(mean.iloc[index]),
                         "grid_index": index, "at_edge": index in (0, len(grid) - 1),
                         "fitted_lr": float(np.exp(fitted)),
                         "fitted_steps": float((fitted - np.log(grid[0])) / np.log(ratio))})
    return pd.DataFrame(rows)


def spread(best: pd.DataFrame, column: str = "grid_index") -> dict[str, float]:
    """{parametrization: max - min of `column` across widths}: with grid_index, 0 = the same
    best grid lr at every width, 1 = neighbouring grid points (the grid's resolution); with
    fitted_steps, the same in fractional grid steps."""
    return {param: float(group[column].max() - group[column].min())
            for param, group in best.groupby("parametrization")}


def figure(table: pd.DataFrame, best: pd.DataFrame) -> Figure:
    """Final loss against lr (log), one curve per width, one panel per parametrization; each
    width's best lr is a filled marker. Diverged runs are left out of the curves."""
    params = sorted(table["parametrization"].unique(), key=lambda p: p != "standard")
    fig = Figure(figsize=(5 * len(params), 4), layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    widths = sorted(table["d_model"].unique())
    colors = {w: f"C{i}" for i, w in enumerate(widths)}
    finite = table[np.isfinite(table["loss"])]
    for ax, param in zip(axes, params, strict=True):
        for width in widths:
            curve = finite[(finite["parametrization"] == param) & (finite["d_model"] == width)]
            mean = curve.groupby("lr")["loss"].mean()
            ax.plot(mean.index, mean.values, "o-", ms=3, color=colors[width],
                    label=f"d_model {width}")
            mark = best[(best["parametrization"] == param) & (best["d_model"] == width)]
            ax.plot(mark["best_lr"], mark["best_loss"], "*", ms=14, color=colors[width],
                    markeredgecolor="black")
            ax.axvline(mark["fitted_lr"].iloc[0], color=colors[width], ls=":", lw=1)
        steps, fitted = spread(best).get(param), spread(best, "fitted_steps").get(param)
        ax.set(xscale="log", xlabel="learning rate", title=f"{param}: best lr spread "
               f"{steps:.0f} grid steps ({fitted:.1f} fitted)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"final {METRIC}")
    axes[0].legend(fontsize=8)
    if len(finite):  # diverged-looking losses far above the rest would flatten the curves
        low, high = finite["loss"].min(), finite["loss"].quantile(0.9)
        axes[0].set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    return fig


def write(runs, out: Path) -> Path:
    """transfer.csv, best_lr.csv, figures/lr_transfer.png and transfer.md under `out`."""
    table = transfer_table(runs)
    if table["parametrization"].isna().any() or table["lr"].isna().any():
        raise ValueError("--transfer needs runs with model.parametrization and optim.lr in "
                         "their config")
    best = best_lrs(table)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "transfer.csv", index=False)
    best.to_csv(out / "best_lr.csv", index=False)
    figure(table, best).savefig(out / "figures" / "lr_transfer.png", dpi=120)
    lines = ["# Learning-rate transfer", "", f"Final {METRIC}, best lr per width:", "",
             "| parametrization | d_model | best lr | loss | grid index | at grid edge "
             "| fitted lr |", "|---|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r.parametrization} | {r.d_model} | {r.best_lr:.3g} | {r.best_loss:.4f} "
              f"| {r.grid_index} | {'yes' if r.at_edge else 'no'} | {r.fitted_lr:.3g} |"
              for r in best.itertuples()]
    fitted = spread(best, "fitted_steps")
    lines += ["", "Spread of the best lr across widths, in grid steps (best grid point; fitted "
              "vertex): " + ", ".join(f"{k} {v:.0f}; {fitted[k]:.2f}"
                                      for k, v in spread(best).items()), "",
              "![lr transfer](figures/lr_transfer.png)", ""]
    path = out / "transfer.md"
    path.write_text("\n".join(lines))
    return path
