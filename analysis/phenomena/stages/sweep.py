"""The LLC of every selected checkpoint of every run, into scores.csv (`python -m analysis DIR
--llc`): each run's sampler is calibrated once, on its last checkpoint, and the settings are
recorded in `<out>/llc/<run>.json` and held fixed for all its checkpoints, on later calls too.

Sampling is embarrassingly parallel: calibrations, then checkpoints, are spread over `workers`
local processes (one thread each). Incremental like scoring: a (run, step) that already has
`llc/estimate` in scores.csv is not sampled again (refined LLCs included: to add them to
checkpoints sampled without, sample into another output directory).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis import layout
from analysis.phenomena.stages import llc
from analysis.runs import Run, _rows, read_scores, write_csv

log = logging.getLogger(__name__)

CHECKPOINTS = 12  # checkpoints sampled per run by default, evenly spaced in log step


def missing_extra() -> str | None:
    """Why the LLC cannot be sampled here (devinterp absent), or None."""
    if importlib.util.find_spec("devinterp") is None:
        return '--llc needs devinterp, the llc extra: pip install -e ".[llc]"'
    return None


def pick_steps(steps: list[int], k: int) -> list[int]:
    """`k` of `steps` (ascending; all of them if fewer) spread evenly on a log step axis (the
    axis stages are found on): the steps nearest to k points evenly spaced in log(1 + step),
    first and last included; where several share a step (a schedule sparser than the points),
    the rest are filled in one at a time with the step farthest in log from those picked."""
    if k >= len(steps):
        return list(steps)
    x = np.log1p(np.asarray(steps, dtype=float))
    picked = list(dict.fromkeys(int(np.abs(x - t).argmin()) for t in np.linspace(x[0], x[-1], k)))
    while len(picked) < k:
        distance = np.abs(x[:, None] - x[picked][None, :]).min(axis=1)
        picked.append(int(distance.argmax()))
    return [steps[i] for i in sorted(picked)]


def _record_path(out: Path, run: Run) -> Path:
    return out / "llc" / (run.name.replace("/", "__") + ".json")


def _calibrate(run: Run, step: int, device: str) -> dict:
    torch.set_num_threads(1)
    found = llc.calibrate(run.load_model(step, device), run.task(device), device=device)
    return {"step": step, **found}


def _measure(run: Run, step: int, settings: dict, refine: bool, device: str) -> pd.DataFrame:
    torch.set_num_threads(1)
    model, meta = run.load_checkpoint(step, device)
    parts = llc.parts(model) if refine else ()
    found = llc.measure(model, run.task(device), llc.Settings(**settings), parts, device)
    return _rows(run, step, model, meta, found)


def _map(fn, jobs: list[tuple], workers: int) -> list:
    """fn(*job) for each job, over `workers` processes (in this one for 1); a job that raises
    gives its exception in its place."""

    def safe(job):
        try:
            return fn(*job)
        except Exception as e:  # one bad checkpoint must not lose the others
            return e

    if workers <= 1 or len(jobs) <= 1:
        return [safe(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.exception() or f.result() for f in futures]


def settings_of(runs: list[Run], out: Path, workers: int = 1, device: str = "cpu",
                steps: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """{run name: its recorded calibration}, calibrating (on the last of `steps[run]`, else its
    last checkpoint) the runs that have none yet."""
    records, todo = {}, []
    for run in runs:
        try:
            if found := layout.read_json(_record_path(out, run)):
                records[run.name] = found
                continue
        except ValueError as e:  # a torn record: calibrate again
            log.warning("llc: %s; calibrating %s again", e, run.name)
        if chosen := (steps or {}).get(run.name, run.checkpoints()):
            todo.append((run, chosen[-1], device))
    for (run, step, _), found in zip(todo, _map(_calibrate, todo, workers), strict=True):
        if isinstance(found, Exception):
            log.warning("llc: cannot calibrate %s: %s: %s", run.path, type(found).__name__,
                        found)
            continue
        path = _record_path(out, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        layout.write_atomic(path, json.dumps(found, indent=1) + "\n")
        records[run.name] = found
        log.info("llc: %s calibrated at step %d: %s%s", run.name, step, found["settings"],
                 "" if found["flat"] else " (no flat range: defaults kept)")
    return records


def score_llc(runs: list[Run], out: Path, steps: list[int] | None = None, last: bool = False,
              checkpoints: int = CHECKPOINTS, refine: bool = False, workers: int = 1,
              device: str = "cpu") -> pd.DataFrame:
    """Sample the LLC (and with `refine` every head's and layer's) of each run's checkpoints:
    `steps` where given, else its last with `last`, else `checkpoints` of them log-spaced (see
    `pick_steps`). Appends the rows to `<out>/scores.csv` and returns the whole table."""
    csv = out / "scores.csv"
    table = read_scores(csv)
    done = set()
    if len(table):
        has = table[table["metric"] == "llc/estimate"]
        done = set(zip(has["run"], has["step"], strict=True))
    chosen = {}
    for run in runs:
        available = run.checkpoints()
        if steps is not None:
            available = [s for s in available if s in steps]
        chosen[run.name] = available[-1:] if last else pick_steps(available, checkpoints)
    records = settings_of(runs, out, workers, device, chosen)
    jobs = [(run, step, records[run.name]["settings"], refine, device) for run in runs
            if run.name in records for step in chosen[run.name] if (run.name, step) not in done]
    log.info("llc: sampling %d checkpoints over %d process(es)", len(jobs), workers)
    found = []
    for job, rows in zip(jobs, _map(_measure, jobs, workers), strict=True):
        if isinstance(rows, Exception):  # any cause, as in scoring
            log.warning("llc: skipping %s step %d: %s: %s", job[0].path, job[1],
                        type(rows).__name__, rows)
        else:
            found.append(rows)
    if found:
        table = pd.concat([t for t in (table, *found) if len(t)], ignore_index=True)
        write_csv(table, csv)
    return table
