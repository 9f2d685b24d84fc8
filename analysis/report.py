"""The analysis report: a markdown file that opens with its findings (sentences written from the
statistics by each phenomenon's module, PHENOMENA), then names every run with its coordinates and
final metrics, the emergence statistics over seeds (analysis.summary), the figures, and last the
verdicts with the rules that decide them; optionally the same tables and figures in a wandb run
with job_type="analysis".

A phenomenon joins the report by one line in PHENOMENA: a module with `findings(evidence) ->
list[str]` (its sentences for the Findings) and optionally `section(evidence) -> str | None` (a
markdown section placed before the figures), both reading the `Evidence` of one analysis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from analysis import emergence, forecast, subskills, summary
from analysis.runs import Run
from analysis.stages import detect as stages

log = logging.getLogger(__name__)

# Final metrics shown per run, where the run has them.
KEY_METRICS = ("eval/exact_match", "eval/token_accuracy", "eval/edit_distance",
               "eval/answer_logprob", "eval/loss", "train_eval/exact_match", "ood/exact_match",
               "prefix_matching_max", "induction_loss", "weight_norm", "fourier_top_fraction")
# Phenomenon modules with a report section and findings of their own: section(df, table, out)
# and findings(table).
STATISTICS = ("transition", "sharpness", "linearity", "breakthroughness")
EVENTS = ("memorization_step", "generalization_step", "grokking_ratio", "restricted_halved_step",
          "lead_steps", "lead_evaluations", "excluded_ratio", "phase_change_step",
          "phase_change_largest_fall", "phase_change_required_fall", "head_formation_step",
          "coincides_with_prefix_matching", "drop_start", "drop_end", "abruptness")


@dataclass(frozen=True)
class Evidence:
    """What one analysis has found, for the phenomena's findings and sections: the scores
    (analysis.runs.score, slice `all`), the summary (analysis.summary.summarize), the scores on
    every slice (None without slices), the runs, and the output directory (forecast.csv,
    summary.csv, figures/ are there once written)."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    by_slice: pd.DataFrame | None
    runs: list[Run]
    out: Path


# The phenomena whose findings open the report, in this order.
PHENOMENA = (summary, subskills, forecast, stages)


def findings(evidence: Evidence) -> list[str]:
    """Every phenomenon's sentences, in PHENOMENA's order."""
    return [line for module in PHENOMENA for line in module.findings(evidence)]


def phenomenon_sections(evidence: Evidence) -> list[str]:
    """The sections of the phenomena that write one."""
    found = [getattr(module, "section", lambda _: None)(evidence) for module in PHENOMENA]
    return [text for text in found if text]


def fresh_data_note(df: pd.DataFrame) -> str | None:
    """Why there is no grokking statistic, where runs train on fresh problems every step."""
    if "finite_train_set" not in df or df["finite_train_set"].all():
        return None
    fresh = df.loc[~df["finite_train_set"].astype(bool), "run"].nunique()
    return (f"No grokking or memorization statistics for the {fresh} runs that train on fresh "
            "problems every step: there is no finite training set to memorize, so train and "
            "test accuracy measure the same thing.")


