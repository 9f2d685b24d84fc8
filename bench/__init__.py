"""Benchmarks of phaselab's speed: training step, data generation, scoring and sweeps.

`python -m bench` runs them all and writes `bench/RESULTS.md`; see `bench/__main__.py`.
"""
