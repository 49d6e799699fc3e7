"""Streamlit pages through AppTest on the bundled sample: render, slider, bad input, export, many sessions."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from pages.shared import widgets
from pages.shared.state import KEY_EXPORT_ZIP
from tests.builders import factors_with_sigma, make_peft_dir, tiny_bert

TIMEOUT = 120


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def cut_line(at: AppTest) -> str:
    """The PARA page's line with τ, τ / σ_max and the mean rank of the cut."""
    return next(m.value for m in at.markdown if m.value.startswith("τ = "))


def percent(text: str) -> float:
    return float(text.rstrip("%"))


def test_home_opens_on_the_bundled_sample(home):
    assert metric(home, "Modules") == "36"
    assert metric(home, "Format") == "PEFT"
    assert any("minilm-bbc-topic-lora-r32" in m.value for m in home.markdown)


PAGES = ["pages/1_Spectra.py", "pages/2_PARA.py", "pages/3_Compare.py", "pages/4_Train.py", "pages/5_Side_by_side.py"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_default_sample(home, page):
    home.switch_page(page).run()
    assert not home.exception, page


def test_para_slider_moves_savings_in_the_expected_direction(home):
    home.switch_page("pages/2_PARA.py").run()
    at90 = percent(metric(home, "Params saved"))
    home.slider[0].set_value(99.0).run()
    at99 = percent(metric(home, "Params saved"))
    home.slider[0].set_value(50.0).run()
    at50 = percent(metric(home, "Params saved"))
    assert not home.exception
    assert at99 < at90 < at50  # keeping more energy saves fewer parameters


def test_para_units_switch_and_agree(home):
    home.switch_page("pages/2_PARA.py").run()
    home.selectbox[0].set_value("Parameter budget (%)").run()
    home.slider[0].set_value(25.0).run()
    assert percent(metric(home, "Params saved")) >= 75.0
    home.selectbox[0].set_value("Threshold τ (log scale)").run()
    assert not home.exception and home.slider[0].label == "log10 τ"


def test_a_cut_above_the_largest_value_says_so(home):
    home.switch_page("pages/2_PARA.py").run()
    home.selectbox[0].set_value("Parameter budget (%)").run()
    home.slider[0].set_value(0.0).run()
    assert "τ / σ_max = **> 1**" in cut_line(home) and cut_line(home).startswith("τ = **> ")
    assert metric(home, "LoRA params") == "0"
    home.selectbox[0].set_value("Relative threshold τ / σ_max").run()
    home.slider[0].set_value(1.0).run()  # the top component alone: τ is σ_max
    assert "τ / σ_max = **1.0000**" in cut_line(home) and not cut_line(home).startswith("τ = **>")


def test_settings_survive_a_visit_to_another_page(home):
    home.switch_page("pages/2_PARA.py").run()
    home.slider[0].set_value(80.0).run()
    home.radio(key="min_rank").set_value(1).run()
    saved = metric(home, "LoRA params")
    home.switch_page("pages/1_Spectra.py").run()
    home.selectbox(key="spectra_metric").set_value("Stable rank").run()
    home.switch_page("pages/2_PARA.py").run()
    assert home.slider[0].value == 80.0 and home.radio(key="min_rank").value == 1
    assert metric(home, "LoRA params") == saved
    home.switch_page("pages/1_Spectra.py").run()
    assert home.selectbox(key="spectra_metric").value == "Stable rank"
    assert not home.exception and not home.warning  # no "default value and Session State" clash


def test_spectra_filters_apply_to_the_heat_map_too(home):
    home.switch_page("pages/1_Spectra.py").run()
    home.multiselect(key="spectra_types").set_value(["attention.self.query"]).run()
    (heat_map,) = [c for c in home.get("plotly_chart") if "per module" in c.proto.spec]
    assert '"y":["query"]' in heat_map.proto.spec.replace(" ", "")  # one row: the type kept
    home.multiselect(key="spectra_types").set_value([]).run()
    assert not home.get("plotly_chart") and "No module matches" in home.info[0].value


def test_a_new_cut_unit_starts_at_the_same_cut(home):
    home.switch_page("pages/2_PARA.py").run()
    home.slider[0].set_value(75.0).run()  # 139,776 parameters; each unit's own default would keep 2-3x more
    saved = int(metric(home, "LoRA params").replace(",", ""))
    for unit in ("Parameter budget (%)", "Mean rank", "Relative threshold τ / σ_max", "Energy kept (%)"):
        home.selectbox[0].set_value(unit).run()
        kept = int(metric(home, "LoRA params").replace(",", ""))
        assert abs(kept - saved) <= 0.02 * saved, unit  # the same cut, up to the new slider's step


def test_bad_folder_shows_error_and_keeps_previous_adapter(home, tmp_path):
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(tmp_path / "missing"))
    home.button[0].click().run()
    assert not home.exception
    assert "no such file or folder" in home.error[0].value
    assert metric(home, "Modules") == "36"  # the sample is still loaded
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    home.text_input[0].input(str(broken))
    home.button[0].click().run()
    assert "not valid JSON" in home.error[0].value and metric(home, "Modules") == "36"
    home.radio[0].set_value("Bundled sample").run()
    assert not home.error  # the folder's error went with the folder source


