"""The structured schema of the training config: typed dataclasses Hydra checks the YAML against.

`register()` stores them in Hydra's ConfigStore: `config_schema` (the root, first in
`conf/config.yaml`'s defaults list), `models.GPTConfig` as the type of `model`, and each task's
config dataclass from `tasks.TASKS` as `task/<kind>_schema` (each `conf/task/*.yaml` starts from
one). A misspelt key or a wrong type then fails in Hydra before anything runs; rules that
relate values (a positive batch size, a known schedule) are checked in `__post_init__`, which
`OmegaConf.to_object` runs, with errors naming the key as it is typed on the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from analysis import scoring
from models import GPT, GPTConfig

# The allowed values of each string setting, checked in __post_init__ (a short refusal naming
# the key and these values; an Enum under Hydra would refuse in a longer message of its own).
CHOICES = {
    "optim.schedule": ("cosine", "constant", "linear"),
    "checkpoint.keep_state": ("last", "all"),
    "wandb.mode": ("offline", "online", "disabled"),
    "dtype": ("auto", "float32", "bfloat16"),
    "compile": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def _check(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: {rule}")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _check_choice(key: str, value: str) -> None:
    _check(value in CHOICES[key], key, value, f"must be one of {', '.join(CHOICES[key])}")


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer updates
    batch_size: int | None = 64  # None = the task's whole finite training set every step
    eval_every: int = 100  # steps between evaluations (and at step 0 and the last step)
    log_every: int = 10  # steps between train/loss log lines
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    overwrite: bool = False  # start over in a directory that holds a finished run
    # N models at once in one process (train/ensemble.py), each its own run <run dir>/member_i
    # with seed + i and data_seed + i; the lists give member i's optim.lr / optim.weight_decay.
    ensemble: int = 1
    ensemble_lr: list[float] | None = None
    ensemble_weight_decay: list[float] | None = None
    # Probes (analysis.scoring.PROBES, e.g. [prefix_matching]) scored at every evaluation too.
    eval_probes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        scoring.check_probes(self.eval_probes, "train.eval_probes")
        _check(self.steps >= 0, "train.steps", self.steps, "must be >= 0")
        _check(self.ensemble >= 1, "train.ensemble", self.ensemble, "must be >= 1")
        for key in ("ensemble_lr", "ensemble_weight_decay"):
            _check(getattr(self, key) is None or len(getattr(self, key)) == self.ensemble,
                   f"train.{key}", getattr(self, key),
                   f"must be null or one value per member (train.ensemble={self.ensemble})")
        _check(self.ensemble_lr is None or all(_finite(v) and v > 0 for v in self.ensemble_lr),
               "train.ensemble_lr", self.ensemble_lr, "every value must be finite and > 0")
        _check(self.ensemble_weight_decay is None
               or all(_finite(v) and v >= 0 for v in self.ensemble_weight_decay),
               "train.ensemble_weight_decay", self.ensemble_weight_decay,
               "every value must be finite and >= 0")
        for key in ("eval_every", "log_every"):
            _check(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "must be > 0")
        _check(self.batch_size is None or self.batch_size > 0, "train.batch_size",
               self.batch_size, "must be > 0, or null for full-batch training")
        _check(self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip > 0),
               "train.grad_clip", self.grad_clip, "must be finite and > 0, or null for no clipping")


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then a cosine, linear or constant schedule."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | constant | linear (after warmup)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear
    decay_embeddings: bool = False

    def __post_init__(self) -> None:
        _check(_finite(self.lr) and self.lr > 0, "optim.lr", self.lr, "must be finite and > 0")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay",
               self.weight_decay, "must be finite and >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               self.betas, "must be two numbers in [0, 1)")
        _check(_finite(self.eps) and self.eps > 0, "optim.eps", self.eps,
               "must be finite and > 0")
        _check_choice("optim.schedule", self.schedule)
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio,
               "must be in [0, 1]")


@dataclass
class CheckpointConfig:
    """Which steps keep weights: 0, 1, 2, 4, ..., log_spaced_until, every `every` steps, and the
    last (Pythia's schedule, Biderman et al. 2023)."""

    log_spaced_until: int = 512  # 0 = no log-spaced checkpoints
    every: int | None = 1000  # None = only the log-spaced ones and the last
    keep_state: str = "last"  # last | all: which checkpoints keep state.pt (optimizer, RNG)

    def __post_init__(self) -> None:
        _check(self.log_spaced_until >= 0, "checkpoint.log_spaced_until",
               self.log_spaced_until, "must be >= 0")
        _check(self.every is None or self.every > 0, "checkpoint.every", self.every,
               "must be > 0, or null")
        _check_choice("checkpoint.keep_state", self.keep_state)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled; metrics.jsonl is written in every mode
    project: str = "phaselab"
    entity: str | None = None
    group: str | None = None  # None = the sweep directory's name, so a sweep's runs group
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # None = wandb's generated name

    def __post_init__(self) -> None:
        _check_choice("wandb.mode", self.mode)


@dataclass
class Config:
    model: GPTConfig = field(default_factory=GPTConfig)
    task: Any = MISSING  # one of the task config dataclasses in tasks.TASKS
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0  # model initialization (and dropout)
    data_seed: int = 0  # order of the training data
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    # torch.compile the training forward: false | true (mode "default") | a torch.compile mode.
    # reduce-overhead replays the step's kernels as CUDA graphs (one launch instead of hundreds:
    # small models on a GPU are bound by launch overhead); on CPU it is the default mode.
    compile: bool | str = False
    threads: int | None = None  # torch CPU threads per run; None = torch's default (all cores)
    dtype: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 on CPU) | float32 | bfloat16

    def __post_init__(self) -> None:
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               "device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        _check_choice("dtype", self.dtype)
        _check(isinstance(self.compile, bool) or self.compile in CHOICES["compile"], "compile",
               self.compile, f"must be true, false or one of {', '.join(CHOICES['compile'])}")
        _check(self.threads is None or self.threads > 0, "threads", self.threads,
               "must be > 0, or null")


