"""Spectra: chosen singular values come back; factor space equals a float64 dense SVD; float64 Grams and QR
where float32 Grams are not accurate enough, with an error estimate that bounds the measured error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import grams, threads
from analysis.adapters import LoraAdapter, LoraModule
from analysis.spectra import adapter_spectra, truncated_factors
from bench.make_adapter import module_factors


def adapter_of(*modules: LoraModule) -> LoraAdapter:
    return LoraAdapter(source="mem", fingerprint="x", format="peft", config={}, modules=modules)


def test_adapter_spectra_recovers_chosen_sigma(chosen_factors):
    B, A, sigma = chosen_factors
    spectra = adapter_spectra(adapter_of(LoraModule("m", A, B, scaling=0.5)))
    np.testing.assert_allclose(spectra.spectra[0].sigma, 0.5 * np.array(sigma), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_adapter_spectra_equals_dense_svd(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 48, 8), (64, 48, 8), (30, 90, 4), (16, 16, 16), (10, 12, 12)]  # the last has r > out
    modules = [
        LoraModule(
            f"m{i}", torch.randn(r, d_in, generator=g).to(dtype), torch.randn(d_out, r, generator=g).to(dtype), 1.5
        )
        for i, (d_out, d_in, r) in enumerate(shapes)
    ]
    spectra = adapter_spectra(adapter_of(*modules), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    for m, s in zip(modules, spectra.spectra, strict=True):
        dense = m.scaling * (m.B.double() @ m.A.double())  # (out, r) @ (r, in) -> (out, in)
        expected = torch.linalg.svdvals(dense).numpy()[: m.r]
        got = s.sigma[: expected.shape[0]]
        np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype != torch.float64 else 1e-10)
        assert s.r == m.r and np.all(np.diff(s.sigma) <= 1e-12)


@pytest.mark.parametrize("magnitude", [1e-20, 1e19, 1e25])
def test_adapter_spectra_and_factors_of_tiny_and_huge_factors(chosen_factors, magnitude):
    # float32 Grams of these underflow (digits lost, not caught by the condition number) or overflow: both
    # sides are redone in float64, where the values are exact
    B, A, sigma = chosen_factors
    module = LoraModule("m", A * magnitude, B * magnitude, scaling=1.0)
    spectra = adapter_spectra(adapter_of(module, LoraModule("n", A, B, scaling=1.0)))
    np.testing.assert_allclose(spectra.spectra[0].sigma, magnitude**2 * np.array(sigma), rtol=1e-6)
    np.testing.assert_allclose(spectra.spectra[1].sigma, np.array(sigma), rtol=1e-6)
    B_k, A_k = truncated_factors(module, 2)
    expected = torch.linalg.svdvals(B_k @ A_k)[:2].numpy()
    np.testing.assert_allclose(expected, magnitude**2 * np.array(sigma[:2]), rtol=1e-6)


def test_adapter_spectra_uses_float64_grams_for_near_dependent_factors():
    g = torch.Generator().manual_seed(1)
    # B nearly rank 2 + tiny noise: a float32 Gram would lose the small singular values, a float64 one does not.
    B = torch.randn(256, 2, generator=g) @ torch.randn(2, 16, generator=g) + 1e-4 * torch.randn(256, 16, generator=g)
    A = torch.randn(16, 128, generator=g)
    spectra = adapter_spectra(adapter_of(LoraModule("m", A, B, 1.0)))
    expected = torch.linalg.svdvals(B.double() @ A.double()).numpy()[:16]
    assert spectra.n_float64_gram == 1 and spectra.n_fallback == 0
    np.testing.assert_allclose(spectra.spectra[0].sigma, expected, rtol=1e-4)


def test_adapter_spectra_falls_back_to_qr_when_float64_grams_are_not_enough():
    g = torch.Generator().manual_seed(2)
    # B nearly rank 2 + noise 1e-7 of its scale: cond(B) ~1e7, so even float64 Grams (cond^2 ~1e14) fail.
    B = torch.randn(256, 2, generator=g) @ torch.randn(2, 16, generator=g) + 1e-7 * torch.randn(256, 16, generator=g)
    A = torch.randn(16, 128, generator=g)
    modules = [LoraModule("bad", A, B, 1.0), LoraModule("good", A, torch.randn(256, 16, generator=g), 1.0)]
    spectra = adapter_spectra(adapter_of(*modules))
    assert spectra.n_fallback == 1
    for m, s in zip(modules, spectra.spectra, strict=True):
        expected = torch.linalg.svdvals(m.B.double() @ m.A.double()).numpy()[:16]
        keep = expected > expected[0] * 1e-9  # below that the float64 dense reference itself is noise
        np.testing.assert_allclose(s.sigma[keep], expected[keep], rtol=1e-4)


@pytest.mark.parametrize("style", ["trained", "balanced", "steep"])
def test_gram_error_estimate_bounds_the_measured_error(style):
    g = torch.Generator().manual_seed(3)
    for d_out, d_in, r in [(384, 96, 16), (96, 384, 32)]:
        B, A = module_factors(d_out, d_in, r, style, g)
        B, A = B.float(), A.float()
        R_B = torch.linalg.qr(B.double(), mode="r").R  # (r, r)
        R_A = torch.linalg.qr(A.double().T, mode="r").R  # (r, r)
        exact = torch.linalg.svdvals(R_B @ R_A.T)  # the float64 QR route: (r, r) @ (r, r)
        for dtype in (torch.float32, torch.float64):
            L_B, kappa_B = grams.cholesky_factors(grams.side_gram(B, "B", dtype)[None])
            L_A, kappa_A = grams.cholesky_factors(grams.side_gram(A, "A", dtype)[None])
            if not (torch.isfinite(kappa_B).all() and torch.isfinite(kappa_A).all()):
                continue  # Cholesky failed: the engine goes to QR
            estimate = torch.finfo(dtype).eps * (kappa_B + kappa_A)
            got = grams.core_singular_values(L_B, L_A)[0]
            error = float(((got - exact).abs() / exact).max())
            assert error <= 2 * float(estimate[0]) + 1e-14, (style, dtype, error, float(estimate[0]))


@pytest.mark.parametrize("style", ["trained", "balanced", "steep"])
def test_values_from_float64_B_estimate_bounds_the_error_and_picks_the_route(style):
    g = torch.Generator().manual_seed(9)
    cpu = torch.device("cpu")
    for d_out, d_in, r in [(384, 96, 16), (96, 384, 32)]:
        B, A = (x.float() for x in module_factors(d_out, d_in, r, style, g))
        R_B = torch.linalg.qr(B.double(), mode="r").R  # (r, r)
        R_A = torch.linalg.qr(A.double().T, mode="r").R  # (r, r)
        exact = torch.linalg.svdvals(R_B @ R_A.T)
        L_A, _ = grams.cholesky_factors(grams.side_gram(A, "A", torch.float64)[None])  # A side ~exact
        sigma, estimate = grams.values_from_float64_B([B], L_A, float("inf"), cpu)  # eigenvalues, never redone
        error = float(((sigma[0] - exact).abs() / exact).max())
        assert error <= float(estimate[0]), (style, error, float(estimate[0]))
        # a tolerance the estimate misses sends the module down the Cholesky route, with that route's estimate
        tol = float(estimate[0]) / 2
        with threads.engine_threads():  # the Gram as the engine forms it (numpy's syrk)
            L_B, kappa_B = grams.cholesky_factors(grams.side_gram(B, "B", torch.float64)[None], tol / grams.EPS64)
        redone, redone_estimate = grams.values_from_float64_B([B], L_A, tol, cpu)
        torch.testing.assert_close(redone, grams.core_singular_values(L_B, L_A), rtol=1e-12, atol=0)
        torch.testing.assert_close(redone_estimate, grams.EPS64 * kappa_B, rtol=1e-12, atol=0)
    if style == "trained":  # a trained module's sigma spread (~50x) leaves the eigenvalues ~1e-11 from exact
        assert float(estimate[0]) < 1e-10


@pytest.mark.parametrize("style", ["trained", "balanced", "steep"])
def test_condition_bound_is_an_upper_bound_and_certifies_only_below_the_limit(style):
    g = torch.Generator().manual_seed(6)
    B, A = module_factors(384, 256, 32, style, g)
    for X, side in ((B, "B"), (A, "A")):
        G = grams.side_gram(X.double(), side, torch.float64)[None]  # (1, r, r)
        _, exact = grams.cholesky_factors(G)  # certify_below=0: always the eigenvalue route
        if not torch.isfinite(exact).all():
            continue  # Cholesky failed: nothing to bound
        L = torch.linalg.cholesky(G)
        bound = grams.condition_bound(G, L, G.diagonal(dim1=-2, dim2=-1).sqrt())
        assert float(exact[0]) <= float(bound[0]) * (1 + 1e-9) <= 32**2 * float(exact[0])
        _, certified = grams.cholesky_factors(G, certify_below=float(bound[0]))  # the bound suffices: kept
        _, uncertified = grams.cholesky_factors(G, certify_below=float(bound[0]) / 2)  # it does not: exact
        torch.testing.assert_close(certified, bound)
        torch.testing.assert_close(uncertified, exact)


@pytest.mark.parametrize("ill_first", [True, False])
def test_adapter_spectra_groups_that_need_different_precisions(ill_first):
    """One probe per side serves all groups: a group that needs more than it still gets float64."""
    g = torch.Generator().manual_seed(7)
    well = [
        LoraModule(f"w{i}", torch.randn(8, 700, generator=g), torch.randn(300, 8, generator=g), 1.0) for i in range(3)
    ]
    B_ill = torch.randn(200, 2, generator=g) @ torch.randn(2, 8, generator=g) + 1e-4 * torch.randn(200, 8, generator=g)
    ill = [LoraModule(f"i{i}", torch.randn(8, 900, generator=g), B_ill + 1e-5 * i, 1.0) for i in range(3)]
    modules = ill + well if ill_first else well + ill
    spectra = adapter_spectra(adapter_of(*modules))
    assert spectra.n_fallback == 0 and spectra.n_float64_gram >= 3
    for m, s in zip(modules, spectra.spectra, strict=True):
        expected = torch.linalg.svdvals(m.B.double() @ m.A.double()).numpy()[: m.r]
        np.testing.assert_allclose(s.sigma, expected, rtol=1e-4)


def test_adapter_spectra_split_between_workers_keeps_module_order(monkeypatch):
    g = torch.Generator().manual_seed(8)
    modules = [LoraModule(f"m{i}", *reversed(module_factors(96, 64, 8, "trained", g)), 1.0 + i) for i in range(7)] + [
        LoraModule(f"n{i}", torch.randn(8, 40, generator=g), torch.randn(50, 8, generator=g), 1.0) for i in range(5)
    ]
    modules = [LoraModule(m.name, m.A.float(), m.B.float(), m.scaling) for m in modules]
    whole = adapter_spectra(adapter_of(*modules))
    monkeypatch.setattr(grams, "PARALLEL_MIN_ELEMENTS", 1)  # every group split between two workers
    monkeypatch.setattr(threads, "outer_threads", lambda: 2)
    split = adapter_spectra(adapter_of(*modules))
    for m, a, b in zip(modules, whole.spectra, split.spectra, strict=True):
        expected = torch.linalg.svdvals(m.scaling * (m.B.double() @ m.A.double())).numpy()[: m.r]
        np.testing.assert_allclose(b.sigma, expected, rtol=1e-5)
        np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-6)


def test_adapter_spectra_of_one_lm_head_module_equals_float64_svd(monkeypatch):
    """One module of >= PARALLEL_MIN_ELEMENTS values (an lm_head LoRA) or a group smaller than the worker
    count is split into no more parts than it has modules: no empty part (issue 20, item 1)."""
    g = torch.Generator().manual_seed(20)
    head = LoraModule("lm_head", torch.randn(8, 16, generator=g), torch.randn(131072, 8, generator=g), 2.0)
    assert head.A.numel() + head.B.numel() >= grams.PARALLEL_MIN_ELEMENTS
    pair = [  # two equal-shape modules with three workers: a group smaller than the worker count
        LoraModule(f"m{i}", torch.randn(4, 16, generator=g), torch.randn(2**18, 4, generator=g), 0.5) for i in range(2)
    ]
    modules = (head, *pair)
    # (out, r) @ (r, in) -> (out, in), then a float64 SVD of the dense update
    expected = [torch.linalg.svdvals(m.scaling * (m.B.double() @ m.A.double())).numpy()[: m.r] for m in modules]
    for workers in (1, 2, 3):
        monkeypatch.setattr(threads, "outer_threads", lambda workers=workers: workers)
        spectra = adapter_spectra(adapter_of(*modules))
        for e, s in zip(expected, spectra.spectra, strict=True):
            np.testing.assert_allclose(s.sigma, e, rtol=1e-5, err_msg=f"{s.name} with {workers} workers")


def test_adapter_spectra_trained_like_adapter_agrees_with_float64():
    g = torch.Generator().manual_seed(4)
    modules = [LoraModule(f"m{i}", *reversed(module_factors(512, 256, 32, "trained", g)), 2.0) for i in range(3)]
    modules = [LoraModule(m.name, m.A.float(), m.B.float(), m.scaling) for m in modules]
    spectra = adapter_spectra(adapter_of(*modules))
    reference = adapter_spectra(adapter_of(*modules), dtype=torch.float64)
    for s, ref in zip(spectra.spectra, reference.spectra, strict=True):
        np.testing.assert_allclose(s.sigma, ref.sigma, rtol=1e-5)
    assert spectra.n_float64_gram == 3  # B of a trained adapter is ill-conditioned: float64, not QR
    assert spectra.n_fallback == 0


def test_spectrum_metrics_known_answers(chosen_factors):
    B, A, sigma = chosen_factors
    s = adapter_spectra(adapter_of(LoraModule("m", A, B, 1.0))).spectra[0]
    assert s.energy == pytest.approx(16 + 4 + 1 + 0.25, rel=1e-5)
    assert s.sigma_max == pytest.approx(4.0, rel=1e-6)
    assert s.stable_rank == pytest.approx(21.25 / 16, rel=1e-5)
    p = np.array(sigma) / sum(sigma)
    assert s.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_truncated_factors_are_the_best_rank_k_approximation(chosen_factors):
    B, A, _ = chosen_factors
    module = LoraModule("m", A, B, 2.0)
    B_k, A_k = truncated_factors(module, 2)
    dense = 2.0 * (B.double() @ A.double())
    U, S, Vh = torch.linalg.svd(dense)
    best = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]  # (out, 2) @ (2, 2) @ (2, in)
    torch.testing.assert_close(B_k @ A_k, best, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(B_k.norm(dim=0), A_k.norm(dim=1))  # balanced: sqrt(S) on both sides
    with pytest.raises(ValueError, match="k must be in"):
        truncated_factors(module, 5)


def test_adapter_spectra_rejects_unknown_device():
    with pytest.raises(ValueError, match="device"):
        adapter_spectra(adapter_of(), device="tpu")


@pytest.mark.gpu
def test_adapter_spectra_on_cuda_matches_cpu(chosen_factors):
    B, A, _ = chosen_factors
    adapter = adapter_of(LoraModule("m", A, B, 1.0))
    on_gpu = adapter_spectra(adapter, device="cuda").spectra[0].sigma
    np.testing.assert_allclose(on_gpu, adapter_spectra(adapter, device="cpu").spectra[0].sigma, rtol=1e-5)


@pytest.mark.gpu
def test_adapter_spectra_on_cuda_matches_cpu_on_trained_and_steep_factors():
    g = torch.Generator().manual_seed(5)
    modules = []
    for i, style in enumerate(["trained", "trained", "balanced", "steep"]):
        B, A = module_factors(512, 256, 32, style, g)
        modules.append(LoraModule(f"m{i}", A.float(), B.float(), 2.0))
    adapter = adapter_of(*modules)
    on_gpu = adapter_spectra(adapter, device="cuda")
    on_cpu = adapter_spectra(adapter, device="cpu")
    assert on_gpu.device.startswith("cuda") and on_gpu.n_fallback == 1  # the steep module goes to QR there too
    for g_s, c_s in zip(on_gpu.spectra, on_cpu.spectra, strict=True):
        np.testing.assert_allclose(g_s.sigma, c_s.sigma, rtol=1e-5)
