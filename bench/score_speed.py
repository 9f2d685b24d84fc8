"""Scoring speed: checkpoints per second of `python -m analysis`, and its cost next to training.

A tiny sweep (addition, d_model 32 and 64, 2 layers, Pythia-style log-spaced checkpoints) is
trained with `python -m train -m` one thread per run; then every checkpoint is scored in this
process with `analysis.runs.score` (scoring only: no figures, no report), and once more by the
whole command line (scores, statistics, figures and report, in a fresh process with as many
threads as this one). The share
compares a full score of every checkpoint with the sweep's training time (summary.json's wall
times, which include the loop's own evaluations).

Greedy answer generation decodes from a key/value cache; its baseline, scoring with
`evaluate(..., kv_cache=False)` (the whole prefix re-run for every generated token), is timed
in turns with it in the same process.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

from analysis.evaluate import evaluate
from analysis.runs import score
from bench.timing import interleaved, median, speedup, table, timed


def train_sweep(path: Path, steps: int) -> float:
    """Train the two runs under `path`; returns their summed training wall time."""
    subprocess.run(
        [sys.executable, "-m", "train", "-m", "task=addition", "model.d_model=32,64",
         "model.n_layers=2", f"train.steps={steps}", f"train.eval_every={steps}",
         f"checkpoint.log_spaced_until={steps}", "checkpoint.every=null", "threads=1",
         "wandb.mode=disabled", f"hydra.sweep.dir={path}"],
        check=True, capture_output=True)
    summaries = [json.loads(p.read_text()) for p in path.glob("*/summary.json")]
    return sum(s["wall_time_s"] for s in summaries)


def main(quick: bool, device: torch.device) -> str:
    steps = 64 if quick else 512
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        training_s = train_sweep(sweep, steps)
        out = Path(tmp) / "analysis"

        def score_all(kv_cache: bool = True):
            shutil.rmtree(out, ignore_errors=True)  # score everything: nothing cached
            chosen = functools.partial(evaluate, kv_cache=kv_cache)
            with mock.patch("analysis.scoring.evaluate", chosen):
                return score(sweep, out=out, device=str(device))

        scored = score_all()
        same = scored.equals(score_all(kv_cache=False))
        checkpoints = len(scored[["run", "step"]].drop_duplicates())
        times = interleaved({"cached": score_all, "uncached": lambda: score_all(kv_cache=False)},
                            repeats=1 if quick else 3, warmup=0, device=device)
        score_s, uncached_s = median(times["cached"]), median(times["uncached"])
        ratio = speedup(times, "cached", "uncached")
        threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        cli_s = timed(lambda: subprocess.run(
            [sys.executable, "-m", "analysis", str(sweep), "--out", str(Path(tmp) / "cli"),
             "--device", str(device)], check=True, capture_output=True, env=threads))
    rows = [["score (in process), KV-cache generation", checkpoints, f"{score_s:.1f}",
             checkpoints / score_s, f"{100 * score_s / training_s:.0f}%"],
            ["score (in process), full-recompute generation (baseline)", checkpoints,
             f"{uncached_s:.1f}", checkpoints / uncached_s,
             f"{100 * uncached_s / training_s:.0f}%"],
            ["`python -m analysis` (fresh process, + figures, report)", checkpoints,
             f"{cli_s:.1f}", checkpoints / cli_s, f"{100 * cli_s / training_s:.0f}%"]]
    summary = (f"KV cache / full recompute: {ratio:.2f}x checkpoints/s (median of paired "
               f"ratios); score tables identical: {'yes' if same else 'NO'}.")
    print(table(HEADERS, rows), summary, sep="\n", flush=True)
    return "\n".join([
        "## Scoring checkpoints",
        "",
        f"Two runs (3-digit addition, d_model 32 and 64, 2 layers, {steps} steps, batch 64, "
        f"checkpoints at 0, 1, 2, 4, ..., {steps}) trained in {training_s:.1f} s (one thread "
        f"each, wall time from summary.json). Scoring runs every metric of analysis on each "
        f"checkpoint's eval, train_eval and ood sets.",
        "",
        table(HEADERS, rows),
        "",
        summary,
    ])


HEADERS = ["what", "checkpoints", "seconds", "checkpoints/s", "share of training time"]
