"""The dataclasses own the defaults: conf/ composes to them, and each YAML file sets only what
differs from them, so the two can never disagree."""

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tasks
from models import GPTConfig
from tasks.arithmetic import ArithmeticConfig
from train.config import Config, OptimConfig, register

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {"model": GPTConfig, "optim": OptimConfig}


@pytest.fixture(scope="module")
def composed():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("config", list(overrides))


def test_the_default_config_is_the_dataclass_defaults(composed):
    assert OmegaConf.to_object(composed()) == Config(task=ArithmeticConfig())


def options():
    for group in ("model", "optim", "task"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            yield group, path


@pytest.mark.parametrize(("group", "path"), list(options()),
                         ids=lambda v: v if isinstance(v, str) else v.stem)
def test_each_option_sets_only_what_differs_from_its_dataclass(composed, group, path):
    node = composed(f"{group}={path.stem}")[group]
    schema = SCHEMAS.get(group) or tasks.TASKS[node.kind][0]
    default = OmegaConf.structured(schema)
    assert set(node) == {f.name for f in dataclasses.fields(schema)}  # every field is there
    own = OmegaConf.load(path)
    own.pop("defaults", None)
    for key, value in own.items():
        assert value != default[key], f"{path.name} restates the default {key}={value!r}"
    # every other field is the default, or what the option it extends sets
    changed = {k for k in node if node[k] != default[k]}
    parents = [path.with_name(f"{p}.yaml") for p in OmegaConf.load(path).get("defaults", [])]
    inherited = {key for p in parents if p.exists() for key in OmegaConf.load(p)} - {"defaults"}
    assert changed <= set(own) | inherited
