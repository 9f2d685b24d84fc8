"""Developmental stages: the local learning coefficient (LLC, singular learning theory) of each
checkpoint, sampled through devinterp, and the stage boundaries on its curve over training.

- `llc`: the estimator on phaselab's models and tasks (the loss the model was trained on, on
  its training distribution), each estimate's health, the per-run calibration of the sampler,
  and weight masks that restrict it to one head or one layer (the refined LLC).
- `sweep`: every selected checkpoint of every run, spread over local processes or a SLURM
  cluster, into scores.csv, with each run's calibration recorded beside it.
- `detect`: stage boundaries (critical points of the LLC over log steps, Hoogland et al. 2024),
  their summary over seeds, the figure, the findings and the report section.

This module lists the LLC as a probe (opt-in: it costs sampling) and imports nothing else:
training imports it, and `sweep` reads runs through analysis.runs, which imports the scoring
entry.
"""

from analysis.phenomena import Probe
from analysis.phenomena.stages import llc

PROBES = [Probe("llc", llc.applies, llc.probe, opt_in=True)]
