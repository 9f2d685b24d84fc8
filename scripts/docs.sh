#!/usr/bin/env bash
# Regenerate the measured blocks of docs/experiments.md, their figures and the README figure
# by training and analysing every _small experiment (scripts/docs.py; ~40 min on 2 cores).
# Usage: bash scripts/docs.sh [NAME ...] [--reuse]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/docs.py "$@"
