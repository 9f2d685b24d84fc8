"""Offline analysis of phaselab runs: score checkpoints, measure emergence, draw figures.

    from analysis import load_runs, score, plots
    runs = load_runs("multirun/2024-01-01/12-00-00")          # every run below the directory
    runs[0].coords                                             # {'task': 'arithmetic', ...}
    model = runs[0].load_model(step=runs[0].checkpoints()[-1])
    df = score("multirun/2024-01-01/12-00-00")                 # tidy: run x step x metric
    plots.metric_vs_params(df, "eval/exact_match")

`evaluate` and `metrics.compute` are also what the training loop calls every eval interval, so
scores in metrics.jsonl and in the analysis tables agree.
"""

from analysis import emergence, mechanistic, metrics, plots, summary
from analysis.evaluate import Outputs, evaluate
from analysis.runs import Run, find_runs, score

load_runs = find_runs

__all__ = [
    "Outputs",
    "Run",
    "emergence",
    "evaluate",
    "find_runs",
    "load_runs",
    "mechanistic",
    "metrics",
    "plots",
    "score",
    "summary",
]
