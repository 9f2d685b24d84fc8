"""The GPU check: every CUDA path of phaselab in one run, results in one file.

Run by scripts/gpu_check.sh, which first installs the missing dependencies:

    python3 -m bench.gpu_check --out gpu_results.md          # on a CUDA machine, ~6 min
    python3 -m bench.gpu_check --quick --only train          # a short pass over some steps

Steps, each a subprocess of this Python so that a crash in one (a CUDA error kills the process)
is reported and the others still run:
  pytest   `pytest -m gpu`: the tests that need CUDA
  train    a small ladder point trained five ways: float32 eager (the baseline), bfloat16
           autocast, bfloat16 + compile, bfloat16 + compile with CUDA graphs
           (compile=reduce-overhead), and a 2-member ensemble; their final train losses must
           agree with the baseline's within LOSS_TOLERANCE
  score    `python -m analysis` on the bfloat16 run's checkpoints with --device cuda
  bench    the train-step benchmark (TFLOP/s, MFU against a measured bf16 matmul peak) and the
           small-rung sweep throughput benchmark, on CUDA
The exit status is nonzero if any step failed. The device is never chosen silently: without
CUDA (or with --device cpu but no --allow-cpu) the check refuses to start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from analysis.layout import METRICS

STEPS = ("pytest", "train", "score", "bench")
# The ladder point: 3-digit addition at d_model 64, 2 layers; float32 eager is the reference.
POINT = ["task=addition", "task.digits=3", "model.d_model=64", "model.n_layers=2",
         "train.batch_size=64", "train.eval_every=100", "train.log_every=10",
         "checkpoint.log_spaced_until=0", "checkpoint.every=100", "seed=0"]
VARIANTS = {
    "float32 eager": ["dtype=float32"],
    "bfloat16 autocast": ["dtype=bfloat16"],
    "bfloat16 + compile": ["dtype=bfloat16", "compile=true"],
    "bfloat16 + CUDA graphs": ["dtype=bfloat16", "compile=reduce-overhead"],
    "ensemble of 2, bfloat16": ["dtype=bfloat16", "train.ensemble=2"],
}
# Relative gap allowed between a variant's final loss (mean of the last quarter of the logged
# train losses) and float32 eager's: bfloat16 rounding makes trajectories drift apart, but by a
# few percent at this size, while a broken path (wrong mask, no learning) is off by far more.
LOSS_TOLERANCE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N (default cuda)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="let --device cpu run the steps (a dry run of the check itself)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"subset of {', '.join(STEPS)}")
    parser.add_argument("--quick", action="store_true", help="fewer training steps and sizes")
    parser.add_argument("--out", type=Path, default=Path("gpu_results.md"),
                        help="results file (default gpu_results.md)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in args.only if s not in STEPS]:
        parser.error(f"--only={','.join(unknown)}: must be among {', '.join(STEPS)}")
    return args


def require_device(name: str, allow_cpu: bool) -> torch.device:
    """The device the check runs on; raises SystemExit (never falls back) when it is not there."""
    device = torch.device(name)
    if device.type == "cpu" and not allow_cpu:
        raise SystemExit("--device cpu: the GPU check does not run on CPU (pass --allow-cpu "
                         "for a dry run of the check itself)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: no CUDA device is available "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        torch.ones(1, device=device).sum().item()  # a CUDA error surfaces here, not mid-step
    elif device.type != "cpu":
        raise SystemExit(f"--device {name}: must be cuda, cuda:N (or cpu with --allow-cpu)")
    return device


def run(cmd: list[str], log: Path) -> tuple[bool, float]:
    """Run one command with output to `log` (and its tail on failure to stderr)."""
    start = time.perf_counter()
    with log.open("w") as f:
        ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    took = time.perf_counter() - start
    if not ok:
        print(f"FAILED: {' '.join(cmd)}\n" + "".join(log.read_text().splitlines(True)[-30:]),
              file=sys.stderr, flush=True)
    return ok, took


def final_loss(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail)


def check_train(device: torch.device, steps: int, work: Path) -> tuple[bool, list[str]]:
    rows, ok, baseline = [], True, None
    for name, extra in VARIANTS.items():
        run_dir = work / name.replace(" ", "_").replace(",", "").replace("+", "")
        cmd = [sys.executable, "-m", "train", *POINT, f"train.steps={steps}",
               f"device={device}", *extra, f"hydra.run.dir={run_dir}"]
        ran, took = run(cmd, work / f"{run_dir.name}.log")
        if not ran:
            rows.append(f"| {name} | failed | | {took:.0f} s |")
            ok = False
            continue
        loss = final_loss(run_dir / "member_0" if "ensemble" in name else run_dir)
        baseline = loss if baseline is None else baseline
        gap = abs(loss - baseline) / baseline
        ok &= gap <= LOSS_TOLERANCE
        rows.append(f"| {name} | {loss:.4f} | {gap:.1%} | {took:.0f} s |")
    head = [f"Ladder point `{' '.join(POINT)} train.steps={steps}`; tolerance "
            f"{LOSS_TOLERANCE:.0%} of float32 eager's final loss (ensemble: member 0, same seed).",
            "", "| variant | final train loss | gap | wall |", "|---|---|---|---|"]
    return ok, head + rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = require_device(args.device, args.allow_cpu)
    work = Path(tempfile.mkdtemp(prefix="phaselab_gpu_check_"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [f"## GPU check: {name}", "",
             f"_{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
             f"`python3 -m bench.gpu_check {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f"; logs in {work}_", ""]
    results: dict[str, bool] = {}
    env_quick = ["--quick"] if args.quick else []
    for step in args.only:
        print(f"[{step}]", flush=True)
        if step == "pytest":
            results[step], took = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                       "tests"], work / "pytest.log")
            tail = (work / "pytest.log").read_text().strip().splitlines()[-1:]
            lines += [f"### pytest -m gpu: {'ok' if results[step] else 'FAILED'} ({took:.0f} s)",
                      "", *tail, ""]
        elif step == "train":
            results[step], rows = check_train(device, 100 if args.quick else 600, work)
            lines += [f"### Training paths: {'ok' if results[step] else 'FAILED'}", "", *rows, ""]
        elif step == "score":
            target = work / "bfloat16_autocast"
            if not target.exists():
                check_train(device, 100, work)
            results[step], took = run([sys.executable, "-m", "analysis", str(target),
                                       "--device", str(device)], work / "score.log")
            lines += [f"### Scoring every checkpoint on {device}: "
                      f"{'ok' if results[step] else 'FAILED'} ({took:.0f} s)", ""]
        elif step == "bench":
            out = work / "bench.md"
            results[step], took = run([sys.executable, "-m", "bench", "--only", "train,sweep",
                                       "--device", str(device), "--out", str(out), *env_quick],
                                      work / "bench.log")
            lines += [f"### Benchmarks: {'ok' if results[step] else 'FAILED'} ({took:.0f} s)", "",
                      out.read_text() if out.exists() else "(no output)", ""]
        args.out.write_text("\n".join(lines) + "\n")  # written after every step: a cut run
        # still leaves what it measured
    failed = [s for s, ok in results.items() if not ok]
    print(f"results in {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all ok"),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
