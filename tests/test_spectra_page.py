"""The Spectra page answers "which layers matter": readable log ticks, hover names, highlight, the PARA τ line,
and a heat map that keeps its height from 6 to 80 layers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.adapters import load_adapter
from analysis.figures import HEATMAP_TEXT_MAX_LAYERS, log_ticks, module_heatmap_figure, spectra_figure
from analysis.naming import forward_order, short_type_labels
from analysis.spectra import adapter_spectra

LLAMA_TYPES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]  # fmt: skip


def make_layers_dir(folder: Path, n_layers: int, *, r: int = 4, dim: int = 16, seed: int = 0) -> Path:
    """A Llama-shaped PEFT folder: n_layers x 7 projections of random rank-r factors, deeper layers larger."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(n_layers):
        for kind in LLAMA_TYPES:
            prefix = f"base_model.model.model.layers.{i}.{kind}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, dim, generator=g) * (1 + i / n_layers)  # (r, in)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(dim, r, generator=g)  # (out, r)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": [k.split(".")[-1] for k in LLAMA_TYPES],
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def heat_shape(chart) -> str:
    """The z shape of a heat map sent to the browser (plotly encodes numpy arrays as typed data)."""
    return json.loads(chart.proto.spec)["data"][0]["z"]["shape"]


@pytest.fixture(scope="module")
def llama80(tmp_path_factory) -> Path:
    return make_layers_dir(tmp_path_factory.mktemp("llama80") / "adapter", 80)


def test_log_ticks_are_whole_labels_not_minor_digits():
    assert log_ticks(0.012, 2.3) == (
        [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
        ["0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"],
    )
    assert log_ticks(1e-5, 3.0)[1] == ["1e-05", "0.0001", "0.001", "0.01", "0.1", "1"]  # decades over 5.5 decades
    assert log_ticks(0.5, 0.9)[1] == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    values, labels = log_ticks(0.51, 0.55)
    assert labels == ["0.51", "0.55"] and values == [0.51, 0.55]


def test_type_labels_are_short_and_in_forward_order():
    kinds = ["mlp.down_proj", "self_attn.k_proj", "self_attn.q_proj", "custom.thing"]
    assert forward_order(kinds) == ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj", "custom.thing"]
    assert short_type_labels(["a.dense", "b.dense", "self_attn.v_proj"]) == {
        "a.dense": "a.dense", "b.dense": "b.dense", "self_attn.v_proj": "v_proj"  # "dense" twice: kept whole
    }  # fmt: skip


def test_spectra_figure_groups_types_highlights_and_draws_tau(llama80):
    spectra = adapter_spectra(load_adapter(llama80))
    pick = "model.layers.40.self_attn.v_proj"
    fig = spectra_figure(spectra, highlight=[pick], tau=30.0, tau_label="PARA τ")
    names = [t.name for t in fig.data]
    assert names == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", pick, "PARA τ"]
    chosen = fig.data[names.index(pick)]
    assert chosen.line.width > 3 and fig.data[0].opacity < 1  # the pick on top, the rest dimmed
    assert set(chosen.text) == {pick, None}  # the hover names the module
    v_proj = fig.data[2]
    assert sum(t is None for t in v_proj.x) == 79 and pick not in v_proj.text  # 80 modules but the picked one
    assert list(fig.data[-1].y) == [30.0, 30.0]
    assert all(label.replace(".", "").replace("e-", "").isdigit() for label in fig.layout.yaxis.ticktext)
    by_layer = spectra_figure(spectra, color_by="layer")
    assert [t.name for t in by_layer.data][:2] == ["layers 0-7", "layers 8-15"] and len(by_layer.data) == 10


@pytest.mark.parametrize("n_layers", [6, 30, 80])
def test_heat_map_keeps_its_height_from_6_to_80_layers(n_layers):
    values = {f"model.layers.{i}.{kind}": float(i + j) for i in range(n_layers) for j, kind in enumerate(LLAMA_TYPES)}
    fig = module_heatmap_figure(values, "σ_max per module", "σ_max")
    (heat,) = fig.data
    assert len(heat.z) == 7 and len(heat.z[0]) == n_layers  # types as rows, layers as columns
    assert list(heat.y) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert fig.layout.height == 110 + 40 * 7  # the same at every layer count
    assert (heat.texttemplate is not None) == (n_layers <= HEATMAP_TEXT_MAX_LAYERS)  # numbers where they fit
    assert len(fig.layout.xaxis.tickvals) <= 30
    assert heat.customdata[1][5] == "model.layers.5.self_attn.k_proj"  # the hover names the module


def test_spectra_page_draws_the_para_pages_cut_and_a_highlight(home):
    home.switch_page("pages/2_PARA.py").run()
    home.slider[0].set_value(80.0).run()
    (tau,) = [m.group(1) for md in home.markdown if (m := re.match(r"τ = \*\*([0-9.e-]+)\*\*", md.value))]
    home.switch_page("pages/1_Spectra.py").run()
    assert not home.exception
    (curves,) = [c for c in home.get("plotly_chart") if "Singular value spectra" in c.proto.spec]
    line = json.loads(curves.proto.spec)["data"][-1]
    assert line["name"] == "PARA τ" and f"{line['y'][0]:.4g}" == tau
    assert any(f"PARA τ = {tau}" in c.value and "at 80, on the PARA page" in c.value for c in home.caption)
    home.multiselect(key="spectra_highlight").set_value(["bert.encoder.layer.5.attention.self.query"]).run()
    (curves,) = [c for c in home.get("plotly_chart") if "Singular value spectra" in c.proto.spec]
    assert "bert.encoder.layer.5.attention.self.query" in [
        t.get("name") for t in json.loads(curves.proto.spec)["data"]
    ]
    home.radio(key="spectra_color").set_value("layer").run()
    home.selectbox(key="spectra_metric").set_value("Effective rank").run()
    assert not home.exception


def test_spectra_page_on_an_80_layer_adapter(home, llama80):
    home.radio(key="adapter_source").set_value("Folder on the server").run()
    home.text_input(key="folder_path").input(str(llama80))
    next(b for b in home.button if b.label == "Load").click().run()
    home.switch_page("pages/1_Spectra.py").run()
    assert not home.exception
    (heat,) = [c for c in home.get("plotly_chart") if "per module" in c.proto.spec]
    assert heat_shape(heat) == "7, 80"
    home.slider(key="spectra_layers").set_value((70, 79)).run()
    (heat,) = [c for c in home.get("plotly_chart") if "per module" in c.proto.spec]
    assert heat_shape(heat) == "7, 10" and not home.exception
