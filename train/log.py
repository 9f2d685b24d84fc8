"""Where a run's numbers go: metrics.jsonl (always), wandb (if enabled) and the console.

`RunLogger.log(record)` takes one flat dict per log/eval event (`step`, `tokens`, `flops`,
`elapsed_s`, `train/...`, `eval/...`) and writes it everywhere. The console gets a tqdm bar when
stderr is a terminal, else plain lines at a log's rate (readable in SLURM logs): one per
evaluation, and between them one every CONSOLE_FRACTION of the run or CONSOLE_INTERVAL_S,
whichever comes first, plus the last step. In a sweep or an ensemble, bar and lines name the
run (`run_label`: its sweep coordinates), so interleaved output says which run each line is
from. wandb never prompts and never stops training: without credentials, or when the server
does not answer within WANDB_INIT_TIMEOUT_S, `online` falls back to `offline`; any other wandb
error is reported in one warning line, after which the run goes on without it.

Every record goes to wandb at its own `step`, and a resumed run does not send again the steps an
earlier attempt already logged (`start["logged_step"]`), so the run's history, online or in the
offline fragments that `wandb sync` uploads in order, holds each step once. The run summary holds
the status, parameter counts, FLOPs and the sweep coordinates; a preempted run is marked
preempting and finished with a nonzero exit code, which wandb shows as preempted, not finished.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from analysis import layout
from train.config import TrainConfig, WandbConfig

log = logging.getLogger(__name__)

CONSOLE_FRACTION = 0.02  # without a terminal: a line per 2% of the run's steps,
CONSOLE_INTERVAL_S = 30.0  # or per 30 s if that comes first, and one per evaluation
WANDB_INIT_TIMEOUT_S = 8  # online mode on a node without network logs offline after this
# Set once an online start timed out, so that the other runs of this process (an ensemble's
# members) start offline at once.
_server = {"unreachable": False}
# summary.json fields copied to the wandb run summary (to plot across a ladder).
SUMMARY_KEYS = ("status", "steps", "tokens", "params", "params_non_embedding", "flops_per_token",
                "flops")


def is_eval_step(step: int, total_steps: int, cfg: TrainConfig) -> bool:
    """Whether the loop evaluates (and records) at `step`: every eval_every, and the last."""
    return step % cfg.eval_every == 0 or step == total_steps


def is_log_step(step: int, total_steps: int, cfg: TrainConfig) -> bool:
    """Whether the loop writes a record at `step`: each evaluation and every log_every."""
    return is_eval_step(step, total_steps, cfg) or step % cfg.log_every == 0


def spans(steps: list[int]) -> str:
    """Steps as a message lists them: all of a few, or "0, 10, ..., 300 (31 steps)"."""
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    return f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)} steps)"


def write_error(e: OSError, what: str) -> OSError:
    """One error naming what could not be written and why, in words (a full disk: "no space
    left on the device"), in place of the writer's own."""
    why = "no space left on the device" if e.errno == errno.ENOSPC else e.strerror or str(e)
    return OSError(e.errno, f"cannot write {what}: {why}")


def resume_metrics(path: Path, last_step: int | None, expected: list[int],
                   saved: Callable[[], dict[int, dict]]) -> dict:
    """Cut metrics.jsonl back to the records a run resumed from `last_step` keeps (none for
    None) and check them: each `expected` step (the loop's log steps up to `last_step`) must have
    its record. A missing one (the file emptied or cut, a torn last line) is restored from
    `saved()` (step -> record: the records the checkpoints' meta.json carry), with a warning;
    where that cannot be done the resume is refused, naming the file and the steps: never a
    silent partial history. A step recorded twice keeps its first record. An unreadable line
    other than the last is an error naming it. The file is replaced atomically. Returns the last
    record kept ({} if none)."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record ({e}); the run's "
                                 f"records are damaged: repair or remove that line") from None
            log.warning("%s: its last line, written only in part (the run was killed while "
                        "writing it), is lost: %r", path, line[:80])
            break
        if last_step is not None and record["step"] <= last_step:
            if record["step"] in kept:
                log.warning("%s: step %d is recorded twice; keeping the first record", path,
                            record["step"])
            kept.setdefault(record["step"], record)
    if missing := [step for step in expected if step not in kept]:
        available = saved()
        restored = [step for step in missing if step in available]
        if lost := sorted(set(missing) - set(restored)):
            raise ValueError(
                f"{path} lacks the records of steps {spans(lost)} (emptied, cut or edited) and "
                f"no checkpoint holds them: resuming from step {last_step} would leave a partial "
                f"history. Restore the file, or pass train.overwrite=true to start over")
        log.warning("%s lacked the records of steps %s: restored from the checkpoints' %s",
                    path, spans(restored), layout.META)
        kept |= {step: available[step] for step in restored}
    records = [kept[step] for step in sorted(kept)]
    layout.write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
    return records[-1] if records else {}


def sweep_coordinates(config: dict, overrides: list[str]) -> dict:
    """`sweep/<key>`: the value of each command-line override (`model.d_model=64`) as the
    resolved config holds it (a config-group choice such as `task=modular` as typed)."""
    coords = {}
    for override in overrides:
        key, _, raw = override.lstrip("+~").partition("=")
        if key.startswith("hydra"):
            continue
        value = config
        for part in key.split("."):
            value = value.get(part, raw) if isinstance(value, dict) else raw
        coords[f"sweep/{key}"] = raw if isinstance(value, dict) else value
    return coords


def run_label(config: dict, overrides: list[str], run_dir: Path) -> str:
    """A sweep's run as the console names it: its sweep coordinates (`d_model=16 seed=1`, each
    command-line override that sets a config key, named by its last component and valued as
    the config resolved it), and for an ensemble's member its directory and seed."""
    parts = {}
    for override in overrides:
        key, _, raw = override.lstrip("+~").partition("=")
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and layout.is_coordinate(key):
            parts[key.rsplit(".", 1)[-1]] = raw if isinstance(value, dict) else value
    if layout.is_member(run_dir):
        parts |= {run_dir.name: None, "seed": config.get("seed")}
    return " ".join(k if v is None else f"{k}={v}" for k, v in parts.items()) or run_dir.name


