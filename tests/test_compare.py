"""Comparing allocations: budget matching, correlation and distance on constructed allocations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.compare import allocation_params, compare_allocations, match_allocation, match_budget, spearman
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


def _index(sigmas: dict[str, list[float]], d_in: int = 16, d_out: int = 16):
    spectra = tuple(Spectrum(name, np.array(s, float), d_in, d_out) for name, s in sigmas.items())
    return para_index(AdapterSpectra("fp", spectra, "cpu", "float64", 0.0))


def test_match_allocation_of_a_para_cut_gives_that_cut_back():
    """A run whose ranks are PARA's own cut is matched by that cut: Spearman 1, L1 0, no parameter gap."""
    index = _index({"layers.0.q": [8, 4, 2, 1], "layers.0.v": [3, 0.5, 0.2, 0.1], "layers.1.q": [6, 5, 0.3, 0.2]})
    ranks = {"layers.0.q": 2, "layers.0.v": 1, "layers.1.q": 2}  # the 5 largest: 8, 6, 5, 4, 3
    m = match_allocation(index, "run", ranks)
    assert m.n_params == 5 * 32 and m.params_gap == 0 and m.position == 5
    assert m.para.rank_map == ranks
    assert m.comparison.spearman == pytest.approx(1.0) and m.comparison.l1_distance == 0.0


def test_match_allocation_known_disagreement():
    """Same budget, rank put elsewhere: the known Spearman, L1 and per-type totals."""
    index = _index({"layers.0.q": [9, 8, 7], "layers.0.v": [1, 0.5, 0.2], "layers.1.q": [3, 2, 0.1]})
    m = match_allocation(index, "run", {"layers.0.q": 0, "layers.0.v": 3, "layers.1.q": 2})
    assert m.para.rank_map == {"layers.0.q": 3, "layers.0.v": 0, "layers.1.q": 2}  # 9, 8, 7, 3, 2
    assert m.comparison.l1_distance == pytest.approx((3 + 3 + 0) / 10)
    assert m.comparison.spearman == pytest.approx(-1.0)  # ranks (3, 1, 2) vs (1, 3, 2): centred, opposite
    assert m.comparison.by_type == {"q": (5, 2), "v": (0, 3)} and m.comparison.by_layer == {0: (3, 3), 1: (2, 2)}


def test_allocation_params_counts_and_rejects_foreign_modules():
    index = _index({"layers.0.q": [2, 1]}, d_in=10, d_out=30)
    assert allocation_params(index, {"layers.0.q": 2}) == 80
    with pytest.raises(ValueError, match="modules the fixed-rank adapter lacks"):
        allocation_params(index, {"layers.0.k": 1})


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 8), st.integers(2, 64), st.integers(2, 64)), min_size=1, max_size=8),
    seed=st.integers(0, 2**31 - 1),
    target=st.floats(0, 1),
    min_rank=st.sampled_from([0, 1]),
)
def test_match_budget_is_the_nearest_achievable_count(shapes, seed, target, min_rank):
    """Property: no cut position is nearer the target than the matched one, and min_rank 0 is within one cost."""
    rng = np.random.default_rng(seed)
    spectra = tuple(
        Spectrum(f"layers.{i}.m", np.sort(rng.lognormal(size=r))[::-1], d_in, d_out)
        for i, (r, d_in, d_out) in enumerate(shapes)
    )
    index = para_index(AdapterSpectra("fp", spectra, "cpu", "float64", 0.0))
    n_params = int(target * index.n_params_before)
    best = match_budget(index, n_params, min_rank=min_rank)
    if min_rank == 0:
        assert abs(best.n_params_after - n_params) <= max(index.cost)
        counts = index.cum_params
        assert abs(best.n_params_after - n_params) == np.abs(counts - n_params).min()
