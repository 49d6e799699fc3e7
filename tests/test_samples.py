"""Bundled samples: every run record loads in the engine with the shapes and ranks it records, and the
Llama-shaped SmolLM2 sample looks right in the app (210 modules, bf16, a 30 x 7 layer x type heat map)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from analysis.naming import layer_type_grid
from analysis.spectra import adapter_spectra
from analysis.training.records import list_runs

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_adapters"
SMOLLM = "smollm2-135m-bbc-lora-r16"
# SmolLM2-135M: hidden 576, 3 key/value heads of 64, MLP 1536.
SMOLLM_SHAPES = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (192, 576),
    "self_attn.v_proj": (192, 576),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (1536, 576),
    "mlp.up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}
RUNS = [run for run in list_runs(SAMPLES)]


def test_samples_include_the_llama_shaped_run():
    assert SMOLLM in {run.name for run in RUNS}
    assert all(run.status == "finished" for run in RUNS)


@pytest.mark.parametrize("run", RUNS, ids=[run.name for run in RUNS])
def test_sample_loads_with_its_recorded_ranks_and_params(run):
    adapter = load_adapter(run.path / "adapter")
    allocation = json.loads((run.path / "allocation.json").read_text())
    spectra = adapter_spectra(adapter)
    if adapter.format == "lr_lora":  # dense updates: the learned rank is dW's stable rank (rounded in allocation)
        recorded = run.metrics["method_details"]["stable_rank"]
        for s in spectra.spectra:  # rebuilt by the reader, measured by the engine's dense SVD
            assert math.isclose(s.stable_rank, recorded[s.name], rel_tol=1e-3), s.name
        assert allocation == {name: round(value) for name, value in recorded.items()}
    else:
        assert {m.name: m.r for m in adapter.modules} == {name: r for name, r in allocation.items() if r}  # 0: dropped
    assert adapter.n_params == run.metrics["n_lora_params"]
    if run.metrics["method"] == "lora":
        assert set(allocation.values()) == {run.metrics["config"]["r"]}
    else:  # adaptive: non-uniform ranks within the budget (the parameters of uniform rank budget.rank)
        assert len(set(allocation.values())) > 1
        assert adapter.n_params <= run.metrics["budget"]["params"]
    assert all(math.isfinite(s.sigma_max) and s.sigma_max > 0 for s in spectra.spectra)


def test_smollm_sample_is_210_bf16_modules_of_smollm2_shape():
    run = next(run for run in RUNS if run.name == SMOLLM)
    adapter = load_adapter(run.path)
    assert len(adapter.modules) == 210 and {m.r for m in adapter.modules} == {16}
    assert {m.A.dtype for m in adapter.modules} == {m.B.dtype for m in adapter.modules} == {torch.bfloat16}
    layers, types = layer_type_grid([m.name for m in adapter.modules])
    assert layers == list(range(30)) and set(types) == set(SMOLLM_SHAPES)
    for m in adapter.modules:
        kind = m.name.split(".", 3)[3]  # model.layers.N.<kind>
        assert (m.out_features, m.in_features) == SMOLLM_SHAPES[kind], m.name
    assert adapter.config["task_type"] == "CAUSAL_LM"
    assert adapter.file_size < 10.5e6
    held_out = run.metrics["held_out"]
    assert run.is_causal_lm and held_out["perplexity"] < held_out["perplexity_before"]


def test_app_shows_the_smollm_sample_as_layer_by_type():
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.selectbox(key="sample_choice").set_value(SMOLLM).run()
    assert not at.exception
    assert next(m.value for m in at.metric if m.label == "Modules") == "210"
    at.switch_page("pages/1_Spectra.py").run()
    assert not at.exception
    heatmap = next(
        trace
        for chart in at.get("plotly_chart")
        for trace in json.loads(chart.proto.spec)["data"]
        if trace["type"] == "heatmap"
    )
    # Types are rows and layers columns (one height from 6 to 80 layers); the cells carry the module names.
    assert heatmap["x"] == [str(layer) for layer in range(30)] and len(heatmap["y"]) == len(SMOLLM_SHAPES)
    names = {name for row in heatmap["customdata"] for name in row if name}
    assert len(names) == 210 and {".".join(name.split(".")[-2:]) for name in names} == set(SMOLLM_SHAPES)
    for page in ("pages/2_PARA.py", "pages/3_Compare.py", "pages/4_Train.py"):
        at.switch_page(page).run()
        assert not at.exception, page
    from pages.shared.train_widgets import KEY_RUN_OPEN
    from pages.shared.widgets import SAMPLES_DIR

    at.session_state[f"{KEY_RUN_OPEN}-{SAMPLES_DIR / 'smollm2-135m-bbc-lora-r16'}"] = True  # its summary opened
    at.run()
    labels = [m.label for m in at.metric]
    assert "Held-out perplexity" in labels  # the Train page's summary of the causal-LM run
