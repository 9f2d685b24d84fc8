"""Find training runs on disk, load their checkpoints, and score them into one tidy table.

The run directory (its layout: analysis/layout.py) is the only input: `.hydra/config.yaml` (and
`overrides.yaml`), `metrics.jsonl`, `checkpoints/step_NNNNNNN/model.safetensors`,
`summary.json`. Scoring and some figures load checkpoints through `Run` and run the models;
the statistics and tables built from the scores table are pure functions of it.

A bad item (an unreadable config, a run without checkpoints, a corrupt checkpoint) is logged as
one warning naming its path and skipped, so the other runs are still scored; the checkpoints
skipped are kept in `Run.skipped` for the report. Every checkpoint is checked against its
manifest (analysis/layout.py) before it is loaded. scores.csv is written atomically, and a damaged
one is rebuilt from the checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import models
import tasks
from analysis import layout, scoring, slices

log = logging.getLogger(__name__)

# Coordinates every run has where its config sets them: name -> config key.
BASE_COORDS = {"task": "task.kind", "op": "task.op", "digits": "task.digits", "p": "task.p",
               "d_model": "model.d_model", "n_layers": "model.n_layers", "seed": "seed"}
# What a broken run or checkpoint raises (a corrupt file, a config this code cannot build).
BAD_ITEM = (ValueError, KeyError, AttributeError, TypeError, OSError)


@dataclass
class Run:
    path: Path
    name: str  # the run's path relative to the directory searched: the `run` column
    config: DictConfig
    coords: dict = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # step -> why `score` skipped it

    def _checkpoint_dirs(self) -> dict[int, Path]:
        found = {}
        for weights in (self.path / layout.CHECKPOINTS).glob(f"step_*/{layout.WEIGHTS}"):
            if (step := layout.step_of(weights.parent)) is not None:
                found[step] = weights
        return dict(sorted(found.items()))

    def checkpoints(self) -> list[int]:
        """Steps that have saved weights, ascending."""
        return list(self._checkpoint_dirs())

    def load_model(self, step: int | None = None, device: str = "cpu"):
        """The model saved at `step` (None = the last checkpoint), in eval mode."""
        return self.load_checkpoint(step, device)[0]

    def load_checkpoint(self, step: int | None = None, device: str = "cpu"):
        """(model, metadata) saved at `step` (None = last); metadata holds step, tokens, flops.
        layout.CorruptCheckpoint where a file fails the checkpoint's manifest."""
        path = self.checkpoint_path(step)
        layout.verify_checkpoint(path.parent)
        model, meta = models.load_model(path, device=device)
        return model.eval(), meta

    def checkpoint_path(self, step: int | None = None) -> Path:
        """The weights file of `step` (None = the last checkpoint)."""
        paths = self._checkpoint_dirs()
        if not paths:
            raise ValueError(f"{self.path} has no checkpoints (checkpoints/step_*/"
                             f"model.safetensors)")
        step = max(paths) if step is None else step
        if step not in paths:
            raise ValueError(f"step={step}: no checkpoint in {self.path}; steps: {list(paths)}")
        return paths[step]

    def task(self, device: str = "cpu") -> tasks.Task:
        return tasks.build(OmegaConf.to_container(self.config.task, resolve=True), device)

    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl as a table, one row per logged event (an unreadable line, such as the
        last line of a killed run, is skipped with a warning)."""
        path = self.path / layout.METRICS
        if not path.exists():
            return pd.DataFrame()
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping unreadable line %d of %s", number, path)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """summary.json ({} while the run has none; a damaged one likewise, with a warning)."""
        try:
            return layout.read_json(self.path / layout.SUMMARY) or {}
        except ValueError as e:
            log.warning("%s: read as absent", e)
            return {}


def _natural_key(path: Path) -> list:
    """Sort multirun job directories 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _base_coords(config: DictConfig) -> dict:
    """The BASE_COORDS the config sets."""
    coords = {name: OmegaConf.select(config, key, default=None)
              for name, key in BASE_COORDS.items()}
    return {name: value for name, value in coords.items() if value is not None}


def _override_coords(config: DictConfig, overrides: list[str]) -> dict:
    """The command-line overrides, each valued as resolved in the config (a config-group choice
    such as `model=small` as written) and named by its last key component (`optim.lr` -> `lr`),
    or in full where that name is a base coordinate's. One that names a base coordinate's key
    (`model.d_model`), whose full name is taken too (`task=modular`), or that is no coordinate
    (`analysis.layout.NOT_COORDINATES`: wandb.*, hydra.*, experiment, threads, ...) adds nothing."""
    taken = dict(BASE_COORDS)
    coords = {}
    for override in overrides:
        key, _, raw = override.lstrip("+~").partition("=")
        if not layout.is_coordinate(key) or key in taken.values():
            continue
        name = key.rsplit(".", 1)[-1]
        if name in taken:  # the short name is another key's: try the full one
            name = key
        if name in taken:
            continue
        value = OmegaConf.select(config, key, default=raw)
        coords[name] = raw if OmegaConf.is_config(value) else value
        taken[name] = key
    return coords


