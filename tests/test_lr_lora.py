"""LR-LoRA (sinc phi over B @ A) and its dense-update modules through the engine, on tiny models in memory.

phi at init and its gradients, the record rebuilding dW = (alpha/r) phi(B @ A), the dense spectrum against a
float64 SVD, and a PARA cut of such a run exported as a PEFT LoRA that peft loads with the truncated SVD of dW.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from peft import PeftModel

from analysis.adapters import load_adapter
from analysis.export import check_round_trip, compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.safe_io import AdapterError
from analysis.sinc import raw_bandwidth, sinc_phi
from analysis.spectra import adapter_spectra
from analysis.training.lr_lora import LrLoraConfig, SincLoraLinear, save_lr_lora, wrap_sinc
from analysis.training.model import HEAD_NAME, tiny_bert


def reference_delta(layer: SincLoraLinear) -> torch.Tensor:
    """(alpha / r) sum_k a_k sinc(w_k (B A - c_k)) in float64, written out independently of analysis/sinc.py."""
    x = layer.B.detach().double() @ layer.A.detach().double()  # (out, r) @ (r, in) -> (out, in)
    a, c = layer.amplitude.detach().double(), layer.centre.double()
    w = torch.log1p(torch.exp(layer.raw_bandwidth.detach().double()))  # softplus
    u = w[:, None, None] * (x[None] - c[:, None, None])  # (K, out, in)
    sinc = torch.where(u == 0, torch.ones_like(u), torch.sin(math.pi * u) / (math.pi * u))
    return layer.lora_alpha / layer.r * (a[:, None, None] * sinc).sum(0)


def trained_like(seed: int = 0, r: int = 2) -> tuple[torch.nn.Module, dict[str, SincLoraLinear]]:
    """A tiny classifier wrapped with LR-LoRA, its parameters set to random trained-looking values."""
    model = tiny_bert(3, seed=seed, vocab_size=50)
    layers = wrap_sinc(model, r, 2.0 * r, LrLoraConfig(is_compiled=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g))
            layer.A.copy_(torch.randn(layer.A.shape, generator=g))
            layer.amplitude.copy_(0.1 * torch.randn(layer.amplitude.shape, generator=g))
            layer.raw_bandwidth.add_(0.3 * torch.randn(layer.raw_bandwidth.shape, generator=g))
    return model, layers


@pytest.fixture
def lr_lora_dir(tmp_path):
    model, layers = trained_like()
    save_lr_lora(tmp_path / "adapter", layers, getattr(model, HEAD_NAME), LrLoraConfig())
    return tmp_path / "adapter", model, layers


def test_sinc_phi_known_values_and_float64_gradcheck():
    x = torch.tensor([0.0, 1.0, 0.5])
    assert torch.allclose(
        sinc_phi(x, torch.ones(1), torch.ones(1), torch.zeros(1)), torch.tensor([1, 0, 2 / math.pi]), atol=1e-6
    )
    assert math.isclose(raw_bandwidth(1.0), math.log(math.e - 1))
    # entries near the centres take the Taylor branch of sinc'; the others the closed form
    x = torch.tensor([[-2.0, -0.7, 1e-4], [0.05, 0.31, 1.9]], dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64).add(0.5).requires_grad_()
    c = torch.linspace(-2, 2, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, a, w: sinc_phi(x, a, w, c), (x, a, w))


def test_phi_at_init_is_zero_and_its_gradient_reaches_the_amplitudes():
    torch.manual_seed(0)
    for b_init in ("zero", "uniform"):
        layer = SincLoraLinear(torch.nn.Linear(6, 5), 2, 4.0, LrLoraConfig(b_init=b_init, is_compiled=False))
        x = torch.randn(7, 6)
        assert torch.equal(layer.delta_w(), torch.zeros(5, 6))  # a = 0: phi = 0, so dW = 0 and y = base(x)
        assert torch.equal(layer(x), layer.base(x))
        (layer(x) ** 2).sum().backward()
        assert layer.amplitude.grad.abs().max() > 1e-3  # the gradient reaches a_k first
        assert torch.equal(layer.A.grad, torch.zeros_like(layer.A))  # phi'(.) = 0 while a = 0
        assert torch.equal(layer.B.grad, torch.zeros_like(layer.B))


def test_b_zero_keeps_phi_even_so_only_a_nonzero_b_trains_the_factors():
    """With B = 0 and centres symmetric about 0, a step keeps a_k = a_{K-1-k}, so phi'(0) = 0: only rounding
    noise moves B (Adam would amplify that noise to lr-sized steps; plain gradient steps show the rule)."""
    torch.manual_seed(0)
    for b_init, moves in (("zero", False), ("uniform", True)):
        layer = SincLoraLinear(torch.nn.Linear(6, 5), 2, 4.0, LrLoraConfig(b_init=b_init, is_compiled=False))
        x, target = torch.randn(16, 6), torch.randn(16, 5)
        optimizer = torch.optim.SGD([layer.A, layer.B, layer.amplitude, layer.raw_bandwidth], lr=0.1)
        B0, A0 = layer.B.detach().clone(), layer.A.detach().clone()
        for _ in range(5):
            optimizer.zero_grad()
            ((layer(x) - target) ** 2).mean().backward()
            optimizer.step()
        a = layer.amplitude.detach()
        if not moves:
            torch.testing.assert_close(a, a.flip(0), rtol=1e-5, atol=1e-7)  # even phi
            assert layer.B.detach().abs().max() < 1e-4  # rounding noise, against > 1e-3 below
        else:
            assert (layer.B.detach() - B0).abs().max() > 1e-3 and (layer.A.detach() - A0).abs().max() > 1e-3
            sigma = torch.linalg.svdvals(layer.delta_w().detach())
            assert sigma[1] > 1e-3 * sigma[0]  # more than phi(0)'s constant matrix


def test_lr_lora_record_rebuilds_dw_exactly(lr_lora_dir):
    folder, _, layers = lr_lora_dir
    adapter = load_adapter(folder)
    assert adapter.format == "lr_lora" and len(adapter.modules) == len(layers) == 12
    for module in adapter.modules:
        layer = layers[module.name]
        assert module.is_dense and torch.equal(module.delta, layer.delta_w().detach())  # bit for bit
        torch.testing.assert_close(module.delta.double(), reference_delta(layer), rtol=1e-5, atol=1e-6)
        assert module.r == min(module.out_features, module.in_features) and module.factor_rank == 2
        assert module.n_params == 2 * (module.in_features + module.out_features) + 2 * 8
    assert adapter.n_params == sum(2 * (m.in_features + m.out_features) + 16 for m in adapter.modules)
    assert set(adapter.extra_tensors) == {f"base_model.model.{HEAD_NAME}.weight", f"base_model.model.{HEAD_NAME}.bias"}


def test_dense_spectrum_equals_a_float64_svd(lr_lora_dir):
    folder, _, layers = lr_lora_dir
    spectra = adapter_spectra(load_adapter(folder))
    for s in spectra.spectra:
        expected = np.linalg.svd(reference_delta(layers[s.name]).numpy(), compute_uv=False)
        np.testing.assert_allclose(s.sigma, expected, rtol=1e-5, atol=1e-6 * expected[0])
        assert s.r == min(s.in_features, s.out_features) and s.sigma.shape == expected.shape
        assert math.isclose(s.stable_rank, float((expected**2).sum() / expected[0] ** 2), rel_tol=1e-6)
    assert spectra.dtype == "float32"  # the requested dtype; dense modules are done in float64 regardless


def test_para_cut_of_lr_lora_exports_a_peft_adapter_with_the_truncated_svd(lr_lora_dir, tmp_path):
    folder, model, layers = lr_lora_dir
    adapter = load_adapter(folder)
    cut = allocate_ranks(para_index(adapter_spectra(adapter)), 0.9, "energy")
    assert len(set(cut.ranks)) > 1 and max(cut.ranks) > 2  # per-module ranks, above the factor rank somewhere
    out = save_adapter(compress_adapter(adapter, cut), tmp_path / "cut")
    assert check_round_trip(adapter, cut, out).is_ok
    base = tiny_bert(3, seed=0, vocab_size=50)
    peft_model = PeftModel.from_pretrained(base, out)
    found = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            found[name.removeprefix("base_model.model.")] = module.get_delta_weight("default")
    kept = {n: k for n, k in cut.rank_map.items() if k}
    assert set(found) == set(kept)
    for name, k in kept.items():
        U, S, Vh = np.linalg.svd(reference_delta(layers[name]).numpy(), full_matrices=False)
        expected = (U[:, :k] * S[:k]) @ Vh[:k]  # the best rank-k approximation of dW
        torch.testing.assert_close(found[name].double(), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
    head = peft_model.base_model.model.head.modules_to_save["default"]
    assert torch.equal(head.weight, getattr(model, HEAD_NAME).weight)  # the trained head went with the export


def test_corrupt_lr_lora_records_are_one_line_errors(lr_lora_dir):
    folder, _, _ = lr_lora_dir
    config = folder / "lr_lora_config.json"
    text = config.read_text()
    config.write_text(text.replace('"r": 2', '"r": 3', 1))
    with pytest.raises(AdapterError, match=r"lr_lora.safetensors: module .* not \(r, in\) and \(out, r\) with r = 3"):
        load_adapter(folder)
    config.write_text("{not json")
    with pytest.raises(AdapterError, match=r"lr_lora_config.json: not valid JSON"):
        load_adapter(folder)
