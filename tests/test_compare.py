"""Comparing allocations: budget matching, correlation and distance on constructed allocations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.compare import compare_allocations, match_budget, spearman
from analysis.para import para_index
from analysis.spectra import AdapterSpectra, Spectrum


def test_spearman_known_answers():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties get average ranks
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))


def test_compare_allocations_known_answers():
    a = {"model.layers.0.q": 4, "model.layers.0.v": 0, "model.layers.1.q": 2}
    b = {"model.layers.0.q": 2, "model.layers.0.v": 2, "model.layers.1.q": 2}
    c = compare_allocations(a, b)
    assert c.l1_distance == pytest.approx((2 + 2 + 0) / 12)
    assert c.by_type == {"q": (6, 4), "v": (0, 2)}
    assert c.by_layer == {0: (4, 4), 1: (2, 2)}
    assert compare_allocations(a, a).l1_distance == 0
    assert compare_allocations({"x": 3}, {"y": 3}).l1_distance == 1.0  # disjoint support


def test_match_budget_hits_target_within_one_component():
    rng = np.random.default_rng(0)
    spectra = tuple(
        Spectrum(f"layers.{i}.{t}", np.sort(rng.lognormal(size=8))[::-1], d_in, d_out)
        for i in range(4)
        for t, d_in, d_out in (("q", 64, 64), ("up", 64, 256))
    )
    index = para_index(AdapterSpectra("fp", spectra, "cpu", "float64", 0.0))
    for target in (0, 1000, 5_555, 12_345, index.n_params_before):
        allocation = match_budget(index, target)
        assert abs(allocation.n_params_after - target) <= max(index.cost)
    with pytest.raises(ValueError, match="n_params must be"):
        match_budget(index, -1)
