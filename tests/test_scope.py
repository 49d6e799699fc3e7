"""Cut scope: one PARA threshold (global) or the same cut within each component of a diffusion LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from analysis.__main__ import main
from analysis.adapters import load_adapter
from analysis.para import allocate_ranks, para_index
from analysis.scope import allocate_scoped, allocation_of, component_of
from analysis.spectra import AdapterSpectra, Spectrum, adapter_spectra
from pages.shared.state import KEY_EXPORT_ZIP
from tests.builders import factors_with_sigma


def sd_spectra() -> AdapterSpectra:
    """A UNet with large updates and a text encoder with small ones, as in trained SD LoRAs."""
    rng = np.random.default_rng(0)
    spectra = [
        Spectrum(f"lora_unet_block_{i}_to_q", np.sort(rng.lognormal(size=8))[::-1] * 10, 40, 40) for i in range(6)
    ]
    spectra += [Spectrum(f"lora_te_text_model_encoder_layers_{i}_q_proj", np.sort(rng.lognormal(size=8))[::-1] * 0.1,
                         24, 24) for i in range(4)]  # fmt: skip
    return AdapterSpectra("fp", tuple(spectra), "cpu", "float64", 0.0)


def test_component_of_reads_kohya_and_diffusers_names():
    assert component_of("lora_te2_text_model_encoder_layers_0_mlp_fc1") == "text encoder 2"
    assert component_of("lora_te_text_model_encoder_layers_0_mlp_fc1") == "text encoder"
    assert component_of("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == "text encoder"
    assert component_of("unet.mid_block.attentions.0.to_q") == component_of("lora_unet_mid_block_to_q") == "UNet"
    assert component_of("transformer.single_transformer_blocks.0.attn.to_q") == "transformer"
    assert component_of("model.layers.0.self_attn.q_proj") == "model"


def test_component_scope_keeps_the_energy_in_every_component():
    spectra = sd_spectra()
    global_cut = allocate_scoped(spectra, 0.9, "energy")
    te = next(b for b in global_cut.budgets if b.name == "text encoder")
    assert te.n_params_after == 0  # one threshold over everything leaves the small text encoder nothing
    cut = allocate_scoped(spectra, 0.9, "energy", scope="component")
    assert [b.name for b in cut.budgets] == ["UNet", "text encoder"]
    assert all(b.energy_kept >= 0.9 for b in cut.budgets)
    assert sum(b.n_params_after for b in cut.budgets) == cut.allocation.n_params_after
    for scope in ("global", "component"):  # a parameter budget is kept within each component and overall
        c = allocate_scoped(spectra, 0.5, "params_fraction", scope=scope)
        assert c.allocation.n_params_after <= 0.5 * c.allocation.n_params_before
        if scope == "component":
            assert all(b.params_fraction <= 0.5 for b in c.budgets)
    with pytest.raises(ValueError, match="scope must be one of"):
        allocate_scoped(spectra, 0.9, scope="layer")


def test_allocation_of_ranks_reports_what_the_global_cut_reports():
    index = para_index(sd_spectra())
    for energy in (0.3, 0.9, 1.0):
        a = allocate_ranks(index, energy)
        b = allocation_of(index, np.array(a.ranks), 0)
        assert (b.ranks, b.n_params_after, b.tau) == (a.ranks, a.n_params_after, a.tau)
        assert b.energy_kept == pytest.approx(a.energy_kept) and b.rel_error == pytest.approx(a.rel_error)


def test_cli_compress_scope_component_shows_each_components_budget(capsys, tmp_path):
    tensors = {}
    scales = {
        "lora_unet_a_to_q": 10.0,
        "lora_unet_b_to_q": 8.0,
        "lora_te_text_q_proj": 0.1,
        "lora_te_text_k_proj": 0.05,
    }
    for i, (name, scale) in enumerate(scales.items()):
        B, A = factors_with_sigma([scale * s for s in (4.0, 2.0, 1.0, 0.5)], seed=i)
        tensors |= {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B, f"{name}.alpha": torch.tensor(4.0)}
    save_file(tensors, tmp_path / "sd.safetensors")
    assert main(["compress", str(tmp_path / "sd.safetensors"), "--energy", "0.9", "--scope", "component",
                 "--out", str(tmp_path / "out.safetensors")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "  UNet: 2 modules" in out and "  text encoder: 2 modules" in out


def test_para_page_scope_picker_cuts_each_component_and_exports_that_cut(home, tmp_path):
    tensors = {}
    scales = {
        "lora_unet_a_to_q": 10.0,
        "lora_unet_b_to_q": 8.0,
        "lora_te_text_q_proj": 0.02,
        "lora_te_text_k_proj": 0.01,
    }
    for i, (name, scale) in enumerate(scales.items()):
        B, A = factors_with_sigma([scale * s for s in (4.0, 2.0, 1.0, 0.5)], seed=i)
        tensors |= {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B, f"{name}.alpha": torch.tensor(4.0)}
    save_file(tensors, tmp_path / "sd.safetensors")
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(tmp_path / "sd.safetensors"))
    home.button[0].click().run()
    home.switch_page("pages/2_PARA.py").run()
    scope = next(s for s in home.selectbox if s.label == "Cut scope")
    budgets = home.dataframe[-1].value
    te = list(budgets["component"]).index("text encoder")  # rows in module order (the file's: lora_te first)
    assert set(budgets["component"]) == {"UNet", "text encoder"} and budgets["params kept"].iloc[te] == 0
    scope.set_value("The same cut within each component").run()
    assert not home.exception
    budgets = home.dataframe[-1].value
    assert budgets["params kept"].iloc[te] > 0  # the text encoder keeps its share of the energy now
    next(b for b in home.button if b.label == "Build the compressed adapter (.safetensors)").click().run()
    (_, ranks, _), _ = home.session_state[KEY_EXPORT_ZIP]
    spectra = adapter_spectra(load_adapter(tmp_path / "sd.safetensors"))
    energy = home.slider[0].value / 100  # the page's default unit: energy kept, in percent
    assert ranks == allocate_scoped(spectra, energy, "energy", scope="component").allocation.ranks
    assert sum(k for n, k in zip(spectra.names, ranks, strict=True) if n.startswith("lora_te")) > 0


def test_para_page_says_when_dora_modules_are_held_at_rank_one(home, tmp_path):
    tensors = {}
    for name, sigma in (("lora_unet_big", [4.0, 2.0]), ("lora_unet_small", [1e-3, 1e-4])):
        B, A = factors_with_sigma(sigma)
        tensors |= {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B, f"{name}.alpha": torch.tensor(2.0)}
        tensors[f"{name}.dora_scale"] = torch.ones(1, 40)
    save_file(tensors, tmp_path / "dora.safetensors")
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(tmp_path / "dora.safetensors"))
    home.button[0].click().run()
    home.switch_page("pages/2_PARA.py").run()
    assert not home.exception
    assert any("1 DoRA module(s) the cut drops are kept at rank 1" in c.value for c in home.caption)
