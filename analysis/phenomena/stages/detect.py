"""Stage boundaries on the LLC curve over training, their summary over seeds, and the report's
"Developmental stages" section and figure beside the events the other analyses find.

Hoogland et al. 2024 ("The developmental landscape of in-context learning") cut training into
stages at the critical points of the LLC over log steps. Here a boundary is a turning point of
the curve of healthy estimates: a peak or a trough from which the LLC reverses by at least
REVERSAL of its range (and by more than twice the median spread over chains), so that sampling
noise makes none. Plateaus, which Hoogland et al. also count, are not detected.

The events beside them are read from the summary table (summary.csv), whatever analysis put
them there: memorization and generalization, the induction phase change and head formation, the
plateau and drop, transitions of exact match (per slice where the task has slices).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import phenomena
from analysis.emergence import TABLE_COLUMNS
from analysis.summary import COLUMNS, describe, log_t_interval, series_labels, t_interval

METRIC = "llc"
REVERSAL = 0.1
# The events' dashed lines: matplotlib's Dark2, apart from the seeds' colours (C0, C1, ...).
EVENT_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                 "#666666")


def turning_points(y, threshold: float) -> list[tuple[int, str]]:
    """Indices of the peaks and troughs of `y` from which it reverses by >= `threshold`
    (a zigzag filter), each with "peak" or "trough"; the ends are never turning points."""
    y = np.asarray(y, dtype=float)
    found, direction, hi, lo = [], 0, 0, 0
    for i in range(1, len(y)):
        if direction == 0:  # no move of `threshold` yet: track both extremes
            hi, lo = (i if y[i] > y[hi] else hi), (i if y[i] < y[lo] else lo)
            if y[hi] - y[lo] >= threshold:
                direction = 1 if hi > lo else -1
        elif direction == 1:
            if y[i] > y[hi]:
                hi = i
            elif y[hi] - y[i] >= threshold:
                found.append((hi, "peak"))
                direction, lo = -1, i
        elif y[i] < y[lo]:
            lo = i
        elif y[i] - y[lo] >= threshold:
            found.append((lo, "trough"))
            direction, hi = 1, i
    return found


def boundaries(curve: pd.DataFrame) -> list[tuple[int, str]]:
    """(step, "peak" or "trough") of one run's LLC curve: a table with columns step, llc (NaN
    where unhealthy) and std."""
    curve = curve.dropna(subset=[METRIC]).sort_values("step")
    if len(curve) < 3:
        return []
    values = curve[METRIC].to_numpy()
    spread = float(np.nanmedian(curve["std"])) if "std" in curve else 0.0
    threshold = max(REVERSAL * (values.max() - values.min()), 2 * spread)
    steps = curve["step"].to_numpy()
    return [(int(steps[i]), kind) for i, kind in turning_points(values, threshold)]


def curves(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{run: its LLC curve (step, llc, estimate, std, healthy)} from a scores table."""
    rows = df[df["metric"].isin([METRIC, f"{METRIC}/estimate", f"{METRIC}/std",
                                 f"{METRIC}/healthy"])]
    found = {}
    for run, scored in rows.groupby("run", sort=False):
        wide = scored.pivot_table(index="step", columns="metric", values="value",
                                  aggfunc="first", dropna=False)
        wide.columns = [c.removeprefix(f"{METRIC}/") for c in wide.columns]
        found[run] = wide.reset_index()
    return found


