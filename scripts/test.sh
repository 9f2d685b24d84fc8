#!/usr/bin/env bash
# Set up (if needed) and run the test suite: lint, then the fast tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` runs the reproductions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
rc=0
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
# pytest exits 5 when a marker selects nothing; that is not a failure here.
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
