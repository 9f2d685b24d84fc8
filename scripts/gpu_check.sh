#!/usr/bin/env bash
# The GPU check on a bare CUDA machine without network (README "Checking a GPU machine"):
#   bash scripts/gpu_check.sh [WHEEL_DIR] [-- ARGS for python3 -m bench.gpu_check]
# WHEEL_DIR (or $PHASELAB_WHEELS) holds wheels of the dependencies the machine's python3 lacks
# (hydra-core, omegaconf, wandb, submitit and theirs); they are installed offline into
# $PHASELAB_DEPS_DIR (default .gpu_deps), put first on PYTHONPATH, so the system torch is
# untouched. --install-only stops after the install. $PYTHON picks the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET=${PHASELAB_DEPS_DIR:-.gpu_deps}
PACKAGES=${PHASELAB_DEPS:-hydra-core omegaconf wandb submitit}
WHEELS=${PHASELAB_WHEELS:-}
INSTALL_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install-only) INSTALL_ONLY=1; shift ;;
    --) shift; break ;;
    -*) echo "gpu_check.sh: unknown option $1 (allowed: --install-only, -- ARGS)" >&2; exit 2 ;;
    *) WHEELS=$1; shift ;;
  esac
done
if [[ -n "$WHEELS" ]]; then
  [[ -d "$WHEELS" ]] || { echo "gpu_check.sh: wheel folder $WHEELS does not exist" >&2; exit 2; }
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$TARGET" $PACKAGES
fi
mkdir -p "$TARGET"
export PYTHONPATH="$(cd "$TARGET" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
[[ $INSTALL_ONLY == 1 ]] && { echo "installed $PACKAGES into $TARGET"; exit 0; }
"$PY" -c "import hydra, omegaconf" 2>/dev/null || {
  echo "gpu_check.sh: $PY cannot import hydra/omegaconf; pass a wheel folder (README)" >&2; exit 2; }
exec "$PY" -m bench.gpu_check "$@"
