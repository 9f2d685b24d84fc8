"""Forecast exact match of larger models (or later checkpoints) from smaller ones.

Exact match is all-or-nothing and looks emergent; the log-probability of the right answer moves
smoothly (Schaeffer et al. 2023). So: fit a law to the smooth quantity on the lower rungs of a
ladder only, extrapolate it to the held-out top rungs, turn it into a predicted exact match and
compare with what those rungs measured (Hu et al. 2023 do this with PassUntil). Three forms:

- `p^L`: the per-token answer loss -log p = (answer_logprob / L) follows a power law in the size
  x, log(-log p) = a + b log x; predicted exact match p^L, L the mean number of counted answer
  tokens;
- `p^L per position`: the same law fitted at each answer position (where the table has the
  `answer_position/logprob/<i>` scores: mean log p of answer token i, 0 where an example has no
  token i, so they sum to answer_logprob), predicted exact match the product over positions;
- `Hu`: log(-log P) linear in log x for P, the mean exact-answer probability (`answer_prob`),
  predicted exact match P (Hu et al. 2023's fit on the pass probability).

`forecast` does it along parameters or training FLOPs (rungs = distinct sizes, points = runs,
intervals by resampling the seeds of each rung) and `forecast_steps` along training steps (fit
on the early checkpoints of each run, forecast the later ones). Both are pure: a scores table
(analysis.runs.score's tidy rows) in, a table out. `figure` draws fit, extrapolation and
held-out points; `report_section` the markdown. Where the forecast fails it says by how much:
the laws see the average token, not which sub-skill (answer position) is still missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator

from analysis.phenomena.subskills import POSITION_PREFIX as POSITION
from analysis.plots import colours as plot_colours
from analysis.tables import markdown_table

PREFIX = "eval/"
METHODS = ("p^L", "p^L per position", "Hu")
THRESHOLD = 0.5  # the exact match whose crossing is the transition point


@dataclass(frozen=True)
class Law:
    """-log p(x) = exp(a) * x**b: log(-log p) linear in log x (b < 0 when p improves with x)."""

    a: float
    b: float

    def neg_logp(self, x) -> np.ndarray:
        return np.exp(self.a + self.b * np.log(np.asarray(x, dtype=float)))

    def solve(self, neg_logp: float) -> float:
        """The x where -log p reaches `neg_logp` (NaN for a flat law)."""
        return math.exp((math.log(neg_logp) - self.a) / self.b) if self.b else math.nan


def fit_law(x, neg_logp) -> Law:
    """Least squares of log(-log p) on log x. Points with -log p <= 0 or non-finite are left
    out (a perfect p = 1 has no logarithm); raises ValueError with fewer than 2 distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(neg_logp, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if len(np.unique(x[keep])) < 2:
        raise ValueError(f"a law needs points at >= 2 sizes, got {len(np.unique(x[keep]))}")
    b, a = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return Law(float(a), float(b))


def wide(df: pd.DataFrame, prefix: str = PREFIX) -> pd.DataFrame:
    """One row per run x step with the `prefix` metrics (prefix removed) and the per-position
    answer log-probabilities as columns."""
    rows = df[df["metric"].str.startswith((prefix, POSITION))]
    keys = [c for c in ("run", "seed", "params", "non_embedding_params", "step", "flops")
            if c in df.columns]
    table = rows.groupby([*keys, "metric"], dropna=False)["value"].first().unstack("metric")
    table.columns = [c.removeprefix(prefix) for c in table.columns]
    return table.reset_index()


def _positions(table: pd.DataFrame) -> list[str]:
    return sorted((c for c in table.columns if c.startswith(POSITION)),
                  key=lambda c: int(c[len(POSITION):]))


def _predictors(table: pd.DataFrame, answer_len: float) -> dict[str, tuple[list, callable]]:
    """{method: (per-point -log p columns as arrays, how predicted -log p values become exact
    match)} for the methods the table supports."""
    methods = {"p^L": ([-table["answer_logprob"].to_numpy() / answer_len],
                       lambda ys: np.exp(-answer_len * ys[0]))}
    if positions := _positions(table):
        methods["p^L per position"] = ([-table[c].to_numpy() for c in positions],
                                       lambda ys: np.exp(-np.sum(ys, axis=0)))
    if "answer_prob" in table.columns:
        methods["Hu"] = ([-np.log(table["answer_prob"].to_numpy())],
                         lambda ys: np.exp(-ys[0]))
    return methods


def _fit_predict(x_fit, ys_fit, x_new, to_em) -> tuple[np.ndarray, list[Law]]:
    laws = [fit_law(x_fit, y) for y in ys_fit]
    return to_em([law.neg_logp(x_new) for law in laws]), laws


def _crossing(x, y, threshold: float = THRESHOLD) -> float:
    """First x where the curve y(x) (sorted by x) reaches `threshold`, linear in log x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    above = np.flatnonzero(y >= threshold)
    if not len(above):
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(x[0])
    t = (threshold - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(np.log(x[i - 1]) + t * (np.log(x[i]) - np.log(x[i - 1]))))


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(np.percentile(finite, 5)), float(np.percentile(finite, 95))) if len(finite) \
        else (math.nan, math.nan)


def forecast(df: pd.DataFrame, answer_len: float, axis: str = "params", holdout: int = 2,
             n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Fit on all but the top `holdout` rungs (distinct `axis` values at each run's last step),
    forecast exact match of every rung; one row per method x rung: x, `held_out`, measured
    exact match (mean over the rung's runs and its 5-95% bootstrap interval), predicted
    (from the fit on all points, and its interval from refits on resampled runs of each fitted
    rung), `error` = predicted - measured, and per method the law (`a`, `b`) and the predicted
    and measured `transition` (the x where exact match first reaches THRESHOLD; the predicted
    one from the law, the measured one interpolated over the whole ladder)."""
    table = wide(df)
    table = table[table["step"] == table.groupby("run")["step"].transform("max")]
    rungs = np.sort(table[axis].unique())
    if len(rungs) <= holdout + 1:
        raise ValueError(f"forecast along {axis}: {len(rungs)} rungs, need more than "
                         f"holdout + 1 = {holdout + 1}")
    fitted = table[axis].isin(rungs[: len(rungs) - holdout]).to_numpy()
    x = table[axis].to_numpy(dtype=float)
    measured = table.groupby(axis)["exact_match"]
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(fitted & (x == r)) for r in rungs[: len(rungs) - holdout]]
    rows = []
    for method, (ys, to_em) in _predictors(table, answer_len).items():
        predicted, laws = _fit_predict(x[fitted], [y[fitted] for y in ys], rungs, to_em)
        boot = []
        for _ in range(n_boot):
            pick = np.concatenate([rng.choice(g, len(g)) for g in groups])
            try:
                boot.append(_fit_predict(x[pick], [y[pick] for y in ys], rungs, to_em)[0])
            except ValueError:
                continue
        boot = np.array(boot)
        transition = _predicted_transition(laws, rungs, to_em)
        for i, rung in enumerate(rungs):
            values = measured.get_group(rung).to_numpy()
            lo, hi = _interval(boot[:, i]) if len(boot) else (math.nan, math.nan)
            m_lo, m_hi = _interval(_bootstrap_means(values, rng, n_boot))
            rows.append({"method": method, "axis": axis, "x": float(rung),
                         "held_out": bool(i >= len(rungs) - holdout), "n_runs": len(values),
                         "measured": float(values.mean()), "measured_low": m_lo,
                         "measured_high": m_hi, "predicted": float(predicted[i]),
                         "predicted_low": lo, "predicted_high": hi,
                         "error": float(predicted[i] - values.mean()),
                         "a": laws[0].a, "b": laws[0].b, "predicted_transition": transition,
                         "measured_transition": _crossing(rungs, measured.mean().loc[rungs])})
    return pd.DataFrame(rows)


