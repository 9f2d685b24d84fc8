#!/usr/bin/env bash
# The main job, from a fresh machine: set up, train a width ladder on 3-digit addition on CPU
# (experiment=demo: d_model 4..32 x 5 seeds, two runs at a time, ~10 min), score every checkpoint, and
# write the figures and report. Usage: bash scripts/demo.sh [SWEEP_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-multirun/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/python -m train experiment=demo hydra.sweep.dir="$out"
.venv/bin/python -m analysis "$out"
echo
echo "runs:    $out/<n>/ (metrics.jsonl, checkpoints/, summary.json)"
echo "scores:  $out/analysis/scores.csv"
echo "report:  $out/analysis/report.md (figures in $out/analysis/figures/)"