def _cell(value) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (numbers to 4 significant digits, NaN blank)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def runs_table(df: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """One row per run: its coordinates, size, last scored step and final KEY_METRICS."""
    rows = []
    for run in runs:
        scored = df[df["run"] == run.name] if len(df) else df
        row = {"run": run.name, **run.coords}
        if len(scored):
            final = scored[scored["step"] == scored["step"].max()]
            values = dict(zip(final["metric"], final["value"], strict=True))
            row |= {"params": int(final["params"].iloc[0]), "step": int(final["step"].iloc[0])}
            row |= {m: values[m] for m in KEY_METRICS if m in values}
        else:
            row["step"] = "not scored"
        rows.append(row)
    return pd.DataFrame(rows)


def statistics_table(table: pd.DataFrame, axis: str, statistics, prefix: str = "",
                     wide: bool = True) -> pd.DataFrame:
    """The summary's rows on `axis` for `statistics` of metrics starting with `prefix`, each as
    text (summary.describe: mean [interval], seeds, or why there is none). Wide: one row per
    series and metric, a column per statistic; else one row per statistic."""
    if table.empty:
        return pd.DataFrame()
    rows = table[(table["axis"] == axis) & table["statistic"].isin(statistics)
                 & table["metric"].str.startswith(prefix)]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(series=summary.series_labels(rows),
                       estimate=[summary.describe(r) for _, r in rows.iterrows()])
    if not wide:
        order = {s: i for i, s in enumerate(statistics)}
        rows = rows.sort_values("statistic", key=lambda c: c.map(order), kind="stable")
        return rows.sort_values(["series", "metric"], kind="stable")[
            ["series", "metric", "statistic", "estimate"]]
    pivot = rows.pivot_table(index=["series", "metric"], columns="statistic", values="estimate",
                             aggfunc="first", sort=False)
    return pivot[[s for s in statistics if s in pivot.columns]].reset_index()


def too_few_rungs(table: pd.DataFrame) -> str | None:
    """One sentence in place of a table of empty cells, where no series against parameters has
    the rungs the statistics need (None where some has)."""
    rows = table[(table["axis"] == "params") & table["statistic"].isin(STATISTICS)]
    if rows.empty or rows["value"].notna().any():
        return None
    rungs = " or ".join(str(n) for n in sorted(set(rows["n_points"])))
    return (f"{rungs} rungs: too few for {', '.join(STATISTICS)} "
            f"(needs {emergence.MIN_POINTS}).")


def rules() -> str:
    """The rules the summary and the verdicts follow, from the constants that set them."""
    return (f"Every statistic is computed per seed, then averaged over the seeds that have one; "
            f"brackets give the {summary.INTERVAL} (Student's t on the per-seed values; for "
            f"{', '.join(summary.LOG_SCALE)}, a ratio, on their logarithms: geometric mean and "
            "interval; cut at zero for steps), "
            f"\"1 seed\" stands where there is no interval. Curve statistics need "
            f"{emergence.MIN_POINTS} distinct x values (rungs or evaluations); with fewer there "
            "is no number (with 3 rungs every monotone curve has linearity = breakthroughness "
            f"= sqrt 2). Sudden or smooth: breakthroughness, signed so that the metric improves "
            f"upwards, whose interval lies above {summary.SUDDEN_FACTOR:g} times a straight "
            "line's through the same rungs (n - 1 for n rungs) is sudden, below it smooth, "
            "across it unclear. Phase change: the induction loss, through a running median of 3 "
            f"evaluations, falls within {emergence.PHASE_CHANGE_WINDOW:.0%} of the steps it "
            f"spans by at least {emergence.PHASE_CHANGE_FALL:.0%} of its total fall and "
            f"{emergence.PHASE_CHANGE_FALL:.0%} of its initial value (else none); its step is "
            "where the loss crosses the middle of that fall. It coincides with the rise of "
            "prefix matching when an induction head forms (max prefix matching first reaches "
            f"{emergence.HEAD_THRESHOLD:g}) within the fall's window widened by "
            f"{emergence.COINCIDENCE_TOLERANCE:.0%} of the steps on each side.")


def _last(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Each run's metrics starting with `prefix` at its last step that has them: run x metric."""
    rows = df[df["metric"].str.startswith(prefix)]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows.pivot_table(index="run", columns="metric", values="value", aggfunc="first")


def _per_head(df: pd.DataFrame, prefix: str, name: str) -> pd.DataFrame:
    """Columns run, head (L0H1, ...) and `name`: the per-head metrics `prefix`L0H1, ..."""
    values = _last(df, prefix).stack().dropna().rename(name).reset_index()
    return values.assign(head=values["metric"].str.removeprefix(prefix)).drop(columns="metric")


def causal_section(df: pd.DataFrame) -> str | None:
    """The report's "Causal checks" section from the causal/ scores at each run's last scored
    checkpoint (None when there are none)."""
    if not len(df) or not df["metric"].str.startswith("causal/").any():
        return None
    parts = ["## Causal checks",
             "Loss at each run's last scored checkpoint with parts of the model zero-ablated "
             "through its hooks (analysis/mechanistic.py), on the eval set: for induction, on "
             "the repeated tokens. Heads are often redundant, so a set of heads can matter "
             "where each alone barely does."]
    final = _last(df, "causal/")
    if "causal/clean_loss" in final:
        head = _per_head(df, "causal/head_loss/", "ablated_loss")
        for name in ("prefix_matching", "previous_token"):
            head = head.merge(_per_head(df, f"{name}/", name), on=["run", "head"], how="left")
        # The head whose previous-token score is highest: the one the probe ablated.
        top = head.loc[head.groupby("run")["previous_token"].idxmax()].set_index("run")["head"]
        table = pd.DataFrame({
            "clean": final["causal/clean_loss"],
            "induction heads (prefix matching > 0.5)": final["causal/n_induction_heads"],
            "those ablated": final["causal/induction_heads_loss"],
            "top previous-token head": top,
            "it ablated": final["causal/previous_token_head_loss"]}).reset_index()
        parts += [markdown_table(table), "Each head ablated alone, beside its scores:",
                  markdown_table(head[["run", "head", "prefix_matching", "previous_token",
                                       "ablated_loss"]])]
    layer = final.filter(like="causal/loss/")
    if len(layer.columns):
        layer.columns = [c.removeprefix("causal/loss/") for c in layer.columns]
        layer = layer[["clean", *sorted(c for c in layer.columns if c != "clean")]]
        parts += ["Loss with each layer's attention or MLP output zeroed:",
                  markdown_table(layer.reset_index())]
    return "\n\n".join(parts)


def write_report(df: pd.DataFrame, table: pd.DataFrame, figures: list[Path],
                 runs: list[Run], out: str | Path, title: str, sections=(),
                 by_slice: pd.DataFrame | None = None) -> Path:
    """Write `<out>/report.md`; figure links are relative to it. `table`: the summary
    (analysis.summary.summarize). It opens with the Findings (PHENOMENA's sentences);
    `sections`: more markdown sections (e.g. the forecast), placed before the figures with the
    phenomena's own; the verdicts come last."""
    out = Path(out)
    evidence = Evidence(df, table, by_slice, runs, out)
    sizes = statistics_table(table, "params", STATISTICS, prefix="eval/")
    events = statistics_table(table, "step", EVENTS, wide=False)
    checkpoints = df[["run", "step"]].drop_duplicates().shape[0] if len(df) else 0
    parts = [f"# Analysis: {title}"]
    found = findings(evidence)
    if found:
        parts += ["## Findings", "\n".join(f"- {line}" for line in found)]
    parts += [
        "## Runs",
        f"Runs: {len(runs)}; scored checkpoints: {checkpoints}. Tables: `scores.csv` (one row "
        "per run x checkpoint x metric), `summary.csv` (emergence statistics per series, "
        "metric and statistic: value, interval, seeds, and why a value is missing). "
        "Coordinates and metrics at the last scored checkpoint:",
        markdown_table(runs_table(df, runs)),
    ]
    if len(sizes):
        parts += [
            "## Emergence across model sizes",
            "Statistics of each metric against parameters at every run's last checkpoint, per "
            "seed, then over seeds: `transition` is the parameter count where the metric "
            "crosses the middle of its range, `sharpness` its largest change per decade, "
            "`linearity` and `breakthroughness` BIG-bench's (Srivastava et al. 2022; "
            "breakthroughness is also Schaeffer et al. 2023's emergence score). An exact metric "
            "with high breakthroughness beside a continuous one with high linearity is the "
            f"metric mirage. Intervals: {summary.INTERVAL}.",
            too_few_rungs(table) or markdown_table(sizes),
        ]
    note = fresh_data_note(df)
    if len(events) or note:
        parts += ["## Events during training",
                  "Per run, then over seeds. Grokking: first steps where train and test accuracy "
                  "reach 0.99. Induction: the phase change of the loss on the repeat (rule under "
                  "Verdicts), the step where an induction head forms, and whether they "
                  "coincide (the share of seeds). Plateau and drop (Barak et al. 2022) of the "
                  "eval loss: `abruptness` is the plateau's length in units of the drop's, far "
                  "above 1 for a sudden drop. Steps cannot be negative: their t-intervals are "
                  "cut at zero.", *([note] if note else []),
                  *([markdown_table(events)] if len(events) else [])]
        if len(events) and "restricted_loss" in set(events["metric"]):
            parts.insert(-1, "Progress measures (Nanda et al. 2023): `restricted_halved_step` is "
                         "the first checkpoint after memorization where restricted loss is "
                         "below half its memorization-time value, `lead_steps` and "
                         "`lead_evaluations` how long before test accuracy reaches 0.95, and "
                         "`excluded_ratio` excluded loss there over its memorization-time "
                         "value (above 1: memorization alone explains less).")
    parts += list(sections) + phenomenon_sections(evidence)
    if figures:
        parts.append("## Figures")
        parts += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    found = summary.verdicts(table) if len(table) else []
    if found:
        parts += ["## Verdicts", rules(), "\n".join(f"- {line}" for line in found)]
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def log_to_wandb(df: pd.DataFrame, table: pd.DataFrame, figures: list[Path],
                 runs: list[Run], out: Path, group: str, mode: str) -> None:
    """Log the tables (wandb.Table) and figures (wandb.Image) to a run with
    job_type="analysis"; a failure is logged as a warning, never raised."""
    try:
        import wandb

        config = runs[0].config
        with wandb.init(project=OmegaConf.select(config, "wandb.project", default="phaselab"),
                        entity=OmegaConf.select(config, "wandb.entity", default=None),
                        job_type="analysis", group=group, name=f"analysis-{group}", mode=mode,
                        dir=str(out)) as run:
            run.log({"scores": wandb.Table(dataframe=df),
                     "summary": wandb.Table(dataframe=table),
                     **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    except Exception as e:  # wandb is a mirror of the files written; never fatal
        log.warning("wandb logging failed, the report and tables are on disk: %s", e)