def _series(df: pd.DataFrame):
    """(coordinates, {seed: run}) per series: the runs that differ only in their seed."""
    coords = [c for c in df.columns if c not in (*TABLE_COLUMNS, "slice", "seed")]
    runs = df.drop_duplicates("run")
    groups = runs.groupby(coords, dropna=False, sort=False) if coords else [((), runs)]
    for key, members in groups:
        key = key if isinstance(key, tuple) else (key,)
        seeds = members["seed"] if "seed" in members else range(len(members))
        yield dict(zip(coords, key, strict=True)), dict(zip(seeds, members["run"], strict=True))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Summary rows (analysis.summary's columns, axis "step", metric "llc") of the stage
    boundaries per series, over seeds: `boundary_k` the step of the k-th turning point, `kind_k`
    1 for a peak and 0 for a trough (the share of seeds with a peak), `boundaries` how many,
    `healthy` the share of healthy estimates. Boundary steps are averaged on a log scale."""
    found = curves(df)
    rows = []
    for coords, seeds in _series(df):
        per_seed = {seed: boundaries(found[run]) for seed, run in seeds.items() if run in found}
        if not per_seed:
            continue
        n = max(len(b) for b in per_seed.values())
        stats = {"boundaries": [(float(len(b)), "") for b in per_seed.values()],
                 "healthy": [(float(found[seeds[s]]["healthy"].mean()), "") for s in per_seed]}
        for k in range(n):
            got = [b[k] if k < len(b) else None for b in per_seed.values()]
            stats[f"boundary_{k + 1}"] = [(float(g[0]), "") if g else
                                          (np.nan, f"none: {k} turning points") for g in got]
            stats[f"kind_{k + 1}"] = [(float(g[1] == "peak"), "") if g else (np.nan, "none")
                                      for g in got]
        points = max(int(found[seeds[s]][METRIC].notna().sum()) for s in per_seed)
        rows += [{**coords, "axis": "step", "metric": METRIC, "statistic": name,
                  **_over_seeds(values, name.startswith("boundary_")), "n_points": points}
                 for name, values in stats.items()]
    return pd.DataFrame(rows, columns=[*dict.fromkeys(
        [c for row in rows for c in row if c not in COLUMNS]), *COLUMNS])


def _over_seeds(per_seed: list[tuple[float, str]], log: bool) -> dict:
    """One summary row's value, interval and note from each seed's (value, why none); on a log
    scale (geometric mean, analysis.summary.log_t_interval) for steps on the log-step axis."""
    interval = (log_t_interval if log else t_interval)([value for value, _ in per_seed])
    missing = [why for value, why in per_seed if np.isnan(value)]
    note = "" if not missing else missing[0] if not interval["n"] else (
        f"none in {len(missing)} of {len(per_seed)} seeds ({missing[0]})")
    return {"value": interval["mean"], "low": interval["low"], "high": interval["high"],
            "n_seeds": interval["n"], "note": note}


def _events(table: pd.DataFrame) -> pd.DataFrame:
    """The summary's step-axis events (the phenomena's STEP_MARKS, and transitions of exact
    match) with a value."""
    marks = table["statistic"].isin(phenomena.gather("STEP_MARKS"))
    crossing = (table["statistic"] == "transition") & table["metric"].str.startswith(
        "eval/exact_match")
    rows = table[(table["axis"] == "step") & table["value"].notna() & (marks | crossing)]
    return rows.assign(event=np.where(rows["statistic"] == "transition",
                                      rows["metric"] + " transition", rows["statistic"]))


def _own(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["axis"] == "step") & (table["metric"] == METRIC)]


def _same_series(table: pd.DataFrame, row) -> pd.Series:
    coords = [c for c in table.columns if c not in COLUMNS]
    same = pd.Series(True, index=table.index)
    for c in coords:
        same &= (table[c] == row[c]) | (table[c].isna() & pd.isna(row[c]))
    return same


def findings(evidence) -> list[str]:
    """The report's Findings: `sentences` of the analysis' summary."""
    return sentences(evidence.summary)


def sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per series with LLC estimates: its stage boundaries over seeds, and the
    events of the same series beside them."""
    table = table.reset_index(drop=True)
    own, lines = _own(table), []
    if own.empty:
        return lines
    labels = series_labels(table)
    for _, count in own[own["statistic"] == "boundaries"].iterrows():
        same = _same_series(table, count)
        mine = table[same & (table["axis"] == "step") & (table["metric"] == METRIC)]
        parts = []
        for _, row in mine[mine["statistic"].str.startswith("boundary_")].iterrows():
            kind = mine[mine["statistic"] == row["statistic"].replace("boundary", "kind")]
            peak = kind["value"].iloc[0] if len(kind) else np.nan
            word = "peak" if peak == 1 else "trough" if peak == 0 else "peak or trough"
            parts.append(f"{word} at step {describe(row, seeds=False)}")
        events = _events(table[same]).sort_values("value")
        beside = "; ".join(f"{e['event']} {describe(e, seeds=False)}"
                           for _, e in events.iterrows())
        healthy = mine[mine["statistic"] == "healthy"]["value"]
        text = (f"{labels[count.name]}: LLC stage boundaries: "
                f"{', '.join(parts) if parts else 'none (no turning point)'}")
        if len(healthy) and healthy.iloc[0] < 1:
            text += f" ({1 - healthy.iloc[0]:.0%} of estimates unhealthy, left out)"
        lines.append(text + (f"; beside: {beside}" if beside else ""))
    return lines


