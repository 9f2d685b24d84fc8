"""`python -m train`: the Hydra entry point. Compose the config, turn it into typed dataclasses,
and hand it to the plain `train.loop.run` with the run directory Hydra chose.

    python -m train task=addition task.digits=3 model.d_model=32 train.steps=2000
    python -m train -m model.d_model=16,32,64 seed=0,1          # a sweep: one run per point
    python -m train hydra.run.dir=outputs/X                     # resumes the run in outputs/X
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from train.config import register
from train.loop import run


def one_gpu_per_job(job_num: int) -> None:
    """submitit's local executor shows every job the same gpus_per_node GPUs: job i keeps GPU
    i mod n of them, so that a sweep spreads over the GPUs instead of sharing the first."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and len(visible) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[job_num % len(visible)]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:  # a single run has no job number
        one_gpu_per_job(hydra_cfg.job.num)  # before CUDA starts
    # A sweep's runs share a wandb group named after the sweep directory.
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    return run(OmegaConf.to_object(cfg), hydra_cfg.runtime.output_dir,
               overrides=list(hydra_cfg.overrides.task), group=group)


if __name__ == "__main__":
    register()
    main()
