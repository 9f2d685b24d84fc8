"""The cost of the local learning coefficient per checkpoint (`python -m analysis DIR --llc`):
seconds per estimate under the default sampler settings (analysis/phenomena/stages/llc.py: 2
chains x (40 burn-in + 100 draws) SGLD steps at batch 64), for the models and training data of the
experiments whose stages the docs show, and of one head's refined LLC (the same forward and
backward passes; only the weights that move differ). A calibration costs up to 9 estimates per
run (the grid), stopping at the first (n_beta, localization) with a flat step-size range.

The weights are the experiments' initializations: the cost does not depend on them (a diverging
chain stops early, which makes that estimate cheaper, never dearer).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tasks
from analysis.phenomena.stages import llc
from bench.timing import median, table, timed
from models import GPT
from train.config import register
from train.loop import model_config_for

CONF = Path(__file__).resolve().parents[1] / "conf"
CASES = {"grokking_small": [], "induction_heads_small": ["model.n_layers=2"]}


def _wall_and_cpu(fn, device: torch.device) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all its threads: devinterp writes its
    samples from a thread pool) of one call: on a shared machine the CPU time is what an idle
    core would take."""
    cpu = time.process_time()
    wall = timed(fn, device)
    return wall, time.process_time() - cpu


def main(quick: bool, device: torch.device) -> str:
    register()
    repeats = 1 if quick else 3
    settings = llc.Settings(draws=10, burnin=5) if quick else llc.Settings()
    rows = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, overrides in CASES.items():
            cfg = OmegaConf.to_object(compose("config", [f"experiment={name}", *overrides]))
            task = tasks.build(cfg.task, device)
            torch.manual_seed(0)
            model = GPT(model_config_for(cfg.model, task).for_building()).to(device)
            head = f"L{model.cfg.n_layers - 1}H0"
            data, loss = llc.training_rows(task, settings.samples), llc.task_loss(task.loss_start)
            full = partial(llc.estimate, model, data, loss, settings, device=str(device))
            head_only = partial(full, masks=llc.masks(model, head))
            head_only()  # warm-up: the first call imports devinterp and its dependencies
            (full, cpu), (refined, _) = (
                [median(t) for t in zip(*[_wall_and_cpu(fn, device) for _ in range(repeats)],
                                        strict=True)]
                for fn in (full, head_only))
            rows.append([name + "".join(f" {o}" for o in overrides), f"{model.num_params():,}",
                         len(data), full, cpu, refined, 3600 / cpu])
    return ("Seconds per LLC estimate (median of "
            f"{repeats}), default settings {settings.chains} chains x "
            f"({settings.burnin} + {settings.draws}) steps at batch {settings.batch_size}:\n\n"
            + table(["experiment", "params", "training rows", "wall s per estimate",
                     "CPU s per estimate", "wall s per head (last layer's H0)",
                     "estimates per CPU hour"], rows))
