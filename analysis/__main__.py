"""Command line: score every run below a directory and write the analysis report.

    python -m analysis multirun/2024-01-01/12-00-00 [--steps 100,200] [--last] [--device cpu]
        [--wandb online|offline|disabled] [--out DIR] [--transfer] [--forecast [--holdout K]]

Writes `<out>/scores.csv` (incremental: checkpoints already scored are not scored again),
`<out>/summary.csv`, `<out>/figures/*.png` and `<out>/report.md`; `<out>` defaults to
`<dir>/analysis`. `--transfer` instead reads the runs' final losses only and writes the
learning-rate transfer view (analysis/transfer.py). `--forecast` (and any sweep of >= 4 model
sizes) adds the forecast of the top `--holdout` rungs' exact match from the smaller ones
(analysis/forecast.py): forecast.csv, forecast_steps.csv, a figure and a report section. A bad
run or checkpoint is reported as a warning and skipped; a directory without any run exits with
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from analysis import forecast, plots, slices, summary, transfer
from analysis.report import causal_section, log_to_wandb, markdown_table, write_report
from analysis.runs import find_runs, score

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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or args.dir / "analysis"
    try:
        runs = find_runs(args.dir)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if not runs:
        log.error("no runs under %s: no directory with .hydra/config.yaml", args.dir)
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
    by_slice, df = df, df[df["slice"] == slices.ALL].drop(columns="slice")
    df = summary.mark_training_sets(df, runs)
    table = summary.summarize(df)
    per_slice = summary.slice_transitions(by_slice)
    pd.concat([table, per_slice]).to_csv(out / "summary.csv", index=False)
    figures = plots.make_figures(df, runs, out / "figures")
    figures += plots.slice_figures(by_slice, out / "figures")
    sections = [s for s in [slices.errors_section(by_slice, markdown_table, per_slice),
                            causal_section(df)] if s]
    has_answer = "eval/answer_logprob" in set(df["metric"])
    if has_answer and (args.forecast or forecast.rungs(df) > max(3, args.holdout + 1)):
        try:
            sections.append(forecast.write(df, forecast.answer_length(runs[0].task()), out,
                                           args.holdout, markdown_table))
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
