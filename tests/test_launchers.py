"""The launcher presets: `hydra/launcher=local` gives its jobs the machine's GPUs, one each."""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_train import ROOT

from train.__main__ import one_gpu_per_job
from train.config import register


def test_the_local_launcher_asks_for_every_gpu_the_machine_has():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == torch.cuda.device_count()


@pytest.mark.parametrize("executor, visible, job, expected", [
    ("local", "0,1,2", 4, "1"),  # job i keeps GPU i mod n
    ("local", "0,1,2", 0, "0"),
    ("local", "0", 3, "0"),  # one GPU: every job shares it
    ("local", "", 1, ""),  # none: the CPU
    ("slurm", "0,1", 1, "0,1"),  # SLURM gives each job its own GPUs
])
def test_each_local_job_keeps_one_of_the_visible_gpus(monkeypatch, executor, visible, job,
                                                      expected):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", executor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    one_gpu_per_job(job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
