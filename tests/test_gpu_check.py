"""The CPU-testable parts of the GPU check: arguments, the offline wheel install, the refusal."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def make_wheel(folder: Path, name: str = "phaselab_tinydep", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, as `pip download` would leave one in the folder."""
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_wheel_install_into_target_folder_offline(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    target = tmp_path / "deps"
    done = sh("--install-only", str(wheels), PHASELAB_DEPS="phaselab_tinydep",
              PHASELAB_DEPS_DIR=str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "phaselab_tinydep" / "__init__.py").exists()
    # importable with the target on PYTHONPATH only, i.e. not installed into the interpreter
    code = "import phaselab_tinydep; print(phaselab_tinydep.VALUE)"
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert bare.returncode != 0
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(target)})
    assert found.stdout.strip() == "42"


def test_wheel_folder_from_environment_and_missing_package(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    common = {"PHASELAB_WHEELS": str(wheels), "PHASELAB_DEPS_DIR": str(tmp_path / "deps")}
    assert sh("--install-only", PHASELAB_DEPS="phaselab_tinydep", **common).returncode == 0
    # a package absent from the folder fails (offline: nothing is fetched)
    missing = sh("--install-only", PHASELAB_DEPS="phaselab_not_there", **common)
    assert missing.returncode != 0 and "phaselab_not_there" in missing.stderr


def test_shell_argument_errors(tmp_path):
    bad = sh("--frobnicate")
    assert bad.returncode == 2 and "--frobnicate" in bad.stderr
    absent = sh(str(tmp_path / "nowhere"))
    assert absent.returncode == 2 and "does not exist" in absent.stderr


def test_check_argument_errors():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--only", "train,warp"])
    assert gpu_check.parse_args(["--only", "train, score"]).only == ["train", "score"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal without CUDA")
def test_refuses_without_cuda_and_never_falls_back(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.require_device("cuda", allow_cpu=False)
    with pytest.raises(SystemExit, match="does not run on CPU"):
        gpu_check.require_device("cpu", allow_cpu=False)
    out = tmp_path / "results.md"
    done = sh("--", "--device", "cuda", "--out", str(out))  # through the script, as on a machine
    assert done.returncode != 0 and "no CUDA device" in done.stderr
    assert not out.exists()


def test_final_loss_reads_last_quarter(tmp_path):
    lines = [f'{{"step": {i}, "train/loss": {float(v)}}}' for i, v in enumerate([9, 9, 9, 1])]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines + ['{"step": 4, "eval/loss": 5}']))
    assert gpu_check.final_loss(tmp_path) == 1.0