def _bootstrap_means(values: np.ndarray, rng, n: int) -> np.ndarray:
    return rng.choice(values, (n, len(values))).mean(1) if len(values) > 1 else values


def _predicted_transition(laws: list[Law], rungs, to_em) -> float:
    """Where the fitted laws' exact match first reaches THRESHOLD, on a fine log grid from the
    smallest rung to 1,000x the largest (NaN if not there)."""
    grid = np.geomspace(rungs[0], rungs[-1] * 1000, 2000)
    return _crossing(grid, to_em([law.neg_logp(grid) for law in laws]))


def forecast_steps(df: pd.DataFrame, answer_len: float, holdout: int = 2) -> pd.DataFrame:
    """Per run: fit the laws on its checkpoints (step > 0) but the last `holdout`, forecast the
    held-out ones; one row per method x run x checkpoint (columns as in `forecast`, `x` the
    step, no intervals: one run per curve)."""
    table = wide(df)
    rows = []
    for run, curve in table[table["step"] > 0].groupby("run"):
        curve = curve.sort_values("step")
        if len(curve) <= holdout + 1:
            continue
        steps = curve["step"].to_numpy(dtype=float)
        fitted = np.arange(len(curve)) < len(curve) - holdout
        for method, (ys, to_em) in _predictors(curve, answer_len).items():
            try:
                predicted, laws = _fit_predict(steps[fitted], [y[fitted] for y in ys], steps,
                                               to_em)
            except ValueError:
                continue
            em = curve["exact_match"].to_numpy()
            for i, step in enumerate(steps):
                rows.append({"method": method, "axis": "step", "run": run,
                             "params": curve["params"].iloc[0], "x": step,
                             "held_out": not fitted[i], "measured": float(em[i]),
                             "predicted": float(predicted[i]),
                             "error": float(predicted[i] - em[i]), "a": laws[0].a,
                             "b": laws[0].b})
    return pd.DataFrame(rows)


