"""Check that the record of every run below a directory says what happened: one line per run.

    python -m analysis.verify DIR

For each run (a directory with run.json, `.hydra/config.yaml` or checkpoints/; an ensemble's
members are runs):
- every checkpoint against its manifest (sha256 of each file, analysis/layout.py), and the step
  its manifest, meta.json and weights name against its directory's;
- the model config saved in the weights against the run's config (run.json), and the run's
  coordinates in `.hydra/config.yaml`, which analysis reads, against run.json's;
- metrics.jsonl: readable, one record per step in order, holding each record its checkpoints'
  meta.json carries, with the tokens of each checkpoint at its step; summary.json readable, and
  a completed run's final checkpoint and record in place;
- no two checkpoints of different steps hold identical weights (a suite that served one set of
  weights under several step names).
Checkpoints written before manifests existed are read as they are and reported as "no
manifest". Exit status: 0 when every run is sound, 1 when any has a problem, 2 without runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from analysis import layout
from models.config import GPTConfig
from models.io import config_differences, read_metadata


def find_run_dirs(root: Path) -> list[Path]:
    """Every run below `root` (itself included), ensembles by their members."""
    found = {path.parent for name in (layout.RUN_INFO, layout.CHECKPOINTS)
             for path in root.rglob(name)}
    found |= {path.parent.parent for path in root.rglob(layout.HYDRA_CONFIG)}
    return sorted(p for p in found if not layout.is_ensemble(p))


def tensor_digest(weights: Path) -> str:
    """sha256 of a safetensors file's tensor bytes, its header (with the step) left out."""
    data = weights.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def check_checkpoint(step_dir: Path, model: dict | None, problems: list[str]) -> dict | None:
    """Verify one checkpoint, adding what is wrong to `problems`; its meta.json (None if it is
    unusable) and whether it has a manifest (`meta["manifest"]`)."""
    step, name = layout.step_of(step_dir), f"{layout.CHECKPOINTS}/{step_dir.name}"
    try:
        verified = layout.verify_checkpoint(step_dir)
        meta = layout.read_json(step_dir / layout.META) or {}
        weights = read_metadata(step_dir / layout.WEIGHTS)
    except ValueError as e:  # each names its file
        problems.append(str(e))
        return None
    for source, value in ((layout.META, meta.get("step")), (layout.WEIGHTS, weights.get("step"))):
        if value is not None and value != step:
            problems.append(f"{name}/{source} holds step {value}, not {step}")
    if model is not None:
        try:
            if diffs := config_differences(GPTConfig(**weights["config"]), GPTConfig(**model)):
                problems.append(f"{name}: weights of another model than run.json's "
                                f"({', '.join(diffs)})")
        except (TypeError, ValueError) as e:
            problems.append(f"{name}: its model config cannot be compared ({e})")
    return {**meta, "manifest": verified is not None,
            "digest": tensor_digest(step_dir / layout.WEIGHTS)}


def read_records(path: Path, problems: list[str]) -> dict[int, dict]:
    """step -> record of metrics.jsonl, adding what is wrong to `problems`."""
    records: dict[int, dict] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError):
            where = "its last line is torn" if number == len(lines) else f"line {number} is damaged"
            problems.append(f"{layout.METRICS}: {where}")
            continue
        if step in records:
            problems.append(f"{layout.METRICS}: step {step} is recorded twice")
        elif records and step < max(records):
            problems.append(f"{layout.METRICS}: step {step} is recorded after step {max(records)}")
        records.setdefault(step, record)
    return records


def check_run(run: Path) -> tuple[str, str]:
    """(verdict, details): `ok`, `no manifest` (sound as far as it can be checked) or
    `FAILED`, with what was checked or what is wrong."""
    problems: list[str] = []
    try:
        info = layout.read_json(run / layout.RUN_INFO) or {}
        summary = layout.read_json(run / layout.SUMMARY) or {}
    except ValueError as e:
        problems.append(str(e))
        info, summary = {}, {}
    config = info.get("config")
    if config and (run / layout.HYDRA_CONFIG).exists():
        try:
            hydra = flat(OmegaConf.to_container(OmegaConf.load(run / layout.HYDRA_CONFIG)))
            differ = sorted(k for k, v in flat(config).items()
                            if layout.is_coordinate(k) and k in hydra and hydra[k] != v)
            if differ:
                problems.append(f"{layout.HYDRA_CONFIG} differs from {layout.RUN_INFO}'s config "
                                f"in {', '.join(f'{k}={hydra[k]}' for k in differ)}")
        except (OSError, ValueError, yaml.YAMLError) as e:
            problems.append(f"{layout.HYDRA_CONFIG}: unreadable ({e})")

    checkpoints = {}
    for step_dir in sorted((run / layout.CHECKPOINTS).glob("step_*")):
        if layout.step_of(step_dir) is not None:
            meta = check_checkpoint(step_dir, config and config.get("model"), problems)
            if meta is not None:
                checkpoints[layout.step_of(step_dir)] = meta
    by_digest: dict[str, list[int]] = {}
    for step, meta in checkpoints.items():
        by_digest.setdefault(meta["digest"], []).append(step)
    for steps in by_digest.values():
        if len(steps) > 1:
            problems.append(f"the checkpoints of steps {', '.join(map(str, steps))} hold "
                            f"identical weights")

    records = read_records(run / layout.METRICS, problems)
    for step, meta in checkpoints.items():
        for saved in meta.get("records", []):
            if saved["step"] not in records:
                problems.append(f"{layout.METRICS} lacks the record of step {saved['step']} "
                                f"(held by checkpoint {step})")
            elif json.dumps(records[saved["step"]]) != json.dumps(saved):
                problems.append(f"{layout.METRICS}'s record of step {saved['step']} differs from "
                                f"checkpoint {step}'s")
        if step in records and records[step].get("tokens") != meta.get("tokens"):
            problems.append(f"{layout.METRICS} says {records[step].get('tokens')} tokens at step "
                            f"{step}, its checkpoint {meta.get('tokens')}")
    if summary.get("status") == "completed":
        final = summary.get("steps")
        if final not in checkpoints:
            problems.append(f"{layout.SUMMARY} says completed at step {final}, with no sound "
                            f"checkpoint there")
        if not records or max(records) != final:
            problems.append(f"{layout.SUMMARY} says completed at step {final}, {layout.METRICS} "
                            f"ends at step {max(records, default=None)}")

    if problems:
        return "FAILED", "; ".join(problems)
    unverified = sum(not meta["manifest"] for meta in checkpoints.values())
    counts = f"{len(checkpoints)} checkpoints, {len(records)} records"
    if unverified:
        return "no manifest", (f"{counts}; {unverified} checkpoints written without a manifest "
                               f"(their bytes cannot be checked)")
    return "ok", f"{counts} verified"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.verify",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a run directory, or a directory of runs")
    args = parser.parse_args(argv)
    runs = find_run_dirs(args.dir) if args.dir.is_dir() else []
    if not runs:
        print(f"no runs under {args.dir}", file=sys.stderr)
        return 2
    failed = 0
    for run in runs:
        verdict, details = check_run(run)
        failed += verdict == "FAILED"
        name = run.relative_to(args.dir).as_posix() if run != args.dir else run.as_posix()
        print(f"{verdict:<11} {name}: {details}")
    print(f"{len(runs)} runs, {failed} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
