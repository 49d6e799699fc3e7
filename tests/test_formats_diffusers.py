"""diffusers and kohya single files against the libraries that use them: diffusers' own loaders on tiny UNet, Flux
and SD3 models, and kohya's layout read by kohya's rule (scale alpha / rank, networks/lora.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from analysis.adapters import load_adapter
from analysis.export import compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra
from tests.diffusion_builders import (
    KINDS,
    diffusers_lora_file,
    load_with_diffusers,
    model_output,
    tiny_text_encoder,
    tiny_unet,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run in milliseconds on one thread; OpenMP threads spinning on a shared machine take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# kind -> the source's (r, alpha): the cases diffusers loaded at the wrong strength before the header was read
CASES = {"unet": (8, 4.0), "flux": (16, 8.0), "sd3": (8, 4.0)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cut(adapter, energy: float):
    return allocate_ranks(para_index(adapter_spectra(adapter)), energy, "energy")


def truncated(m, k: int) -> torch.Tensor:
    """The best rank-k approximation of the module's update (float64 SVD of the dense s * B @ A)."""
    U, S, Vh = torch.linalg.svd(m.scaling * m.B.double() @ m.A.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]  # (out, k) @ (k, in)


def with_updates(model: torch.nn.Module, updates: dict[str, torch.Tensor]) -> torch.nn.Module:
    with torch.no_grad():
        for local, delta in updates.items():
            weight = model.get_submodule(local).weight
            weight += delta.to(weight.dtype)
    return model


@pytest.mark.parametrize("kind", list(CASES))
def test_diffusers_header_alpha_scales_the_spectra_by_alpha_over_r(tmp_path, kind):
    r, alpha = CASES[kind]
    with_header = load_adapter(diffusers_lora_file(kind, tmp_path / "h", r=r, alpha=alpha))
    without = load_adapter(diffusers_lora_file(kind, tmp_path / "n", r=r, alpha=alpha, header=False))
    assert with_header.format == without.format == "diffusers"  # named as it is, not "kohya"
    for a, b in zip(adapter_spectra(with_header).spectra, adapter_spectra(without).spectra, strict=True):
        np.testing.assert_allclose(a.sigma, b.sigma * (alpha / r), rtol=1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_diffusers_export_loads_in_diffusers_at_the_cut_strength(tmp_path, kind):
    r, alpha = CASES[kind]
    # one module with its own alpha too: the header's alpha_pattern
    source = diffusers_lora_file(kind, tmp_path / "src", r=r, alpha=alpha, alpha_pattern={"to_k": 2 * alpha})
    adapter = load_adapter(source)
    build, _, component = KINDS[kind]
    base = model_output(kind, build())
    effect = model_output(kind, load_with_diffusers(kind, source)) - base
    everything = save_adapter(compress_adapter(adapter, cut(adapter, 1.0)), tmp_path / "all.safetensors")
    assert rel(model_output(kind, load_with_diffusers(kind, everything)) - base, effect) < 1e-5
    allocation = cut(adapter, 0.9)
    assert len(set(allocation.ranks)) > 1  # ranks differ: scale 1 per module matters
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "cut.safetensors")
    with safe_open(out, "pt") as f:
        header = json.loads(f.metadata()["lora_adapter_metadata"])
    assert header[f"{component}.use_rslora"] is False and header[f"{component}.alpha_pattern"]
    updates = {
        m.name.removeprefix(component + "."): truncated(m, k)
        for m, k in zip(adapter.modules, allocation.ranks, strict=True)
        if k
    }
    reference = model_output(kind, with_updates(build(), updates)) - base
    assert rel(model_output(kind, load_with_diffusers(kind, out)) - base, reference) < 1e-5


def kohya_name(prefix: str, local: str) -> str:
    """kohya's module name (networks/lora.py): its prefix and the module path with "." as "_"."""
    return f"{prefix}_{local.replace('.', '_')}"


TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def kohya_sd_file(path, *, r: int = 8, alpha: float = 4.0):
    """A kohya SD1-style LoRA on the tiny UNet's attention and the text encoder, with kohya's key names."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for prefix, model, targets in (("lora_unet", tiny_unet(), ("to_q", "to_k", "to_v", "to_out.0")),
                                   ("lora_te", tiny_text_encoder(), TEXT_TARGETS)):  # fmt: skip
        for local, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and local.endswith(targets):
                name = kohya_name(prefix, local)
                tensors[f"{name}.lora_down.weight"] = torch.randn(r, module.in_features, generator=g) * 0.3
                tensors[f"{name}.lora_up.weight"] = torch.randn(module.out_features, r, generator=g) * 0.3
                tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path, metadata={"ss_network_dim": str(r), "ss_network_alpha": str(alpha)})
    return path


def merged_as_kohya(file) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh UNet and text encoder with the file merged by kohya's rule: W += (alpha / rank) * up @ down."""
    tensors = load_file(file)
    models = {"lora_unet": tiny_unet(), "lora_te": tiny_text_encoder()}
    for prefix, model in models.items():
        names = {kohya_name(prefix, local): local for local, _ in model.named_modules()}
        updates = {}
        for key in tensors:
            if key.startswith(prefix + "_") and key.endswith(".lora_down.weight"):
                name = key.removesuffix(".lora_down.weight")
                down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
                updates[names[name]] = float(tensors[f"{name}.alpha"]) / down.shape[0] * up @ down
        with_updates(model, updates)
    return models["lora_unet"], models["lora_te"]


def loaded_by_diffusers(file) -> tuple[torch.nn.Module, torch.nn.Module]:
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(file)
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet)
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, text_encoder)
    return unet, text_encoder


def outputs(unet, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return model_output("unet", unet), text_encoder(ids).last_hidden_state


def test_kohya_export_reads_the_same_in_kohya_and_diffusers(tmp_path):
    source = kohya_sd_file(tmp_path / "style.safetensors")
    adapter = load_adapter(source)
    assert adapter.format == "kohya"
    base = outputs(tiny_unet(), tiny_text_encoder())
    effect = [o - b for o, b in zip(outputs(*merged_as_kohya(source)), base, strict=True)]
    allocation = cut(adapter, 0.9)
    assert len(set(allocation.ranks)) > 1
    updates = {"lora_unet": {}, "lora_te": {}}
    for m, k in zip(adapter.modules, allocation.ranks, strict=True):
        if k:
            updates["lora_unet" if m.name.startswith("lora_unet") else "lora_te"][m.name] = truncated(m, k)
    reference = []
    for prefix, model in (("lora_unet", tiny_unet()), ("lora_te", tiny_text_encoder())):
        names = {kohya_name(prefix, local): local for local, _ in model.named_modules()}
        reference.append(with_updates(model, {names[n]: d for n, d in updates[prefix].items()}))
    reference = [o - b for o, b in zip(outputs(*reference), base, strict=True)]
    everything = save_adapter(compress_adapter(adapter, cut(adapter, 1.0)), tmp_path / "all.safetensors")
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "cut.safetensors")
    alphas = {float(t) for k, t in load_file(out).items() if k.endswith(".alpha")}
    assert alphas == {float(max(allocation.ranks))}  # one alpha: diffusers reads it right
    for read in (merged_as_kohya, loaded_by_diffusers):
        for got, want, b in zip(outputs(*read(everything)), effect, base, strict=True):
            assert rel(got - b, want) < 1e-5, read.__name__
        for got, want, b in zip(outputs(*read(out)), reference, base, strict=True):
            assert rel(got - b, want) < 1e-5, read.__name__


def test_a_bad_diffusers_header_is_one_line_naming_the_file(tmp_path):
    from analysis.adapters import AdapterError

    source = diffusers_lora_file("flux", tmp_path / "src", r=4, alpha=2.0)
    tensors = load_file(source)
    for header, says in (("{not json", "is not JSON"), (json.dumps({"transformer.r": 3}), "says 3")):
        save_file(tensors, tmp_path / "bad.safetensors", metadata={"format": "pt", "lora_adapter_metadata": header})
        with pytest.raises(AdapterError, match=says) as err:
            load_adapter(tmp_path / "bad.safetensors")
        assert str(err.value).startswith(str(tmp_path / "bad.safetensors")) and "\n" not in str(err.value)
