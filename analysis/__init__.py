"""Offline analysis of phaselab runs: score checkpoints, measure emergence, draw figures. A
shared core (this package's modules) that knows no phenomenon by name, and one module or
package per phenomenon under analysis.phenomena.

    from analysis import load_runs, score, plots
    runs = load_runs("multirun/2024-01-01/12-00-00")          # every run below the directory
    runs[0].coords                                             # {'task': 'arithmetic', ...}
    model = runs[0].load_model(step=runs[0].checkpoints()[-1])
    df = score("multirun/2024-01-01/12-00-00")                 # tidy: run x step x metric
    plots.metric_vs_params(df, "eval/exact_match")

`evaluate` and `metrics.compute` are also what the training loop calls every eval interval, so
scores in metrics.jsonl and in the analysis tables agree.

The names below are imported on first use (PEP 562): the training process imports
`analysis.scoring` and `analysis.layout` without paying for matplotlib and pandas.
"""

import importlib

from analysis.evaluate import Outputs, evaluate  # light (torch only), and shadows the module

_MODULES = ("emergence", "metrics", "phenomena", "plots", "summary")
_NAMES = {"Run": "analysis.runs", "find_runs": "analysis.runs", "score": "analysis.runs",
          "load_runs": "analysis.runs"}
_RENAMED = {"load_runs": "find_runs"}

__all__ = ["Outputs", "Run", "emergence", "evaluate", "find_runs", "load_runs", "metrics",
           "phenomena", "plots", "score", "summary"]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"analysis.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), _RENAMED.get(name, name))
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