def test_folder_load_then_export_loads_in_engine_and_peft(home, tmp_path):
    source = make_peft_dir(tmp_path / "tiny")
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(source))
    home.button[0].click().run()
    assert metric(home, "Modules") == "13"
    home.switch_page("pages/2_PARA.py").run()
    home.slider[0].set_value(80.0).run()
    out = tmp_path / "exported"
    home.text_input(key="export_dir").input(str(out)).run()
    next(b for b in home.button if b.label == "Save").click().run()
    assert not home.exception
    assert "Round-trip check passed" in home.success[0].value
    home.slider[0].set_value(70.0).run()
    assert not home.success  # the result belongs to the cut it was saved at
    exported = load_adapter(out)
    assert exported.n_params < load_adapter(source).n_params
    PeftModel.from_pretrained(tiny_bert(), out)


def test_a_kohya_file_downloads_as_one_safetensors_named_after_it(home, tmp_path):
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    prefix = "lora_unet_mid_block_attn1_to_k"
    tensors = {f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(4.0)}
    save_file(tensors, tmp_path / "my_style.safetensors", metadata={"ss_network_dim": "4"})
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(tmp_path / "my_style.safetensors"))
    home.button[0].click().run()
    home.switch_page("pages/2_PARA.py").run()
    next(b for b in home.button if b.label == "Build the compressed adapter (.safetensors)").click().run()
    assert not home.exception
    (label,) = [d.label for d in home.download_button]
    assert label.startswith("Download my_style-para.safetensors")
    (_, ranks, export_format), data = home.session_state[KEY_EXPORT_ZIP]
    (tmp_path / "download.safetensors").write_bytes(data)
    exported = load_adapter(tmp_path / "download.safetensors")
    assert export_format == "kohya" and [m.r for m in exported.modules] == list(ranks)


def test_the_sample_shown_loads_again_after_another_adapter(home, tmp_path):
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(make_peft_dir(tmp_path / "tiny")))
    home.button[0].click().run()
    assert metric(home, "Modules") == "13"
    home.radio[0].set_value("Bundled sample").run()
    assert home.selectbox(key="sample_choice").value is None  # no sample is loaded: none is shown as chosen
    assert metric(home, "Modules") == "13"
    home.selectbox(key="sample_choice").set_value("minilm-bbc-topic-lora-r32").run()
    assert metric(home, "Modules") == "36" and not home.exception and not home.warning
    assert home.selectbox(key="sample_choice").value == "minilm-bbc-topic-lora-r32"