def check_buildable(cfg: Config, model: GPTConfig) -> None:
    """Build the model (`model`: cfg.model with the task's sizes filled in) and its optimizer on
    the meta device, which allocates nothing, so that a config that cannot train fails here,
    before anything in the run directory is touched."""
    with torch.device("meta"):
        gpt = GPT(model)
    groups = gpt.param_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.decay_embeddings)
    try:  # (members' own lr and weight decay are checked in TrainConfig)
        torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    except ValueError as e:
        raise ValueError(f"optim: {e}") from None


def schema_fields(node: Any) -> list[str] | None:
    """The fields of the dataclass a config node is typed with (None: a value or untyped node)."""
    kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None


def schema_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key (`optim.lr`) of the composed `cfg` that its schema declares."""
    keys = []
    for name in schema_fields(cfg) or []:
        keys.append(prefix + name)
        keys += schema_keys(cfg._get_node(name), f"{prefix}{name}.")
    return keys


def leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of `cfg` that holds a value, declared or not."""
    keys = []
    for name in cfg:
        node = cfg._get_node(name)
        keys += (leaf_keys(node, f"{prefix}{name}.") if isinstance(node, DictConfig)
                 else [f"{prefix}{name}"])
    return keys


def unknown_key(cfg: DictConfig, key: str) -> str | None:
    """Why the dotted `key` is not in `cfg`'s schema, naming the nearest valid key (None: it
    is). Hydra refuses an unknown `key=value`, but `+key=value` adds it, and
    `OmegaConf.to_object` then drops it without a word."""
    node: Any = cfg
    for part in key.split("."):
        fields = schema_fields(node)
        if fields is None or part not in fields:
            near = difflib.get_close_matches(key, schema_keys(cfg), n=1, cutoff=0.6)
            hint = (f"did you mean {near[0]}?" if near else
                    f"the keys there are {', '.join(fields)}" if fields else "it holds a value")
            return (f"{key}: no such key ({hint}); `python -m train --cfg job` prints every key "
                    f"with its value")
        node = node._get_node(part)
    return None


def to_config(cfg: DictConfig) -> Config:
    """The composed config as typed dataclasses: refuses a key the schema does not declare, then
    runs every `__post_init__` check (`OmegaConf.to_object`)."""
    for key in leaf_keys(cfg):
        if (why := unknown_key(cfg, key)) is not None:
            raise ValueError(why)
    return OmegaConf.to_object(cfg)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore and register `${gpu_count:}` (the CUDA devices
    this machine has, for conf/hydra/launcher/local.yaml); called by the entry point."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from tasks import TASKS

    OmegaConf.register_new_resolver("gpu_count", torch.cuda.device_count, replace=True)
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for kind, (schema, _) in TASKS.items():
        store.store(group="task", name=f"{kind}_schema", node=schema)
