"""The analysis report: a markdown file that opens with its findings (sentences each phenomenon
writes from the statistics), then names every run with its coordinates and final metrics, the
phenomena's statistics sections, the events during training (over seeds, analysis.summary), the
phenomena's sections, the figures, and last the verdicts with the rules that decide them;
optionally the same tables and figures in a wandb run with job_type="analysis".

The phenomena are those of analysis.phenomena.PHENOMENA, each read through the hooks its
docstring lists; this module names none of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis import emergence, phenomena, summary
from analysis.runs import Run
from analysis.tables import markdown_table, statistics_table

log = logging.getLogger(__name__)

# Final metrics shown per run, where the run has them (then the phenomena's KEY_METRICS).
KEY_METRICS = ("eval/exact_match", "eval/token_accuracy", "eval/edit_distance",
               "eval/answer_logprob", "eval/loss", "train_eval/exact_match", "ood/exact_match")


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


def findings(evidence: Evidence) -> list[str]:
    """Every phenomenon's sentences, in the registry's order."""
    return [line for findings in phenomena.having("findings") for line in findings(evidence)]


def _sections(hook: str, evidence: Evidence) -> list[str]:
    """The sections of the phenomena that write one with `hook`."""
    return [text for section in phenomena.having(hook) if (text := section(evidence))]


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
            row |= {m: values[m] for m in (*KEY_METRICS, *phenomena.gather("KEY_METRICS"))
                    if m in values}
        else:
            row["step"] = "not scored"
        rows.append(row)
    return pd.DataFrame(rows)


def rules() -> str:
    """The rules the summary and the verdicts follow, from the constants that set them: these
    of the statistics over seeds, then each phenomenon's."""
    return " ".join([
        f"Every statistic is computed per seed, then averaged over the seeds that have one; "
        f"brackets give the {summary.INTERVAL} (Student's t on the per-seed values; for "
        f"{', '.join(summary.LOG_SCALE)}, a ratio, on their logarithms: geometric mean and "
        "interval; cut at zero for steps), "
        f"\"1 seed\" stands where there is no interval. Curve statistics need "
        f"{emergence.MIN_POINTS} distinct x values (rungs or evaluations); with fewer there "
        "is no number (with 3 rungs every monotone curve has linearity = breakthroughness "
        "= sqrt 2).", *(rules() for rules in phenomena.having("rules"))])


def verdicts(table: pd.DataFrame) -> list[str]:
    """The phenomena's verdicts over the whole summary, then per series along steps."""
    lines = [line for verdicts in phenomena.having("verdicts") for line in verdicts(table)]
    steps = table[table["axis"] == "step"]
    for series, rows in steps.groupby(summary.series_labels(steps), sort=False):
        lines += [f"{series}: {line}" for verdict in phenomena.having("step_verdict")
                  if (line := verdict(rows))]
    return lines


def events_section(evidence: Evidence) -> str | None:
    """The statistics along steps that the phenomena list as STEP_EVENTS, with their explanations
    and notes (None where there are neither)."""
    events = statistics_table(evidence.summary, "step", phenomena.gather("STEP_EVENTS"), wide=False)
    notes = [note for events_notes in phenomena.having("events_notes")
             for note in events_notes(evidence, events)]
    if not (len(events) or notes):
        return None
    return "\n\n".join([
        "## Events during training",
        " ".join(["Per run, then over seeds.", *phenomena.gather("STEP_EVENTS_TEXT"),
                  "Steps cannot be negative: their t-intervals are cut at zero."]),
        *notes, *([markdown_table(events)] if len(events) else [])])


def write_report(df: pd.DataFrame, table: pd.DataFrame, figures: list[Path],
                 runs: list[Run], out: str | Path, title: str, sections=(),
                 by_slice: pd.DataFrame | None = None) -> Path:
    """Write `<out>/report.md`; figure links are relative to it. `table`: the summary
    (analysis.summary.summarize). It opens with the phenomena's Findings; `sections`: more
    markdown sections (e.g. the forecast), placed before the figures after the phenomena's own;
    the verdicts come last."""
    out = Path(out)
    evidence = Evidence(df, table, by_slice, runs, out)
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
    parts += _sections("statistics_section", evidence)
    parts += [text for text in [events_section(evidence)] if text]
    parts += _sections("section", evidence) + list(sections)
    if figures:
        parts.append("## Figures")
        parts += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    found = verdicts(table) if len(table) else []
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