def find_runs(path: str | Path) -> list[Run]:
    """Every run below `path` (a single run's directory or a Hydra multirun directory): the
    directories holding `.hydra/config.yaml`. Unreadable configs are skipped with a warning.

    A run's `coords` are its BASE_COORDS plus the overrides (`.hydra/overrides.yaml`) whose
    values differ between the runs found (all of them for a single run): a sweep's axes."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    found = []
    for config_path in sorted(root.rglob(layout.HYDRA_CONFIG), key=_natural_key):
        run_dir = config_path.parent.parent
        if layout.is_ensemble(run_dir):
            continue  # its members, below it, are the runs
        overrides_path = run_dir / layout.HYDRA_OVERRIDES
        try:
            config = OmegaConf.load(config_path)
            overrides = list(OmegaConf.load(overrides_path)) if overrides_path.exists() else []
            found.append((run_dir, config, _override_coords(config, overrides)))
        except (*BAD_ITEM, yaml.YAMLError) as e:
            log.warning("skipping %s: unreadable config (%s)", run_dir, e)
    names = {name for *_, swept in found for name in swept}
    varying = {name for name in names
               if len({repr(swept.get(name)) for *_, swept in found}) > 1 or len(found) == 1}
    runs = []
    for run_dir, config, swept in found:
        name = run_dir.relative_to(root).as_posix()
        coords = _base_coords(config) | {k: v for k, v in swept.items() if k in varying}
        runs.append(Run(run_dir, root.name if name == "." else name, config, coords))
    return runs


def _selected_steps(run: Run, steps: list[int] | None, last: bool) -> list[int]:
    available = run.checkpoints()
    if not available:
        log.warning("skipping %s: no checkpoints (checkpoints/step_*/model.safetensors)",
                    run.path)
        return []
    if steps is not None:
        missing = sorted(set(steps) - set(available))
        if missing:
            log.warning("%s has no checkpoint at steps %s", run.path, missing)
        available = [s for s in available if s in steps]
    return available[-1:] if last else available


def _rows(run: Run, step: int, model, meta: dict, scores: dict[str, float]) -> pd.DataFrame:
    common = {"run": run.name, **run.coords, "params": model.num_params(),
              "non_embedding_params": model.num_params(non_embedding=True), "step": step,
              "tokens": meta.get("tokens"), "flops": meta.get("flops")}
    return pd.DataFrame([{**common, "metric": metric, "slice": part, "value": v}
                         for k, v in scores.items() for metric, part in [slices.split_key(k)]])


SCORES_COLUMNS = ("run", "step", "metric", "value", "slice")


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """`table` to `path` atomically: a kill leaves the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.write_atomic(path, table.to_csv(index=False))


def read_scores(csv: Path) -> pd.DataFrame:
    """The scores table written before (empty if none). A damaged one (empty, cut, not a table
    of scores) is rebuilt from the checkpoints: read as empty, with a warning naming it."""
    if not csv.exists():
        return pd.DataFrame()
    try:
        if not csv.read_bytes().endswith(b"\n"):  # every table written ends its last row
            raise ValueError("its last row is cut")
        table = pd.read_csv(csv, dtype={"run": str})
        if missing := set(SCORES_COLUMNS) - set(table.columns):
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        if table[list(SCORES_COLUMNS[:3])].isna().any().any():
            raise ValueError("rows without a run, step or metric")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:  # EmptyDataError too
        log.warning("%s is damaged (%s): scoring every checkpoint again to rebuild it", csv, e)
        return pd.DataFrame()
    return table


def score(path: str | Path, steps: list[int] | None = None, last: bool = False,
          device: str = "cpu", out: str | Path | None = None,
          runs: list[Run] | None = None) -> pd.DataFrame:
    """Score every checkpoint of every run below `path` into a tidy table: one row per
    run x checkpoint x metric, with the run's coordinates, parameter counts, step, tokens and
    training FLOPs. `steps` keeps only those steps, `last` only each run's last checkpoint.

    Incremental: `<out>/scores.csv` (out defaults to `<path>/analysis`) is read first, (run,
    step) pairs already there are not scored again, and the file is rewritten after each run.
    `runs` (default: find_runs(path)) saves a second search when the caller has them."""
    runs = find_runs(path) if runs is None else runs
    if not runs:
        raise ValueError(f"no runs under {path}: no directory with .hydra/config.yaml")
    csv = Path(out or Path(path) / "analysis") / "scores.csv"
    table = read_scores(csv)
    done = set(zip(table["run"], table["step"], strict=True)) if len(table) else set()
    todo = {run.name: [s for s in _selected_steps(run, steps, last) if (run.name, s) not in done]
            for run in runs}
    total, finished, start = sum(map(len, todo.values())), 0, time.perf_counter()
    # Progress over checkpoints: a bar on a terminal, else a log line per run.
    bar = tqdm(total=total, unit="checkpoint", disable=not sys.stderr.isatty())
    for number, run in enumerate(runs, start=1):
        if not todo[run.name]:
            continue
        try:
            task = run.task(device)
        except BAD_ITEM as e:
            log.warning("skipping %s: cannot build its task (%s)", run.path, e)
            continue
        scored = []
        bar.set_description(run.name)
        for step in todo[run.name]:
            bar.update()
            try:
                model, meta = run.load_checkpoint(step, device)
            except Exception as e:  # any cause, e.g. a config too large to allocate
                run.skipped[step] = f"{type(e).__name__}: {e}"
                log.warning("skipping checkpoint %s: %s", run.checkpoint_path(step),
                            run.skipped[step])
                continue
            scored.append(_rows(run, step, model, meta, scoring.score(model, task)))
        finished += len(todo[run.name])
        if bar.disable:
            log.info("run %d/%d %s: %d checkpoints scored (%d/%d, %.0f s)", number, len(runs),
                     run.name, len(scored), finished, total, time.perf_counter() - start)
        if scored:
            table = pd.concat([t for t in (table, *scored) if len(t)], ignore_index=True)
            write_csv(table, csv)
    bar.close()
    return table
