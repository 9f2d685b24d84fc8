"""The sweep estimate composes every point of a sweep; the packed preset is the same sweep."""

from __future__ import annotations

import pytest

from bench.sweep_estimate import estimate


@pytest.mark.slow  # composes 80 configs (~30 s of CPU)
def test_packed_preset_is_the_same_sweep_in_a_third_of_the_processes():
    flat = estimate(["experiment=addition_emergence"], 0.3, 1e15, 1e-3)
    packed = estimate(["experiment=addition_emergence_packed"], 0.3, 1e15, 1e-3)
    assert len(flat) == 60 and len(packed) == 20
    assert {r["members"] for r in packed} == {3}
    assert sum(r["flops"] for r in packed) == sum(r["flops"] for r in flat)
    rungs = {(r["d_model"], r["n_layers"]) for r in flat}
    assert rungs == {(r["d_model"], r["n_layers"]) for r in packed} and len(rungs) == 20
    # the same compute; the per-step overhead paid once per rung instead of once per seed
    assert sum(r["compute_s"] for r in packed) == pytest.approx(sum(r["compute_s"] for r in flat))
    assert sum(r["overhead_s"] for r in flat) == pytest.approx(
        3 * sum(r["overhead_s"] for r in packed))
