"""Sweep throughput: runs per hour of a small ladder trained one after another, side by side
(hydra-joblib-launcher, `conf/hydra/launcher/parallel.yaml`), and as ensembles (`train.ensemble`,
train/ensemble.py), on this machine.

1. End to end: the same six runs (3-digit addition, d_model 16/32/64, 2 layers, seeds 0 and 1)
   launched by `python -m train -m` four ways, each run one thread; wall time of the command,
   process start-up included.
2. Ensemble against sequential in one process, d_model 32, at batch 64 and at 8 sequences per
   model, where a batched step has the most per-operation overhead to save: N members of one
   `train.loop.run` against N plain runs, interleaved; whole runs (evaluations, checkpoints
   and directory bookkeeping included) and, from metrics.jsonl, steady-state steps.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.timing import interleaved, median, speedup, table
from models import GPTConfig
from tasks.arithmetic import ArithmeticConfig
from train.config import CheckpointConfig, Config, OptimConfig, TrainConfig, WandbConfig
from train.ensemble import member_configs
from train.loop import run

LADDER = ["model.d_model=16,32,64", "model.n_layers=2"]
LAUNCHES = {  # name -> overrides; every launch trains the same six runs
    "sequential (basic launcher)": ["seed=0,1"],
    "joblib, n_jobs=2": ["seed=0,1", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
    "ensemble of 2 seeds": ["train.ensemble=2"],
    "ensemble of 2 seeds + joblib, n_jobs=2": ["train.ensemble=2", "hydra/launcher=parallel",
                                                "hydra.launcher.n_jobs=2"],
}
MEMBERS = 4


def launch(overrides: list[str], steps: int) -> float:
    """Run the sweep; returns its jobs' summed training time (each job's longest summary.json
    wall time: an ensemble's members share one clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        subprocess.run(
            [sys.executable, "-m", "train", "-m", *LADDER, *overrides, f"train.steps={steps}",
             f"train.eval_every={steps}", "task.eval_size=200", "checkpoint.log_spaced_until=0",
             "checkpoint.every=null", "threads=1", "wandb.mode=disabled",
             f"hydra.sweep.dir={sweep}"],
            check=True, capture_output=True)
        return sum(max(json.loads(p.read_text())["wall_time_s"]
                       for p in job.glob("**/summary.json"))
                   for job in sweep.iterdir() if job.name.isdigit())


def end_to_end(quick: bool) -> str:
    steps = 50 if quick else 300
    training = {name: [] for name in LAUNCHES}
    times = interleaved({name: lambda n=name, o=o: training[n].append(launch(o, steps))
                         for name, o in LAUNCHES.items()}, repeats=1 if quick else 2, warmup=0)
    base = next(iter(LAUNCHES))
    rows = [[name, f"{median(t):.1f}", f"{median(training[name]):.1f}", 6 * 3600 / median(t),
             f"{speedup(times, name, base):.2f}"] for name, t in times.items()]
    return "\n".join([
        f"Six runs ({steps} steps, batch 64, evaluation at the start and the end only), whole "
        f"`python -m train -m` command. Training s: the jobs' wall times (summary.json) summed; "
        f"it doubles when two jobs side by side share one core:",
        "",
        table(["launch", "wall s", "training s", "runs/hour", "vs sequential"], rows),
    ])


def small_config(batch_size: int, steps: int, device: torch.device) -> Config:
    return Config(
        model=GPTConfig(d_model=32, n_layers=2, n_heads=4),
        task=ArithmeticConfig(eval_size=200),
        optim=OptimConfig(warmup_steps=10),
        train=TrainConfig(steps=steps, batch_size=batch_size, eval_every=steps,
                          log_every=steps // 6, ensemble=MEMBERS),
        checkpoint=CheckpointConfig(log_spaced_until=0, every=None),
        wandb=WandbConfig(mode="disabled"), device=str(device), threads=1)


def candidates(cfg: Config, root: Path) -> dict:
    """Train cfg's members as one ensemble run, or as plain runs one after another; each call
    trains them afresh in new directories under `root`."""
    calls = itertools.count()

    def ensemble() -> None:
        run(cfg, root / f"ensemble_{next(calls)}")

    def sequential() -> None:
        for i, member in enumerate(member_configs(cfg)):
            run(member, root / f"plain_{next(calls)}_{i}")

    return {"sequential": sequential, "ensemble": ensemble}


def step_s(run_dir: Path) -> float:
    """Seconds per training step between a run's first and last train/loss records (no
    evaluation or checkpoint falls between them here)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/loss" in r]
    first, last = logged[0], logged[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def in_process(quick: bool, device: torch.device) -> str:
    steps = 50 if quick else 300
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in (64, 8):
            root = Path(tmp) / f"batch_{batch_size}"
            times = interleaved(candidates(small_config(batch_size, steps, device), root),
                                repeats=1 if quick else 3)
            plain = MEMBERS * median([step_s(d) for d in root.glob("plain_*")])
            together = median([step_s(d / "member_0") for d in root.glob("ensemble_*")])
            rows.append([batch_size, MEMBERS * 3600 / median(times["sequential"]),
                         MEMBERS * 3600 / median(times["ensemble"]),
                         f"**{speedup(times, 'ensemble', 'sequential'):.2f}**",
                         1e3 * plain, 1e3 * together, f"{plain / together:.2f}"])
            print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    return "\n".join([
        f"{MEMBERS} runs of d_model 32, 2 layers ({steps} steps, evaluation at the start and the "
        f"end), in this process with {torch.get_num_threads()} thread(s): {MEMBERS} plain runs "
        f"one after another against one `train.ensemble={MEMBERS}` run:",
        "",
        table(HEADERS, rows),
    ])


HEADERS = ["sequences per model", "sequential runs/hour", "ensemble runs/hour",
           "ensemble vs sequential", f"{MEMBERS} plain steps ms", "ensemble step ms",
           "step speedup"]


def main(quick: bool, device: torch.device) -> str:
    return "\n\n".join(["## Sweep throughput", in_process(quick, device), end_to_end(quick)])
