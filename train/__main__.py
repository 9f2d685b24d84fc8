"""`python -m train`: the Hydra entry point. Compose the config, turn it into typed dataclasses,
and hand it to the plain `train.loop.run` with the run directory Hydra chose.

    python -m train task=addition task.digits=3 model.d_model=32 train.steps=2000
    python -m train -m model.d_model=16,32,64 seed=0,1          # a sweep: one run per point
    python -m train hydra.run.dir=outputs/X                     # resumes the run in outputs/X

What a person reads: an unknown key is refused before Hydra starts (naming the nearest valid
key); a refusal or an expected failure is one short message, not a traceback
(`HYDRA_FULL_ERROR=1` shows it); a refused run leaves its directory as it was (a directory this
command made is removed). A sweep ends with the runs that did not complete and the command
that finishes them, and exits 0 only when every run completed or the sweep itself was
signalled: a signal saves every run (`preempted`) and the sweep ends in order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from train import launch
from train.config import register, to_config, unknown_key
from train.loop import run

CONF = Path(__file__).resolve().parent.parent / "conf"
# Refusals and failures a user causes or meets (bad values, files, signals, a full disk, a
# diverged run, a job the cluster ended): one message; anything else keeps its traceback.
EXPECTED = (ValueError, OSError, RuntimeError, HydraException)


def one_gpu_per_job(job_num: int) -> None:
    """submitit's local executor shows every job the same gpus_per_node GPUs: job i keeps GPU
    i mod n of them, so that a sweep spreads over the GPUs instead of sharing the first."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and len(visible) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[job_num % len(visible)]


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and launch.signals.signum is not None:
        launch.remove_if_new(run_dir, multirun)  # the sequential launcher: a signal ends the sweep
        launch.not_started.append(run_dir)
        return None
    if multirun:  # a single run has no job number
        one_gpu_per_job(hydra_cfg.job.num)  # before CUDA starts
    # A sweep's runs share a wandb group named after the sweep directory.
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        value = run(to_config(cfg), run_dir, overrides=list(hydra_cfg.overrides.task),
                    group=group)
    except BaseException:
        launch.remove_if_new(run_dir, multirun)
        raise
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and any(
            summary.get("status") == "preempted" for _, summary in launch.runs_below(run_dir)):
        # A SLURM job that saved on a signal ends without a result, as submitit's own requeue
        # does: where SLURM requeues it (scontrol requeue, PreemptMode=REQUEUE) the sweep's
        # client waits for the requeued job; otherwise the client sees the job end unfinished.
        sys.exit(f"{run_dir}: preempted; the job ends without a result")
    return value


def check_keys(overrides: list[str]) -> None:
    """Refuse an unknown key of the command line (`key=value` or `+key=value`) before Hydra
    composes, naming the nearest valid key: Hydra's own refusal suggests `+key`, which it then
    accepts and the schema drops. Keys are checked against the config that the command's group
    choices compose (a sweep's first choice; a glob over a group is left to the runs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    groups, swept, keys = [], [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete():
            continue
        if not (CONF / key).is_dir():
            keys.append((override.get_key_element(), key))
        elif override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            return  # its choices need Hydra's config loader
        elif override.is_sweep_override():
            swept.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
            groups.append(f"{override.get_key_element()}={swept[-1].partition('=')[2]}")
        else:
            groups.append(f"{override.get_key_element()}={override.value()}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("config", overrides=groups)
    for typed, key in keys:
        if (why := unknown_key(base, key)) is not None:
            where = f" (with the sweep's first {', '.join(swept)})" if swept else ""
            raise ValueError(f"{typed[:-len(key)]}{why}{where}")


def cli() -> int:
    """Run Hydra with its errors re-raised here (HYDRA_FULL_ERROR=1 inside), print the expected
    ones as one message, and end a sweep with its report; the exit status."""
    from hydra._internal.utils import get_args_parser

    register()
    args = get_args_parser().parse_args()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    launches = not (args.help or args.hydra_help or args.cfg or args.info
                    or args.shell_completion)
    launch.reset()
    status = 0
    try:
        if launches:
            check_keys(args.overrides)
        main()
    except EXPECTED as e:
        if full_error:
            raise
        cause = e.__cause__ if isinstance(e, HydraException) and e.__cause__ else ""
        print(f"error: {e}\n{cause}".rstrip(), file=sys.stderr)
        status = 1
    finally:
        launch.signals.__exit__()
    ended = launch.report(sys.argv[1:])  # a sweep's; a signalled one's jobs may end unfinished
    return ended if launch.signals.signum is not None else max(status, ended)


if __name__ == "__main__":
    sys.exit(cli())
