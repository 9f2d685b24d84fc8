#!/usr/bin/env bash
# Create .venv and install phaselab into it. Idempotent; safe to run before every command.
# torch: with an NVIDIA GPU, the default (CUDA) build; without one, torch==2.13.0, which on CPU
# machines that carry its CPU wheel locally installs without downloading CUDA packages.
# Override with PHASELAB_TORCH="torch==X.Y.Z" (or any pip requirement). PHASELAB_EXTRAS=interop
# (comma-separated) also installs those optional extras of pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.phaselab-installed
extras=dev,launchers${PHASELAB_EXTRAS:+,$PHASELAB_EXTRAS}
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$(cat "$stamp")" = "$extras" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${PHASELAB_TORCH:-}" ]; then spec=$PHASELAB_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1; then spec=torch
  else spec=torch==2.13.0
  fi
  echo "setup: installing $spec"
  pip install "$spec"
fi
echo "setup: installing phaselab and its dependencies"
pip install -e ".[$extras]"
echo "$extras" > "$stamp"
