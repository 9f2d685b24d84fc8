"""What `python -m train` keeps around Hydra's launch: where the runs go, the signals a sweep
gets, and the end of a sweep (which of its runs did not complete, and the command that finishes
them).

`Launch`, a Hydra callback (conf/config.yaml), notes as the command starts the directory a
single run makes (so that a refused run removes it again) or the sweep directory (read at the
end by `report`, from each run's summary.json). `signals` holds the signals the sweep's own
process caught (its runs, which get them too, save themselves as `preempted`).
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from analysis import layout
from train.checkpoint import Preemption
from train.run_dir import read_json

# The command's state (`reset` as it starts; one command per process but in tests).
made: Path | None = None  # the outermost directory a single run's command makes, if any
sweep_dir: Path | None = None  # set as a sweep starts (in the process that launches its runs)
signals = Preemption()  # the signals the sweep's process caught (entered as the sweep starts)
not_started: list[Path] = []  # runs of a sequential sweep skipped once it was signalled


def reset() -> None:
    global made, sweep_dir, signals
    made, sweep_dir, signals = None, None, Preemption()
    not_started.clear()


class Launch(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        """Before Hydra makes the run directory (the same config: `${now:}` resolves alike)."""
        global made
        path = Path(config.hydra.run.dir).absolute()
        missing = [p for p in (path, *path.parents) if not p.exists()]
        made = missing[-1] if missing else None

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep's process outlives SIGTERM, SIGUSR1 and SIGUSR2 (its runs, which get them
        too, save themselves, and `report` lists them); a single run's are the loop's."""
        global sweep_dir
        sweep_dir = Path(config.hydra.sweep.dir)
        if "joblib" in config.hydra.launcher._target_:
            start_loky_tracker()
        signals.__enter__()


def remove_if_new(run_dir: Path, multirun: bool) -> None:
    """After a refusal: remove the directories this command made for the run (a sweep's: the
    run's own, where empty), so that a refused command leaves nothing behind."""
    top = run_dir.absolute() if multirun else made
    if top is None:  # the run directory was there before
        return
    path = run_dir.absolute()
    while path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == top:
            break
        path = path.parent


def start_loky_tracker() -> None:
    """Start loky's resource tracker (hydra/launcher=parallel) with SIGUSR1 and SIGUSR2
    ignored, which it inherits: a signal to the sweep's process group would otherwise end it,
    and loky would fill the console with its errors. (It ignores SIGINT and SIGTERM itself.)"""
    from joblib.externals.loky.backend import resource_tracker

    quiet = (signal.SIGUSR1, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in quiet}
    try:
        resource_tracker.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def runs_below(root: Path) -> list[tuple[Path, dict]]:
    """Each run directory below `root` (those holding run.json) and its summary ({}: none)."""
    return [(info.parent, read_json(info.parent / layout.SUMMARY))
            for info in sorted(root.rglob(layout.RUN_INFO)) if "wandb" not in info.parts]


def report(argv: list[str]) -> int:
    """Print the runs of the sweep that did not end (completed, or diverged: an ensemble's
    member that did is a result) and the command that finishes them (`argv`, with the sweep
    directory); the exit status: 0 when every run ended, or when a signal stopped the sweep."""
    if sweep_dir is None:  # the sweep never started
        return 0
    unfinished = [(path, summary) for path, summary in runs_below(sweep_dir)
                  if summary.get("status") != "completed" and not summary.get("diverged")]
    unfinished += [(path, {"status": "not started"}) for path in not_started]
    if not unfinished:
        return 0
    print(f"{len(unfinished)} run(s) of the sweep in {sweep_dir} did not complete:",
          file=sys.stderr)
    for path, summary in unfinished:
        state = summary.get("status", "interrupted (no summary.json)")
        if "steps" in summary:
            state += f" at step {summary['steps']} of {summary['total_steps']}"
        print(f"  {path}: {state}", file=sys.stderr)
    if not any(a.startswith("hydra.sweep.dir=") for a in argv):
        argv = [*argv, f"hydra.sweep.dir={sweep_dir}"]
    print(f"Run the same command to finish them (completed runs are skipped):\n"
          f"  python -m train {shlex.join(argv)}", file=sys.stderr)
    return 0 if signals.signum is not None else 1