def test_para_zip_is_built_for_the_current_cut_and_dropped_when_it_moves(home, tmp_path):
    home.switch_page("pages/2_PARA.py").run()
    home.slider[0].set_value(80.0).run()
    assert not home.download_button  # nothing is zipped until asked
    next(b for b in home.button if b.label.startswith("Build the compressed adapter")).click().run()
    assert not home.exception
    assert not any(b.label.startswith("Build") for b in home.button)  # the download took its place
    (label,) = [d.label for d in home.download_button]
    (_, ranks, export_format), data = home.session_state[KEY_EXPORT_ZIP]
    assert export_format == "peft" and f"({len(data) / 1e6:.2f} MB)" in label
    (tmp_path / "para.zip").write_bytes(data)
    exported = load_adapter(tmp_path / "para.zip")
    assert tuple(m.r for m in exported.modules) == tuple(k for k in ranks if k > 0)
    home.slider[0].set_value(60.0).run()
    assert not home.download_button and KEY_EXPORT_ZIP not in home.session_state  # another cut: zip freed
    assert any(b.label.startswith("Build the compressed adapter") for b in home.button)


def test_many_sessions_keep_their_own_adapter_and_cut(tmp_path):
    """Four sessions, interleaved step by step, share the caches but never each other's state."""
    folders = [make_peft_dir(tmp_path / f"a{i}", r=4 + 2 * i, seed=i) for i in range(3)]
    sessions = [AppTest.from_file("../app.py", default_timeout=TIMEOUT).run() for _ in range(4)]
    for i, at in enumerate(sessions[:3]):
        at.radio[0].set_value("Folder on the server").run()
        at.text_input[0].input(str(folders[i]))
    for at in sessions[:3]:
        at.button[0].click().run()
    for i, at in enumerate(sessions):
        at.switch_page("pages/2_PARA.py").run()
        at.slider[0].set_value(60.0 + 10 * i).run()
    results = []
    for i, at in enumerate(sessions):
        at.run()  # rerun after every other session moved its own slider
        expected = str(folders[i]) if i < 3 else "minilm-bbc-topic-lora-r32"
        assert expected in at.caption[0].value, (i, at.caption[0].value)
        assert at.slider[0].value == 60.0 + 10 * i
        results.append(metric(at, "LoRA params"))
    assert len(set(results)) == 4


def test_uploads_zip_and_folder_and_bad_file_keeps_previous(home, tmp_path):
    source = make_peft_dir(tmp_path / "tiny")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for f in source.iterdir():
            z.write(f, f"tiny/{f.name}")
    home.radio[0].set_value("Upload").run()
    home.file_uploader[0].set_value(("tiny.zip", buffer.getvalue(), "application/zip")).run()
    assert not home.exception and metric(home, "Modules") == "13"
    assert any("tiny.zip (uploaded)" in m.value for m in home.markdown)  # not the deleted temporary copy
    home.file_uploader[0].set_value(("bad.safetensors", b"\x00\x01garbage", "application/octet-stream")).run()
    assert "truncated safetensors" in home.error[0].value or "header" in home.error[0].value
    assert home.error[0].value.startswith("bad.safetensors: ")  # the file the user uploaded, not a temp copy
    assert metric(home, "Modules") == "13"  # the previous upload stays loaded
    home.radio(key="upload_kind").set_value("A whole folder").run()
    assert len(home.file_uploader) == 1  # one uploader at a time
    folder = [(f"tiny/{f.name}", f.read_bytes(), "application/octet-stream") for f in source.iterdir()]
    home.file_uploader[0].set_value(folder).run()
    assert not home.exception and metric(home, "Modules") == "13" and not home.error


def test_an_adapter_file_rewritten_in_place_is_read_again(tiny_peft_dir):
    weights = tiny_peft_dir / "adapter_model.safetensors"
    before = widgets._last_change_ns(tiny_peft_dir)
    folder_mtime = tiny_peft_dir.stat().st_mtime_ns
    os.utime(weights, ns=(before + 10**9, before + 10**9))  # rewritten in place: the folder's own mtime stays
    assert tiny_peft_dir.stat().st_mtime_ns == folder_mtime
    assert widgets._last_change_ns(tiny_peft_dir) == before + 10**9