def errors(result: pd.DataFrame) -> pd.DataFrame:
    """Forecast error on the held-out points per method and axis: mean absolute and largest
    absolute error of exact match, and the number of held-out points."""
    held = result[result["held_out"]].assign(abs_error=lambda t: t["error"].abs())
    return (held.groupby(["axis", "method"])["abs_error"]
            .agg(mean_abs_error="mean", max_abs_error="max", n="count").reset_index())


def figure(result: pd.DataFrame, steps: pd.DataFrame | None = None) -> Figure:
    """Exact match against size: measured points (fitted rungs filled, held-out rungs hollow,
    seed intervals as bars) and each method's prediction (solid over the fitted rungs, dashed
    over the extrapolation, its interval shaded); a second panel along training steps."""
    panels = 2 if steps is not None and len(steps) else 1
    fig = Figure(figsize=(5.5 * panels, 4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    first = result[result["method"] == result["method"].iloc[0]]
    for held, marker in ((False, "o"), (True, "o")):
        part = first[first["held_out"] == held]
        ax.errorbar(part["x"], part["measured"], yerr=[part["measured"] - part["measured_low"],
                    part["measured_high"] - part["measured"]], fmt=marker, color="black",
                    mfc="white" if held else "black", capsize=3, zorder=3,
                    label="measured (held out)" if held else "measured (fitted)")
    for i, (method, part) in enumerate(result.groupby("method", sort=False)):
        part = part.sort_values("x")
        color = f"C{i}"
        cut = int((~part["held_out"]).sum())
        ax.plot(part["x"][:cut], part["predicted"][:cut], "-", color=color, label=method)
        ax.plot(part["x"][cut - 1:], part["predicted"][cut - 1:], "--", color=color)
        ax.fill_between(part["x"], part["predicted_low"], part["predicted_high"], color=color,
                        alpha=0.15)
    ax.set(xscale="log", xlabel=first["axis"].iloc[0], ylabel="exact match", ylim=(-0.05, 1.05),
           title="forecast of held-out rungs (dashed)")
    ax.legend(fontsize=7)
    if panels == 2:  # a colour per rung: its runs' forecasts thin, its measured mean as dots
        ax = axes[1]
        method = steps["method"].iloc[0]
        rungs = steps[steps["method"] == method].groupby("params", sort=True)
        colours = plot_colours(rungs.ngroups)
        for i, (params, rung) in enumerate(rungs):
            color = colours[i]
            for _, curve in rung.groupby("run"):
                ax.plot(curve["x"], curve["predicted"], "-", color=color, lw=0.8, alpha=0.4)
            mean = rung.groupby("x").agg(measured=("measured", "mean"),
                                         held_out=("held_out", "all")).reset_index()
            ax.plot(mean["x"], mean["measured"], "o", ms=4, color=color,
                    label=f"{params:,.0f} params")
            held = mean[mean["held_out"]]
            ax.plot(held["x"], held["measured"], "o", ms=6, mfc="white", color=color)
        ax.set(xscale="log", xlabel="step", ylabel="exact match", ylim=(-0.05, 1.05),
               title=f"along training ({method}): lines forecast,\ndots measured (seed mean; "
                     "hollow: held out)")
        ax.legend(fontsize=7, loc="upper left")
    for ax, x in zip(axes, (result["x"], steps["x"] if panels == 2 else None), strict=False):
        # A ladder spans about a decade: label its own rungs (evaluations), not decades.
        ticks = np.unique(x)
        ticks = ticks[:: max(1, len(ticks) // 8)]
        ax.set_xticks(ticks, [f"{t:,.0f}" if t < 1e7 else f"{t:.2g}" for t in ticks],
                      rotation=30)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    return fig


def report_section(result: pd.DataFrame, steps: pd.DataFrame | None, figure_path: str) -> str:
    """The report's forecast section: held-out table, errors, transitions, figure."""
    held = result[result["held_out"]]
    cols = ["method", "axis", "x", "n_runs", "measured", "measured_low", "measured_high",
            "predicted", "predicted_low", "predicted_high", "error"]
    transitions = result.groupby(["axis", "method"], sort=False)[
        ["a", "b", "predicted_transition", "measured_transition"]].first().reset_index()
    parts = [
        "## Forecast of exact match from the smaller rungs",
        f"Laws log(-log p) = a + b log x fitted on all but the top "
        f"{held.groupby('axis')['x'].nunique().max()} rungs along parameters and training FLOPs "
        "(analysis/phenomena/forecast.py: `p^L` from the per-token answer log-probability, per "
        "position where the answer positions were scored, `Hu` from the exact-answer probability), "
        "extrapolated to the held-out rungs; along training, fitted on each run's early "
        "checkpoints and extrapolated to its last ones. Intervals: 5-95% over resampled runs of "
        "each rung. A large error means exact match does not follow the average token: some "
        "answer positions are learned abruptly, which the per-position rows show.",
        markdown_table(held[cols]),
        "Forecast error on held-out points (exact match, absolute):",
        markdown_table(pd.concat([errors(result), errors(steps)]) if steps is not None
                       and len(steps) else errors(result)),
        f"Laws and transition (exact match first >= {THRESHOLD}): predicted from the law vs "
        "measured over the whole ladder (NaN: not reached).",
        markdown_table(transitions),
        f"![forecast]({figure_path})",
    ]
    return "\n\n".join(parts)


def answer_length(task) -> float:
    """L of p^L: the mean number of counted answer tokens of the task's eval set."""
    return float(task.eval_set().mask.sum(1).double().mean())


def rungs(df: pd.DataFrame, axis: str = "params") -> int:
    return int(df[axis].nunique()) if axis in df and len(df) else 0


def write(df: pd.DataFrame, answer_len: float, out, holdout: int = 2) -> str:
    """forecast.csv (along params and FLOPs), forecast_steps.csv and figures/forecast.png under
    `out`; returns the report section."""
    out = Path(out)
    result = pd.concat([forecast(df, answer_len, axis, holdout) for axis in ("params", "flops")
                        if df[axis].notna().all()], ignore_index=True)
    steps = forecast_steps(df, answer_len, holdout)
    result.to_csv(out / "forecast.csv", index=False)
    steps.to_csv(out / "forecast_steps.csv", index=False)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figure(result[result["axis"] == "params"], steps).savefig(out / "figures" / "forecast.png",
                                                               dpi=120)
    return report_section(result, steps, "figures/forecast.png")


def findings(evidence) -> list[str]:
    """How the forecast of the held-out top rungs did (from forecast.csv, where it was made):
    each method's largest error on exact match along parameters."""
    path = Path(evidence.out) / "forecast.csv"
    if not path.exists():
        return []
    result = pd.read_csv(path)
    held = errors(result[result["axis"] == "params"])
    if held.empty:
        return []
    misses = ", ".join(f"{r['method']} by {r['max_abs_error']:.2f}" for _, r in held.iterrows())
    rungs = result.loc[result["held_out"] & (result["axis"] == "params"), "x"].nunique()
    verdict = ("so the smooth per-token laws did not foresee it"
               if held["max_abs_error"].min() > 0.25 else "close to what was measured")
    return [f"Forecast of the top {rungs} rungs' exact match from the lower rungs' "
            f"log-probabilities missed by at most: {misses} ({verdict})."]
