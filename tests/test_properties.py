"""Property-based checks over random adapters and cuts: allocation invariants and exact export round trips.

Bounded for the default suite; a longer run: `HYPOTHESIS_MAX_EXAMPLES=2000 python -m pytest tests/test_properties.py`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.adapters import LoraAdapter, LoraModule
from analysis.export import check_round_trip, compress_adapter, save_adapter
from analysis.para import CUT_UNITS, allocate_ranks, para_index
from analysis.spectra import adapter_spectra

MAX_EXAMPLES = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40"))


@st.composite
def adapters(draw) -> LoraAdapter:
    n_modules = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    modules = []
    for i in range(n_modules):
        r = draw(st.integers(1, 8))
        d_in, d_out = draw(st.integers(r, 24)), draw(st.integers(r, 24))
        scaling = draw(st.floats(0.05, 4.0))
        A = torch.randn(r, d_in, generator=g) * draw(st.floats(0.01, 10.0))
        B = torch.randn(d_out, r, generator=g)
        modules.append(LoraModule(f"model.layers.{i}.proj", A, B, scaling))
    return LoraAdapter("mem", f"fp{seed}", "peft", {"peft_type": "LORA", "r": 8, "lora_alpha": 8}, tuple(modules))


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(adapter=adapters(), values=st.lists(st.floats(0, 1), min_size=2, max_size=2), min_rank=st.sampled_from([0, 1]))
def test_allocation_invariants_hold(adapter, values, min_rank):
    index = para_index(adapter_spectra(adapter))
    low, high = sorted(values)
    a_low = allocate_ranks(index, low * index.sigma_max, "tau", min_rank=min_rank)
    a_high = allocate_ranks(index, high * index.sigma_max, "tau", min_rank=min_rank)
    assert all(h <= lo for h, lo in zip(a_high.ranks, a_low.ranks, strict=True))  # higher tau never adds rank
    for a in (a_low, a_high):
        costs = [m.in_features + m.out_features for m in adapter.modules]
        assert a.n_params_after == sum(k * c for k, c in zip(a.ranks, costs, strict=True))
        assert all(min_rank <= k <= m.r for k, m in zip(a.ranks, adapter.modules, strict=True))
        assert 0.0 <= a.energy_kept <= 1.0
    for unit in CUT_UNITS:  # every unit can address this cut
        value = {
            "energy": a_low.energy_kept, "tau": a_low.tau, "relative": a_low.relative_tau,
            "params_fraction": a_low.params_fraction, "params": a_low.n_params_after,
            "mean_rank": a_low.n_kept / index.n_modules,
        }[unit]  # fmt: skip
        if (
            min_rank == 0
            and 0 < a_low.n_kept < index.n_components
            and np.unique(index.values).size == index.n_components
        ):
            assert allocate_ranks(index, value, unit).ranks == a_low.ranks, unit


@settings(max_examples=max(10, MAX_EXAMPLES // 4), deadline=None)
@given(adapter=adapters(), energy=st.floats(0.05, 1.0))
def test_export_round_trips_exactly(tmp_path_factory, adapter, energy):
    allocation = allocate_ranks(para_index(adapter_spectra(adapter)), energy, "energy")
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path_factory.mktemp("export") / "out")
    assert check_round_trip(adapter, allocation, out).max_rel_error < 1e-5
