"""Helpers for the slow reproductions: run an experiment through `python -m train` and
`python -m analysis` in a subprocess, as a user would, and read what they wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from analysis.runs import Run, find_runs

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> None:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"


def train(out: Path, experiment: str, *overrides: str, sweep: bool = False) -> list[Run]:
    """Run `experiment` through `python -m train` into `out`; its runs, in sweep order."""
    place = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    _python("-m", "train", f"experiment={experiment}", "wandb.mode=disabled", "threads=1",
            f"{place}={out}", *overrides)
    return find_runs(out)


def analyse(out: Path, *options: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`python -m analysis out`: (scores.csv, summary.csv)."""
    _python("-m", "analysis", str(out), *options)
    return (pd.read_csv(out / "analysis" / "scores.csv", dtype={"run": str}),
            pd.read_csv(out / "analysis" / "summary.csv"))


def evals(run: Run) -> pd.DataFrame:
    """The metrics.jsonl rows that hold an evaluation."""
    metrics = run.metrics()
    return metrics[metrics["eval/loss"].notna()].reset_index(drop=True)


def by_coordinate(runs: list[Run], name: str) -> dict:
    return {run.coords[name]: run for run in runs}
