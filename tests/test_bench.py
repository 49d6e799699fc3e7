"""bench/ helpers stay correct: synthetic adapters load with the real names, shapes and chosen spectra; floors
and baselines count what they say. No timings are asserted here (performance lives in bench/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.adapters import LoraAdapter, LoraModule, load_adapter
from analysis.spectra import adapter_spectra
from bench import floors, report
from bench.baselines import max_rel_error, measure_baselines
from bench.machine import Limits
from bench.make_adapter import SHAPES, make_adapter, module_factors, module_spectrum
from bench.run import shapes_only


@pytest.mark.parametrize("style", ["trained", "balanced", "steep"])
def test_module_factors_have_the_chosen_spectrum(style):
    g = torch.Generator().manual_seed(0)
    B, A = module_factors(96, 64, 8, style, g)
    sigma = module_spectrum(8, style, torch.Generator().manual_seed(0))
    got = torch.linalg.svdvals(B @ A)[:8]  # (96, 8) @ (8, 64)
    torch.testing.assert_close(got, sigma, rtol=1e-9, atol=0.0)
    assert torch.all(sigma[:-1] > sigma[1:])
    if style == "trained":  # A is the well-conditioned side, B carries the spectrum
        s_A, s_B = torch.linalg.svdvals(A), torch.linalg.svdvals(B)
        assert s_A[0] / s_A[-1] < s_B[0] / s_B[-1]


def test_make_adapter_writes_real_names_shapes_and_scale(tmp_path):
    folder = make_adapter("minilm", 4, tmp_path / "minilm-r4")
    adapter = load_adapter(folder)
    n_layers, modules, _ = SHAPES["minilm"]
    assert len(adapter.modules) == n_layers * len(modules)
    query = adapter.module("encoder.layer.0.attention.self.query")
    assert (query.in_features, query.out_features, query.r) == (384, 384, 4)
    assert adapter.module("encoder.layer.5.output.dense").in_features == 1536
    assert all(m.scaling == pytest.approx(2.0) for m in adapter.modules)  # lora_alpha = 2r
    with pytest.raises(ValueError, match="rank must be in"):
        make_adapter("minilm", 512, tmp_path / "too-big")


def test_gqa_shapes_of_llama3_and_mistral_match():
    assert SHAPES["llama3-8b"][1] == SHAPES["mistral-7b"][1]
    k_proj = dict((p, (i, o)) for p, i, o in SHAPES["llama3-8b"][1])["self_attn.k_proj"]
    assert k_proj == (4096, 1024)  # 8 key/value heads of 128


def test_floors_count_gram_flops_and_bytes(tmp_path):
    adapter = load_adapter(make_adapter("minilm", 4, tmp_path / "a"))
    expected_flops = sum(2 * (m.in_features + m.out_features) * 4**2 for m in adapter.modules)
    assert floors.gram_flops(adapter) == expected_flops
    assert floors.factor_bytes(adapter) == sum(4 * 4 * (m.in_features + m.out_features) for m in adapter.modules)
    limits = Limits(read_gb_s=10.0, copy_gb_s=10.0, gemm_f32_gflop_s=100.0, gemm_f64_gflop_s=50.0)
    floor = floors.spectra_floor(adapter, limits)
    assert floor == pytest.approx(floors.factor_bytes(adapter) / 10e9 + expected_flops / 100e9)
    shapes = shapes_only(adapter)  # what run.py keeps for the floors until the run's last limits are in
    assert shapes.modules[0].A.device.type == "meta" and floors.spectra_floor(shapes, limits) == floor
    ranks = [m.r for m in adapter.modules]
    assert floors.factors_floor(shapes, ranks, limits, 4) == floors.factors_floor(adapter, ranks, limits, 4)


def test_limits_best_keeps_the_higher_rate_of_each():
    start = Limits(read_gb_s=10.0, copy_gb_s=8.0, gemm_f32_gflop_s=90.0, gemm_f64_gflop_s=60.0)
    end = Limits(read_gb_s=12.0, copy_gb_s=7.0, gemm_f32_gflop_s=130.0, gemm_f64_gflop_s=50.0, h2d_gb_s=20.0)
    assert start.best(end) == Limits(12.0, 8.0, 130.0, 60.0, 20.0) == end.best(start)


def test_baselines_report_the_engine_accuracy():
    g = torch.Generator().manual_seed(1)
    shapes = [(64, 48, 4), (64, 48, 4), (48, 96, 8)]
    modules = []
    for i, (d_out, d_in, r) in enumerate(shapes):
        B, A = module_factors(d_out, d_in, r, "trained", g)
        modules.append(LoraModule(f"m{i}", A.float(), B.float(), 0.5))
    adapter = LoraAdapter(source="mem", fingerprint="x", format="peft", config={}, modules=tuple(modules))
    spectra = adapter_spectra(adapter)
    result = measure_baselines(adapter, spectra, torch.device("cpu"), per_shape=1)
    assert result.n_sampled == 2 and result.n_modules == 3  # one module per shape, extrapolated to three
    assert result.dense_svd_s > 0 and result.svd_lowrank_s > 0
    assert result.max_rel_error_dense < 1e-4 and result.max_rel_error_f64 < 1e-4
    assert max_rel_error(np.array([2.0, 1.0001]), np.array([2.0, 1.0])) == pytest.approx(1e-4)


def test_engine_table_puts_the_median_and_the_best_spectra_run_against_the_same_floor():
    row = {"adapter": "a", "modules": 2, "rank": 8, "file_mb": 1.0, "load_s": 0.01, "floor_load_s": 0.005,
           "spectra_s": 0.3, "spectra_best_s": 0.24, "floor_spectra_s": 0.15, "end_to_end_s": 0.5,
           "allocation_ms": 0.2, "floor_allocation_ms": 0.1, "factors_s": 1.0, "floor_factors_s": 0.5,
           "export25_s": 1.0, "floor_export25_s": 0.4, "n_float64_gram": 2, "n_fallback": 0}  # fmt: skip
    head, _, line = report.engine_table([row])
    cells = dict(zip(head.strip("| ").split(" | "), line.strip("| ").split(" | "), strict=True))
    assert cells["spectra s"] == "0.300 (2.0×)" and cells["spectra, best run s"] == "0.240 (1.6×)"
