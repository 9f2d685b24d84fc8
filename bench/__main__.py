"""Command line: run the benchmarks, print their tables and update bench/RESULTS.md.

    python -m bench                          # everything (~25 min on 2 CPU cores), one thread
    python -m bench --only train,data        # some of train, hooks, data, score, sweep, analysis
    python -m bench --quick                  # a fast smoke run (no analysis): printed only
    python -m bench --only analysis --demo-dir multirun/demo   # trains the demo there once
    python -m bench --threads 2 --out /tmp/results.md

Each benchmark's section of the results file (between `<!-- bench:NAME -->` markers) is
replaced with the new one, stamped with the date, the machine and the command; the rest of the
file, such as the notes written around the tables, is kept.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import (
    analysis_speed,
    data_speed,
    hooks_speed,
    llc_speed,
    score_speed,
    sweep_speed,
    train_speed,
)
from bench.timing import machine

BENCHMARKS = {"train": train_speed, "hooks": hooks_speed, "data": data_speed,
              "score": score_speed, "sweep": sweep_speed, "analysis": analysis_speed,
              "llc": llc_speed}
NOT_QUICK = ("analysis",)  # trains the demo sweep: minutes whatever the setting
RESULTS = Path(__file__).with_name("RESULTS.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)} "
                                       "(default: all; with --quick, all but analysis)")
    parser.add_argument("--quick", action="store_true",
                        help="few sizes and repetitions; results are printed, not written "
                             "(unless --out is given)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of this process (default 1: steadier numbers)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present) | cpu | cuda")
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS})")
    parser.add_argument("--demo-dir", type=Path,
                        help="analysis: the demo sweep's directory, reused if it holds a "
                             "completed sweep, else trained there (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = [n for n in BENCHMARKS if not (args.quick and n in NOT_QUICK)]
    else:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in args.only if name not in BENCHMARKS]:
        parser.error(f"--only={','.join(unknown)}: must be among {', '.join(BENCHMARKS)}")
    if args.quick and (slow := [n for n in args.only if n in NOT_QUICK]):
        parser.error(f"--quick --only={','.join(slow)}: has no quick form")
    if args.threads < 1:
        parser.error(f"--threads={args.threads}: must be >= 1")
    return args


def update(path: Path, sections: dict[str, str]) -> None:
    """Replace each named section of the results file (or append it), keeping the rest."""
    text = path.read_text() if path.exists() else "# phaselab benchmarks\n"
    for name, body in sections.items():
        block = f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.DOTALL)
        if match := pattern.search(text):
            text = text[: match.start()] + block + text[match.end():]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    stamp = (f"_{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}; "
             f"`{command.strip()}`_")
    print(stamp, flush=True)
    sections = {}
    for bench in args.only:
        start = time.perf_counter()
        print(f"\n[{bench}]", flush=True)
        extra = {"demo_dir": args.demo_dir} if bench == "analysis" else {}
        body = BENCHMARKS[bench].main(args.quick, device, **extra)
        took = time.perf_counter() - start
        sections[bench] = f"{body}\n\n{stamp} ({took:.0f} s)"
        print(f"\n{sections[bench]}", flush=True)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        update(out, sections)
        print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
