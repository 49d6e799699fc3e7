"""The Side by side page through AppTest: an adapter against its PARA cut, two runs, a bad folder."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.builders import make_peft_dir


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def angles(at) -> tuple[float, float]:
    out, inp = re.findall(r"([0-9.]+)°", metric(at, "Mean angle, output / input"))
    return float(out), float(inp)


@pytest.fixture
def side(home):
    home.switch_page("pages/5_Side_by_side.py").run()
    assert not home.exception
    return home


def test_an_adapter_and_its_para_cut_share_their_top_directions(side):
    assert metric(side, "Modules compared") == "36 of 36"
    assert angles(side) == (0.0, 0.0) and metric(side, "Mean overlap") == "1.000"
    assert any("PARA τ = " in c.value and "345,216 of 1,327,104" in c.value for c in side.caption)
    assert len(side.tabs) == 4 and not side.error


def test_two_runs_of_different_tasks_point_elsewhere(side):
    side.selectbox(key="side_kind-B").set_value("sample").run()
    assert "Adapter B" not in [m.label for m in side.metric]  # nothing picked yet: the page waits
    side.selectbox(key="side_pick-B-sample").set_value("minilm-tweet-sentiment-lora-r32").run()
    assert not side.exception
    at_8 = angles(side)
    assert min(at_8) > 30  # other tasks, other directions (0 would mean the same subspaces)
    side.slider(key="side_k").set_value(1).run()
    assert not side.exception and angles(side) != at_8
    side.selectbox(key="side_metric").set_value("σ_max").run()
    (table,) = side.dataframe
    assert len(table.value) == 36 and table.value["overlap"].between(0, 1).all()
    assert not side.exception


def test_the_same_sample_on_both_sides_gives_0_degrees(side):
    side.selectbox(key="side_kind-B").set_value("sample").run()
    side.selectbox(key="side_pick-B-sample").set_value("minilm-bbc-topic-lora-r32").run()
    assert angles(side) == (0.0, 0.0) and metric(side, "Mean overlap") == "1.000"


def test_a_bad_folder_is_one_line_and_no_traceback(side, tmp_path):
    side.selectbox(key="side_kind-A").set_value("folder").run()
    side.text_input(key="side_folder-A").input(str(tmp_path / "missing")).run()
    assert not side.exception
    assert side.error[0].value.startswith(f"{tmp_path / 'missing'}: no such file or folder")
    side.selectbox(key="side_kind-A").set_value("run").run()
    assert not side.exception


def test_an_untrained_adapter_with_zero_updates_draws_without_a_traceback(home, tmp_path):
    """peft's default init leaves B = 0: every update is zero, nothing to compare, no error."""
    source = make_peft_dir(tmp_path / "trained")
    tensors = load_file(source / "adapter_model.safetensors")
    zero = tmp_path / "untrained"
    shutil.copytree(source, zero)
    save_file(
        {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()},
        zero / "adapter_model.safetensors",
    )
    for page in ("pages/1_Spectra.py", "pages/5_Side_by_side.py"):
        home.radio(key="adapter_source").set_value("Folder on the server").run()
        home.text_input(key="folder_path").input(str(zero))
        next(b for b in home.button if b.label == "Load").click().run()
        home.switch_page(page).run()
        assert not home.exception, page
        home.switch_page("pages/0_Home.py").run()
    home.switch_page("pages/5_Side_by_side.py").run()
    home.selectbox(key="side_kind-B").set_value("folder").run()
    home.text_input(key="side_folder-B").input(str(source)).run()
    assert not home.exception and "nothing to compare" in home.info[0].value
