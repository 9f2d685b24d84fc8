"""The README's "Inspecting a checkpoint" examples, run as written on a freshly trained demo run:
shell lines in a subprocess, the Python blocks of each route in one namespace."""

from __future__ import annotations

import importlib.util
import linecache
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Inspecting a checkpoint\n"
ROUTES = {  # subsection -> the modules it needs
    "Native hooks": [],
    "TransformerLens": ["transformer_lens"],
    "Hugging Face and nnsight": ["transformers", "nnsight"],
}
CHECKS = {  # subsection -> what its namespace must hold afterwards
    "Native hooks": lambda ns: not torch.equal(ns["zeroed"], ns["logits"]),
    "TransformerLens": lambda ns: (ns["logits"] - ns["model"](ns["tokens"])).abs().max() < 1e-4,
    "Hugging Face and nnsight": lambda ns: ns["pattern"].shape[-2:] == ns["ids"].shape[-1:] * 2,
}


def blocks(route: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block under `### route` in the README's section."""
    section = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    part = section.split(f"### {route}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", part, flags=re.S)


def run_python(code: str, name: str, namespace: dict) -> None:
    """exec `code` under a name linecache can read back: nnsight reads its `with` blocks' source."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    exec(compile(code, name, "exec"), namespace)


def run_shell(code: str) -> None:
    for line in code.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            args = [sys.executable if a == "python" else a for a in args]
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("route", ROUTES)
def test_readme_inspection_examples_run_on_a_demo_run(demo_dir, tmp_path, route):
    for module in ROUTES[route]:
        pytest.importorskip(module, reason="needs the interop extra")
    # The README's paths, longest first: the demo's last run, its sweep, the export directory.
    paths = {"multirun/demo/7": f"{demo_dir}/0", "multirun/demo": str(demo_dir),
             "exports/": f"{tmp_path}/exports/"}
    pattern = "|".join(map(re.escape, paths))
    found = blocks(route)
    assert found, f"no code under ### {route}"
    namespace: dict = {}
    for i, (language, code) in enumerate(found):
        code = re.sub(pattern, lambda m: paths[m[0]], code)
        if language == "bash":
            run_shell(code)
        else:
            assert language == "python", language
            run_python(code, f"<README {route} {i}>", namespace)
    assert CHECKS[route](namespace)


# ------------------------------- docs/experiments.md's measured blocks (scripts/docs.py)


@pytest.fixture(scope="module")
def docs_script():
    spec = importlib.util.spec_from_file_location("docs_script", ROOT / "scripts" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_every_documented_experiment_exists_and_has_its_block(docs_script):
    text = (ROOT / "docs" / "experiments.md").read_text()
    for exp in docs_script.EXPERIMENTS:
        assert (ROOT / "conf" / "experiment" / f"{exp.name}.yaml").exists()
        assert f"<!-- docs:{exp.name} -->" in text and f"<!-- /docs:{exp.name} -->" in text


def test_a_block_is_replaced_between_its_markers_and_nothing_else_changes(docs_script):
    text = ("intro\n<!-- docs:a -->\nold\n<!-- /docs:a -->\nmiddle\n"
            "<!-- docs:b -->\nkeep\n<!-- /docs:b -->\n")
    new = docs_script.replace_block(text, "a", "fresh\ntable")
    assert new == text.replace("old", "fresh\ntable")
    with pytest.raises(SystemExit, match="docs:c"):
        docs_script.replace_block(text, "c", "x")


def test_report_sections_are_picked_by_heading_nested_and_without_images(docs_script):
    report = ("# Analysis: x\n\nintro\n\n## Runs\n\n| a |\n\n## Forecast of exact match from "
              "the smaller rungs\n\ntext\n\n![f](figures/f.png)\n\n## Figures\n\n![g](g.png)\n")
    picked = docs_script.sections(report, ("Forecast of exact match", "Runs", "Missing"))
    assert picked == ["#### Forecast of exact match from the smaller rungs\ntext",
                      "#### Runs\n| a |"]
