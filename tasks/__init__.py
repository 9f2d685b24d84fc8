"""The task registry: `TASKS` maps a config's `kind` to (config dataclass, task class), and
`build` turns a config -- the dataclass, or a plain mapping with the same keys such as a run's
`.hydra/config.yaml` read back -- into a task. Adding a task: one module, one line here, one YAML
file in conf/task/, and a small config in tests/test_tasks.py's SMALL (the shared task tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from tasks.arithmetic import Arithmetic, ArithmeticConfig
from tasks.base import Batch, Task
from tasks.induction import (
    AssociativeRecall,
    AssociativeRecallConfig,
    Induction,
    InductionConfig,
)
from tasks.markov import Markov, MarkovConfig
from tasks.modular import Modular, ModularConfig
from tasks.parity import Parity, ParityConfig

TASKS: dict[str, tuple[type, type[Task]]] = {
    "arithmetic": (ArithmeticConfig, Arithmetic),
    "induction": (InductionConfig, Induction),
    "associative_recall": (AssociativeRecallConfig, AssociativeRecall),
    "markov": (MarkovConfig, Markov),
    "modular": (ModularConfig, Modular),
    "parity": (ParityConfig, Parity),
}

__all__ = ["TASKS", "Batch", "Task", "build", "config_from"]


def config_from(cfg: object) -> object:
    """The task's config dataclass, from the dataclass itself or a mapping with the same keys."""
    if not isinstance(cfg, Mapping):
        return cfg
    kind = cfg.get("kind")
    if kind not in TASKS:
        raise ValueError(f"task.kind={kind!r}: must be one of {sorted(TASKS)}")
    schema = TASKS[kind][0]
    fields = {f.name for f in dataclasses.fields(schema)}
    for key in cfg:
        if key not in fields:
            raise ValueError(f"task.{key}: unknown option for task.kind={kind}; "
                             f"options: {sorted(fields)}")
    return schema(**{key: cfg[key] for key in cfg})


def build(cfg: object, device: torch.device | str = "cpu") -> Task:
    """The task a config describes, its fixed sets on `device`."""
    cfg = config_from(cfg)
    for schema, task in TASKS.values():
        if type(cfg) is schema:
            return task(cfg, device)
    raise ValueError(f"task config of type {type(cfg).__name__}: expected one of "
                     f"{[schema.__name__ for schema, _ in TASKS.values()]} or a mapping")
