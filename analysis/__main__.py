"""Command line: score every run below a directory and write the analysis report.

    python -m analysis multirun/2024-01-01/12-00-00 [--steps 100,200] [--last] [--device cpu]
        [--wandb online|offline|disabled] [--out DIR] [--transfer] [--forecast [--holdout K]]
        [--llc [--llc-checkpoints K] [--llc-refine] [--llc-workers N]]

Writes `<out>/scores.csv` (incremental: checkpoints already scored are not scored again),
`<out>/summary.csv`, `<out>/figures/*.png` and `<out>/report.md`; `<out>` defaults to
`<dir>/analysis`. `--transfer` instead reads the runs' final losses only and writes the
learning-rate transfer view (analysis/phenomena/transfer.py). `--forecast` (and any sweep of >= 4
model sizes) adds the forecast of the top `--holdout` rungs' exact match from the smaller ones
(analysis/phenomena/forecast.py): forecast.csv, forecast_steps.csv, a figure and a report
section.
`--llc` adds the local learning coefficient of K log-spaced checkpoints per run and the stage
boundaries on its curve (analysis/phenomena/stages/). A bad run or checkpoint (one that fails its
manifest, say) is reported as a warning, skipped, and listed in the report; a directory without
any run exits with status 2. Tables that a re-run reads are written atomically.
`python -m analysis.verify DIR` checks the runs without scoring.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from analysis import plots, slices, summary
from analysis.phenomena import forecast, transfer
from analysis.phenomena.stages import detect as stages
from analysis.phenomena.stages import sweep as llc_sweep
from analysis.phenomena.subskills.report import slice_transitions
from analysis.report import log_to_wandb, write_report
from analysis.runs import Run, find_runs, score, write_csv

log = logging.getLogger("analysis")


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--steps={text!r}: expected comma-separated integers, e.g. 100,200") from None


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--threads={text!r}: expected an integer >= 1")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a run directory or a Hydra multirun directory")
    parser.add_argument("--steps", type=_steps, help="only these checkpoint steps, e.g. 100,200")
    parser.add_argument("--last", action="store_true", help="only each run's last checkpoint")
    parser.add_argument("--device", default="cpu", help="torch device for scoring (default cpu)")
    parser.add_argument("--wandb", default="disabled", choices=("online", "offline", "disabled"),
                        help="also log tables and figures to wandb (default disabled)")
    parser.add_argument("--out", type=Path, help="output directory (default <dir>/analysis)")
    parser.add_argument("--threads", type=_threads, default=1,
                        help="torch CPU threads (default 1: tiny models gain nothing from more, "
                             "and several threads slow down badly when other work shares the "
                             "cores)")
    parser.add_argument("--transfer", action="store_true",
                        help="learning-rate transfer across width from the runs' final losses")
    parser.add_argument("--forecast", action="store_true",
                        help="forecast exact match of the top rungs from the smaller ones")
    parser.add_argument("--holdout", type=int, default=2,
                        help="rungs (and checkpoints) held out by the forecast (default 2)")
    parser.add_argument("--llc", action="store_true",
                        help="also sample the local learning coefficient (devinterp; the llc "
                             "extra) and find developmental stages on it")
    parser.add_argument("--llc-checkpoints", type=_positive, default=llc_sweep.CHECKPOINTS,
                        help="checkpoints sampled per run, log-spaced (default "
                             f"{llc_sweep.CHECKPOINTS}; --steps or --last choose instead)")
    parser.add_argument("--llc-refine", action="store_true",
                        help="also the LLC restricted to each head and each layer")
    parser.add_argument("--llc-workers", type=_positive, default=1,
                        help="local processes that sample in parallel (default 1)")
    return parser.parse_args(argv)


def bad_arguments(args: argparse.Namespace, out: Path) -> str | None:
    """Why the arguments cannot work (checked before anything is read or written), or None."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device {args.device}: not a device; use cpu, cuda or cuda:<index>"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device}: no CUDA device is available here; use --device cpu"
    if out.exists() and not out.is_dir():
        return (f"--out {out}: a file; --out names the output directory (created if absent)"
                if args.out else f"{out}, the output directory, is a file: pass --out DIR")
    return None


def skipped_section(runs: list[Run]) -> str | None:
    """The report's list of checkpoints that could not be scored, and why."""
    lines = [f"- `{run.name}` step {step}: {why}" for run in runs
             for step, why in sorted(run.skipped.items())]
    return "## Skipped checkpoints\n\n" + "\n".join(lines) if lines else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or args.dir / "analysis"
    if problem := bad_arguments(args, out):
        log.error("%s", problem)
        return 2
    try:
        runs = find_runs(args.dir)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if not runs:
        log.error("no runs under %s: no directory with .hydra/config.yaml", args.dir)
        return 2
    if args.llc and (missing := llc_sweep.missing_extra()):
        log.error("%s", missing)
        return 2
    if args.transfer:
        print(f"transfer: {transfer.write(runs, out)}")
        return 0
    log.info("scoring %d runs under %s", len(runs), args.dir)
    df = score(args.dir, steps=args.steps, last=args.last, device=args.device, out=out,
               runs=runs)
    if df.empty:
        log.error("no checkpoint under %s could be scored", args.dir)
        return 1
    if args.llc:
        df = llc_sweep.score_llc(runs, out, args.steps, args.last, args.llc_checkpoints,
                                 args.llc_refine, args.llc_workers, args.device)
    by_slice, df = df, df[df["slice"] == slices.ALL].drop(columns="slice")
    df = summary.mark_training_sets(df, runs)
    table = summary.summarize(df)
    if len(boundaries := stages.summarize(df)):
        table = pd.concat([table, boundaries], ignore_index=True)
    write_csv(pd.concat([table, slice_transitions(by_slice)]), out / "summary.csv")
    figures = plots.make_figures(df, runs, out / "figures", by_slice)
    sections = [s for s in [skipped_section(runs)] if s]
    has_answer = "eval/answer_logprob" in set(df["metric"])
    if has_answer and (args.forecast or forecast.rungs(df) > max(3, args.holdout + 1)):
        try:
            sections.append(forecast.write(df, forecast.answer_length(runs[0].task()), out,
                                           args.holdout))
        except ValueError as e:
            log.error("forecast: %s", e)
            if args.forecast:
                return 1
    elif args.forecast:
        log.error("--forecast needs runs with eval/answer_logprob at >= %d sizes (got %d)",
                  args.holdout + 2, forecast.rungs(df))
        return 1
    report = write_report(df, table, figures, runs, out, title=args.dir.resolve().name,
                          sections=sections, by_slice=by_slice)
    if args.wandb != "disabled":
        log_to_wandb(df, table, figures, runs, out, group=args.dir.resolve().name,
                     mode=args.wandb)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
