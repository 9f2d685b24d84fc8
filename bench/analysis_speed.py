"""What `python -m analysis` costs next to training: the demo sweep, trained then analysed.

`python -m train experiment=demo` trains the sweep as conf/experiment/demo.yaml says (read from
there: sizes, seeds, steps and checkpoints are whatever the experiment holds today), then the
whole analysis command line (scores, statistics, figures, report; a fresh process and a fresh
output directory each time, so nothing is reused) is timed on it: alone, and while another
process keeps one core busy with a single-threaded matmul loop. Both with the default thread
count and with `--threads 2`, the choice that collapsed under contention before. Training
time is the sweep's span, from the first run's start (run.json) to the last run's end
(summary.json), i.e. what a user waits for; the share is analysis wall time / that span.

Training the demo takes minutes, so `python -m bench --only analysis --demo-dir DIR` trains
into DIR once and reuses the completed sweep found there afterwards. Not part of `--quick`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from analysis.runs import find_runs
from bench.timing import median, table

REPEATS = 3
SPIN = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a @ a\n")


def train_demo(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "train", "experiment=demo", f"hydra.sweep.dir={path}",
                    "wandb.mode=disabled"], check=True, capture_output=True)


def completed_runs(path: Path) -> list:
    """The sweep's runs if every one completed, else []."""
    runs = find_runs(path) if path.is_dir() else []
    done = all(run.summary().get("status") == "completed" for run in runs)
    return runs if done else []


def training_span(runs: list) -> float:
    """Seconds from the first run's start to the last run's end."""
    start = min(json.loads((r.path / "run.json").read_text())["started"] for r in runs)
    end = max(r.summary()["finished"] for r in runs)
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@contextlib.contextmanager
def busy_core(busy: bool):
    """While inside: (if `busy`) another process spinning on one core."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(1.0)  # past its start-up
        yield
    finally:
        spinner.kill()
        spinner.wait()


def analyse(sweep: Path, threads: int | None) -> tuple[float, float]:
    """(wall s, CPU s) of one `python -m analysis` on the sweep, into a fresh output dir."""
    with tempfile.TemporaryDirectory() as out:
        extra = [] if threads is None else ["--threads", str(threads)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "analysis", str(sweep), "--out", out, *extra],
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(quick: bool, device: torch.device, demo_dir: Path | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        sweep = demo_dir or Path(tmp) / "demo"
        reused = bool(completed_runs(sweep))
        if not reused:
            print(f"training the demo sweep into {sweep} ...", flush=True)
            train_demo(sweep)
        runs = completed_runs(sweep)
        span = training_span(runs)
        run_seconds = sum(r.summary()["wall_time_s"] for r in runs)
        checkpoints = sum(len(r.checkpoints()) for r in runs)
        cases = [(busy, threads) for busy in (False, True) for threads in (None, 2)]
        times = {case: [] for case in cases}
        for i in range(REPEATS):  # the cases in turns, so that load hits each alike
            for busy, threads in cases[::-1] if i % 2 else cases:
                if threads is not None and times[busy, threads]:
                    continue  # the non-default choice once: it shows whether it collapses
                with busy_core(busy):
                    times[busy, threads].append(analyse(sweep, threads))
                print(f"  busy={busy} threads={threads}: {times[busy, threads][-1][0]:.1f} s",
                      flush=True)
    rows = []
    for (busy, threads), samples in times.items():
        wall, cpu = median([w for w, _ in samples]), median([c for _, c in samples])
        rows.append(["another process busy on one core" if busy else "no other process of ours",
                     "default" if threads is None else threads, wall, cpu,
                     f"**{100 * wall / span:.1f}%**"])
    steps = {r.summary()["total_steps"] for r in runs}
    sizes = sorted({r.config.model.d_model for r in runs})
    return "\n".join([
        "## Analysis cost next to training (the demo sweep)",
        "",
        f"`python -m train experiment=demo`: {len(runs)} runs (d_model "
        f"{', '.join(map(str, sizes))}; {', '.join(map(str, sorted(steps)))} steps), "
        f"{checkpoints} checkpoints; "
        f"{'reused from an earlier training' if reused else 'trained in this run'}: span "
        f"{span:.0f} s from the first start to the last end ({run_seconds:.0f} run-seconds). "
        f"`python -m analysis DIR` timed whole (fresh process and output directory), median "
        f"of {REPEATS} with the default threads (one run with 2), the cases in turns; CPU s "
        f"is user + system of the process. Share: analysis wall time / training span (goal: "
        f"<= 10%). This machine's {os.cpu_count()} cores are shared with other jobs, which "
        f"affect both times.",
        "",
        table(["other load", "--threads", "analysis wall s", "analysis CPU s", "share"], rows),
    ])
