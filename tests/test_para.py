"""PARA allocation: known answers, invariants across units and thresholds, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.para import allocate_at, allocate_ranks, para_index, para_sweep
from analysis.spectra import AdapterSpectra, Spectrum


def spectra_of(*sigmas: list[float], in_features: int = 10, out_features: int = 10) -> AdapterSpectra:
    modules = tuple(
        Spectrum(f"layer.{i}.q", np.array(s, dtype=float), in_features, out_features) for i, s in enumerate(sigmas)
    )
    return AdapterSpectra("fp", modules, "cpu", "float64", 0.0)


@pytest.fixture
def index():
    rng = np.random.default_rng(0)
    sigmas = [sorted(rng.lognormal(0, 1.5, size=8), reverse=True) for _ in range(12)]
    return para_index(spectra_of(*sigmas))


def test_allocate_ranks_worked_example():
    # Pooled [4, 2, 1] from modules [0, 1, 0]: energy 0.9 of 21 needs 18.9 -> keep [4, 2].
    idx = para_index(
        AdapterSpectra(
            "fp", (Spectrum("a", np.array([4.0, 1.0]), 4, 6), Spectrum("b", np.array([2.0]), 10, 10)), "cpu", "f", 0
        )
    )
    a = allocate_ranks(idx, 0.9, "energy")
    assert a.ranks == (1, 1)
    assert a.tau == 2.0 and a.relative_tau == 0.5
    assert a.energy_kept == pytest.approx(20 / 21)
    assert (a.n_params_before, a.n_params_after) == (2 * 10 + 20, 10 + 20)
    assert a.module_rel_error[0] == pytest.approx(np.sqrt(1 / 17))


def test_allocate_ranks_threshold_zero_keeps_all_and_above_max_drops_all(index):
    everything = allocate_ranks(index, 0.0, "tau")
    assert everything.ranks == everything.original_ranks and everything.rel_error == 0
    nothing = allocate_ranks(index, index.sigma_max * 1.01, "tau")
    assert set(nothing.ranks) == {0} and nothing.n_params_after == 0
    assert set(allocate_ranks(index, index.sigma_max * 1.01, "tau", min_rank=1).ranks) == {1}


def test_allocate_ranks_never_increases_with_threshold(index):
    previous = None
    for tau in np.geomspace(index.sigma_max * 1e-3, index.sigma_max * 1.1, 60):
        ranks = np.array(allocate_ranks(index, tau, "tau").ranks)
        if previous is not None:
            assert np.all(ranks <= previous)
        previous = ranks


def test_allocate_ranks_units_select_the_same_allocation(index):
    for energy in (0.5, 0.8, 0.9, 0.99):
        a = allocate_ranks(index, energy, "energy")
        same = [
            allocate_ranks(index, a.tau, "tau"),
            allocate_ranks(index, a.relative_tau, "relative"),
            allocate_ranks(index, a.n_params_after, "params"),
            allocate_ranks(index, a.params_fraction, "params_fraction"),
            allocate_ranks(index, a.n_kept / index.n_modules, "mean_rank"),
        ]
        for b in same:
            assert b.ranks == a.ranks


def test_allocate_ranks_accounting_invariants(index):
    for value in np.linspace(0, 1, 11):
        for min_rank in (0, 1):
            if value * index.n_params_before < allocate_at(index, 0, min_rank=min_rank).n_params_after:
                with pytest.raises(ValueError, match="below the .* that the minimum rank"):
                    allocate_ranks(index, value, "params_fraction", min_rank=min_rank)
                continue
            a = allocate_ranks(index, value, "params_fraction", min_rank=min_rank)
            assert a.n_params_after == sum(k * 20 for k in a.ranks)
            assert all(k <= r for k, r in zip(a.ranks, a.original_ranks, strict=True))
            assert min(a.ranks) >= min_rank
            assert a.n_params_after <= value * a.n_params_before + 1e-9  # min_rank 1 too: never over the budget
            assert 0 <= a.energy_kept <= 1 and a.rel_error == pytest.approx(np.sqrt(1 - a.energy_kept), abs=1e-9)


def test_allocate_ranks_is_non_uniform_without_per_layer_normalisation():
    idx = para_index(spectra_of([10, 9, 8, 7], [1, 0.5, 0.2, 0.1]))
    assert allocate_ranks(idx, 0.95, "energy").ranks == (4, 0)


def test_allocate_ranks_rejects_bad_values(index):
    with pytest.raises(ValueError, match="threshold must be in"):
        allocate_ranks(index, 1.5, "relative")
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        allocate_ranks(index, -1, "tau")
    with pytest.raises(ValueError, match="unit must be one of"):
        allocate_ranks(index, 1, "bogus")
    with pytest.raises(ValueError, match="min_rank"):
        allocate_ranks(index, 0.5, min_rank=2)


def test_para_sweep_is_monotone_and_spans_the_range(index):
    sweep = para_sweep(index, n_points=50)
    assert sweep.params_fraction[0] == 0 and sweep.params_fraction[-1] == pytest.approx(1)
    assert sweep.energy_kept[-1] == pytest.approx(1)
    assert np.all(np.diff(sweep.energy_kept) >= 0) and np.all(np.diff(sweep.tau) <= 0)