def figure(df: pd.DataFrame, table: pd.DataFrame) -> Figure | None:
    """The LLC over steps, one panel per series (seeds thin, their spread shaded), with its
    stage boundaries (solid) and the summary's events (dashed, named with their step in the
    legend beside the panel, where no label can cover a curve or another label); an unhealthy
    estimate is an x on the step axis, not a number."""
    found = curves(df)
    series = [(c, s) for c, s in _series(df) if any(r in found for r in s.values())]
    if not series:
        return None
    table = table.reset_index(drop=True)
    fig = Figure(figsize=(8.4, 3.2 * len(series)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(series), 1, squeeze=False)[:, 0])
    labels = series_labels(table) if len(table) else pd.Series(dtype=str)
    own = _own(table) if len(table) else table
    for ax, (coords, seeds) in zip(axes, series, strict=True):
        steps = []
        for seed, run in seeds.items():
            curve = found.get(run)
            if curve is None:
                continue
            curve = curve.sort_values("step")
            ok = curve[curve["healthy"] == 1]
            (line,) = ax.plot(ok["step"], ok[METRIC], marker=".", lw=1, label=f"seed {seed}")
            ax.fill_between(ok["step"], ok[METRIC] - ok["std"], ok[METRIC] + ok["std"],
                            alpha=0.2, color=line.get_color())
            bad = curve[curve["healthy"] != 1]
            if len(bad):  # an empty line on the axis transform stretches the layout
                ax.plot(bad["step"], np.zeros(len(bad)), "x", color=line.get_color(),
                        transform=ax.get_xaxis_transform(), clip_on=False)
            for step, _ in boundaries(curve):
                ax.axvline(step, color=line.get_color(), lw=1)
            steps += list(curve["step"])
        mine = own[_same_series(own, pd.Series(coords))] if len(own) else own
        key = labels[mine.index[0]] if len(mine) else ", ".join(f"{k}={v}" for k, v in
                                                               coords.items())
        events = _events(table[_same_series(table, pd.Series(coords))]).sort_values("value")
        for i, (_, event) in enumerate(events.iterrows()):  # named in the legend, in order
            ax.axvline(event["value"], color=EVENT_COLOURS[i % len(EVENT_COLOURS)],
                       ls=(0, (2, 2)), lw=1.2, label=f"{event['event'].removesuffix('_step')} "
                       f"({event['value']:,.0f})")
        positive = [s for s in steps if s > 0]
        if positive and min(steps) <= 0:  # step 0 on a log axis: linear up to the first step
            ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlim(left=0, right=max(steps) * 1.1)
        elif positive:
            ax.set_xscale("log")
        ax.set(xlabel="step", ylabel="LLC", title=key or "LLC during training")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def section(evidence) -> str | None:
    """The report's "Developmental stages" section (None without LLC estimates); saves its
    figure as `<out>/figures/llc_stages.png`."""
    df, table, out = evidence.scores, evidence.summary, evidence.out
    lines = sentences(table)
    if not lines:
        return None
    parts = ["## Developmental stages",
             "The local learning coefficient (LLC) of sampled checkpoints, through devinterp's "
             "SGLD on the loss each model was trained on (analysis/phenomena/stages/llc.py; "
             "per-run sampler settings and their calibration grid in `llc/<run>.json`). A stage "
             f"boundary is a peak or trough of the LLC over steps from which it reverses by at "
             f"least {REVERSAL:.0%} of its range (Hoogland et al. 2024 cut stages at such "
             "critical points); unhealthy estimates (chains that disagree, do not converge, "
             "spike or go negative) are left out of curves and boundaries.",
             "\n".join(f"- {line}" for line in lines)]
    fig = figure(df, table)
    if fig is not None:
        path = out / "figures" / "llc_stages.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        parts.append(f"![llc_stages](figures/{path.name})")
    return "\n\n".join(parts)