def key_metric(record: dict) -> tuple[str, float] | None:
    for name in ("eval/exact_match", "eval/loss"):
        if name in record:
            return name, record[name]
    return None


def format_line(record: dict, total_steps: int, tokens_per_s: float, label: str = "") -> str:
    parts = [f"[{label}] step {record['step']}/{total_steps}" if label
             else f"step {record['step']}/{total_steps}"]
    if "train/loss" in record:
        parts.append(f"loss {record['train/loss']:.4f}")
    if (key := key_metric(record)) is not None:
        parts.append(f"{key[0]} {key[1]:.4f}")
    parts += [f"tokens {record['tokens']:.3g}", f"{tokens_per_s:.3g} tok/s",
              f"{record['elapsed_s']:.1f}s"]
    return " | ".join(parts)


class RunLogger:
    def __init__(self, run_dir: Path, cfg: WandbConfig, *, run_id: str, config: dict,
                 group: str | None, total_steps: int, start: dict,
                 overrides: list[str] | None = None):
        """`start`: the record of the step the run starts or resumes from (step, tokens,
        elapsed_s), for the progress bar and the tokens/s figure, and optionally `logged_step`,
        the newest step an earlier attempt logged. `overrides`: the command line's, whose values
        (as resolved in `config`) go to the wandb summary as the run's sweep coordinates."""
        self.total_steps, self.start = total_steps, start
        self.logged_step = start.get("logged_step", -1)
        self.metrics = open(run_dir / layout.METRICS, "a")  # noqa: SIM115 (closed in close())
        # Named on the console where its lines mix with others': in a sweep or an ensemble.
        self.label = run_label(config, overrides or [], run_dir) if group else ""
        self.bar, self.postfix = None, {}
        # The console's last line: (step, time.monotonic()); None = nothing printed yet.
        self.printed: tuple[int, float] | None = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start["step"], unit="step",
                            desc=self.label, dynamic_ncols=True)
        self.wandb = None
        if cfg.mode != "disabled":
            self._guard(self._start_wandb, run_dir, cfg, run_id, config, group)
            self._guard(self._set_summary, sweep_coordinates(config, overrides or []))

    def _guard(self, fn, *args, **kwargs) -> None:
        """Run a wandb call; on any error, warn once and carry on without wandb."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # wandb must never stop training
            log.warning("wandb disabled for the rest of this run: %s: %s", type(e).__name__, e)
            self.wandb = None

    def _start_wandb(self, run_dir: Path, cfg: WandbConfig, run_id: str, config: dict,
                     group: str | None) -> None:
        import wandb

        def init(mode: str):
            return wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, tags=cfg.tags,
                name=cfg.name, config=config, dir=str(run_dir), id=run_id, resume="allow",
                mode=mode,
                # create_new: an ensemble keeps one wandb run open per member (wandb>=0.19.10).
                settings=wandb.Settings(silent=True, init_timeout=WANDB_INIT_TIMEOUT_S,
                                        reinit="create_new"),
            )

        mode = "offline" if cfg.mode == "online" and _server["unreachable"] else cfg.mode
        if mode == "online" and not wandb.login(prompt=False, verify=False):
            log.warning("wandb.mode=online but no W&B credentials (run `wandb login` or set "
                        "WANDB_API_KEY): logging offline; `wandb sync` uploads it later")
            mode = "offline"
        try:
            self.wandb = init(mode)
        except Exception as e:
            if mode != "online":
                raise
            log.warning("wandb.mode=online: no answer from W&B within %d s (%s: %s): logging "
                        "offline; `wandb sync` uploads it later", WANDB_INIT_TIMEOUT_S,
                        type(e).__name__, e)
            _server["unreachable"] = True
            wandb.teardown()  # the failed attempt still holds the run id
            self.wandb = init("offline")
        for axis in ("step", "tokens", "flops"):  # x-axes to plot any metric against
            self.wandb.define_metric(axis)
        self.wandb.define_metric("*", step_metric="step")

    def _set_summary(self, values: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def log(self, record: dict) -> None:
        try:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        except OSError as e:
            raise write_error(e, self.metrics.name) from None
        if self.wandb is not None and record["step"] > self.logged_step:
            self._guard(self.wandb.log, record, step=record["step"])
        elapsed = record["elapsed_s"] - self.start["elapsed_s"]
        tokens_per_s = (record["tokens"] - self.start["tokens"]) / max(elapsed, 1e-9)
        if self.bar is None:
            if self.due(record):
                log.info(format_line(record, self.total_steps, tokens_per_s, self.label))
                self.printed = (record["step"], time.monotonic())
            return
        # The bar keeps the latest loss and key metric, which arrive in different records.
        self.postfix["tok/s"] = f"{tokens_per_s:.3g}"
        if "train/loss" in record:
            self.postfix["loss"] = f"{record['train/loss']:.4f}"
        if (key := key_metric(record)) is not None:
            self.postfix[key[0]] = f"{key[1]:.4f}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(record["step"] - self.bar.n)

    def due(self, record: dict) -> bool:
        """Whether a record gets a console line without a terminal: the first, every
        evaluation, the last step, and others once CONSOLE_FRACTION of the run or
        CONSOLE_INTERVAL_S has passed since the last line."""
        if self.printed is None or record["step"] >= self.total_steps:
            return True
        if any(key.startswith("eval/") for key in record):
            return True
        step, at = self.printed
        return (record["step"] - step >= CONSOLE_FRACTION * self.total_steps
                or time.monotonic() - at >= CONSOLE_INTERVAL_S)

    def close(self, summary: dict, ok: bool) -> None:
        self.metrics.close()
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            run = self.wandb
            self._guard(self._set_summary, {k: summary[k] for k in SUMMARY_KEYS if k in summary})
            if summary["status"] == "preempted":  # shown as preempted (a nonzero exit code)
                self._guard(run.mark_preempting)
            self._guard(run.finish, exit_code=0 if ok and summary["status"] == "completed" else 1)
