"""Evaluating an adapter and its PARA cuts on the user's own base model and data (analysis/evaluation/)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from analysis.adapters import load_adapter
from analysis.evaluation import BaseModelError, DataError, EvalSettings, evaluate_cut, open_base, prepare_data
from analysis.evaluation.__main__ import main as evaluate_main
from analysis.evaluation.base_model import check_memory, inspect_base_model
from analysis.evaluation.data import read_labelled, read_texts
from analysis.export import compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra
from tests.own_models import (
    LABELS,
    save_adapter_of,
    save_tiny_bert_classifier,
    save_tiny_llama,
    write_labelled_csv,
    write_text_jsonl,
)

SETTINGS = EvalSettings(seq_len=16, max_chunks=8, seed=0)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base = save_tiny_llama(root / "base")
    return base, save_adapter_of(base, root / "adapter", task="causal-lm"), write_text_jsonl(root / "text.jsonl")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    base = save_tiny_bert_classifier(root / "base")
    adapter = save_adapter_of(base, root / "adapter", task="classification")
    return base, adapter, write_labelled_csv(root / "labelled.csv")


def _cut(adapter, fraction):
    return allocate_ranks(para_index(adapter_spectra(adapter)), fraction, "params_fraction")


def _direct_perplexity(base_dir, adapter_dir, text_file, settings):
    """Perplexity computed here with transformers and peft alone: chunks, sample, shifted cross-entropy."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    rows = []
    for line in text_file.read_text().splitlines():
        ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
        rows += [ids[s : s + settings.seq_len] for s in range(0, len(ids) - settings.seq_len + 1, settings.seq_len)]
    chunks = torch.tensor(rows)
    chunks = chunks[torch.randperm(len(chunks), generator=torch.Generator().manual_seed(settings.seed))]
    chunks = chunks[: settings.max_chunks]  # (n, t)
    with torch.no_grad():
        logits = model(input_ids=chunks).logits[:, :-1]  # (n, t-1, vocab): position i predicts token i+1
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunks[:, 1:].reshape(-1))
    return math.exp(float(nll))


def test_evaluate_perplexity_equals_a_direct_transformers_peft_computation(llama, tmp_path):
    base_dir, adapter_dir, text = llama
    adapter = load_adapter(adapter_dir)
    base = open_base(adapter)  # found through the adapter's base_model_name_or_path
    data = prepare_data(base, text, SETTINGS)
    assert data.n_tokens == 8 * 15 and data.n_examples == 8
    whole = evaluate_cut(base, adapter, None, data)
    assert whole.metric == "perplexity" and whole.params_fraction == 1.0
    assert whole.value == pytest.approx(_direct_perplexity(base_dir, adapter_dir, text, SETTINGS), rel=1e-5)
    allocation = _cut(adapter, 0.25)
    cut = evaluate_cut(base, adapter, allocation, data)
    exported = save_adapter(compress_adapter(adapter, allocation, format="peft"), tmp_path / "cut")
    assert cut.value == pytest.approx(_direct_perplexity(base_dir, exported, text, SETTINGS), rel=1e-5)
    assert cut.value != pytest.approx(whole.value, rel=1e-6)  # the cut changed the model
    # the shared base came back unchanged: the uncompressed figure again
    assert evaluate_cut(base, adapter, None, data).value == pytest.approx(whole.value, rel=1e-6)


def _direct_accuracy(base_dir, adapter_dir, csv_file):
    import csv

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    rows = list(csv.DictReader(csv_file.open()))
    inputs = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    labels = torch.tensor([LABELS.index(r["label"]) for r in rows])
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)
    return float((predicted == labels).float().mean())


def test_evaluate_accuracy_equals_a_direct_transformers_peft_computation(bert, tmp_path):
    base_dir, adapter_dir, labelled = bert
    adapter = load_adapter(adapter_dir)
    base = open_base(adapter, base_dir)
    assert base.task == "classification"
    data = prepare_data(base, labelled, SETTINGS)  # names mapped through the model's id2label
    whole = evaluate_cut(base, adapter, None, data)
    assert whole.metric == "accuracy"
    assert whole.value == pytest.approx(_direct_accuracy(base_dir, adapter_dir, labelled))
    allocation = _cut(adapter, 0.1)
    cut = evaluate_cut(base, adapter, allocation, data)
    exported = save_adapter(compress_adapter(adapter, allocation, format="peft"), tmp_path / "cut")
    assert cut.value == pytest.approx(_direct_accuracy(base_dir, exported, labelled))
    # the base's own head was put back after each evaluation: the bare base scores as a fresh load does
    fresh = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(base.model(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_evaluate_cli_prints_the_uncompressed_and_each_cut(llama, capsys):
    base_dir, adapter_dir, text = llama
    argv = [str(adapter_dir), "--data", str(text), "--seq-len", "16", "--max-chunks", "8", "--params-fraction",
            "0.5", "0.25"]  # fmt: skip
    assert evaluate_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("data         8 chunks of 16 tokens (120 predicted tokens, seed 0)")
    assert out[2].startswith("uncompressed perplexity")
    assert [line.split()[:2] for line in out[3:]] == [["params_fraction", "0.5"], ["params_fraction", "0.25"]]
    expected = _direct_perplexity(base_dir, adapter_dir, text, EvalSettings(seq_len=16, max_chunks=8))
    assert f"perplexity {expected:.3f}" in out[2]


# -- bad input: one line each ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".jsonl", "the file is empty"),
        ('{"body": "x"}\n', ".jsonl", "no 'text' column (columns: body); name the column 'text'"),
        ("title,label\nx,1\n", ".csv", "no 'text' column (columns: label, title)"),
        ("[1, 2]", ".json", "record 1 is a int, not an object"),
        ("{not json\n", ".jsonl", "line 1 is not JSON"),
    ],
)
def test_read_texts_refuses_bad_files_in_one_line(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_texts(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["1", "0.5"], "record 2 has '0.5', neither an integer class id nor a name"),
        (["0", "sport"], "record 1 has '0', a class id among names"),
        (["1", ""], "record 2 has '', neither"),
        (["7", "1"], "record 1 has label 7, but the model has 3 classes"),
        (["sport", "cooking"], "label 'cooking' is not one of the model's labels"),
    ],
)
def test_read_labelled_refuses_labels_that_are_neither_integers_nor_names(tmp_path, labels, message):
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "".join(f"some words,{label}\n" for label in labels))
    with pytest.raises(DataError, match=message):
        read_labelled(path, n_labels=3, label_names=LABELS)


def test_read_labelled_maps_names_and_needs_names_when_the_model_has_none(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "sport"}\n{"text": "b", "label": "business"}\n')
    assert read_labelled(path, n_labels=3, label_names=LABELS).labels == (1, 0)
    with pytest.raises(DataError, match="the model has no label names; write class ids"):
        read_labelled(path, n_labels=3)
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"text": "a", "label": 2}\n{"text": "b", "label": "0"}\n')
    assert read_labelled(ids, n_labels=3).labels == (2, 0)


def test_open_base_names_the_first_module_whose_shape_differs(llama, tmp_path):
    _, adapter_dir, _ = llama
    adapter = load_adapter(adapter_dir)
    first = adapter.modules[0]  # file order
    wider = save_tiny_llama(tmp_path / "wider", hidden=48)
    expected = (f"module {first.name} differs: the adapter is {first.in_features} -> {first.out_features}, the model "
                f"{first.in_features * 3 // 2} -> {first.out_features * 3 // 2}")  # fmt: skip
    with pytest.raises(BaseModelError, match=re.escape(expected)) as err:
        open_base(adapter, wider)
    assert "\n" not in str(err.value)


def test_open_base_names_a_module_the_model_lacks(bert, llama):
    _, bert_adapter, _ = bert
    llama_base, _, _ = llama
    adapter = load_adapter(bert_adapter)
    expected = f"module {adapter.modules[0].name} of the adapter is not in this llama model"
    with pytest.raises(BaseModelError, match=re.escape(expected)):
        open_base(adapter, llama_base, task="classification")


def test_open_base_refuses_a_folder_without_weights(llama, tmp_path):
    _, adapter_dir, _ = llama
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(BaseModelError, match="no model weights"):
        open_base(load_adapter(adapter_dir), folder)
    with pytest.raises(BaseModelError, match="no config.json"):
        open_base(load_adapter(adapter_dir), tmp_path)


def test_check_memory_refuses_a_model_larger_than_free_memory(llama):
    base_dir, _, _ = llama
    info = inspect_base_model(base_dir)
    assert info.dtype == torch.float32 and info.n_bytes > 0
    check_memory(info, device=torch.device("cpu"), available=10 * info.n_bytes)
    with pytest.raises(BaseModelError, match=r"needs about .* GiB \(float32 weights\) but only .* GiB of memory"):
        check_memory(info, device=torch.device("cpu"), available=info.n_bytes // 2)


def test_base_model_loads_in_the_dtype_of_its_weights(tmp_path):
    base_dir = save_tiny_llama(tmp_path / "bf16", dtype=torch.bfloat16)
    adapter = load_adapter(save_adapter_of(base_dir, tmp_path / "adapter", task="causal-lm"))
    base = open_base(adapter)
    assert base.info.dtype == torch.bfloat16 and next(base.model.parameters()).dtype == torch.bfloat16


def test_cli_errors_are_one_line(llama, tmp_path, capsys):
    _, adapter_dir, _ = llama
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text here"}\n')
    assert evaluate_main([str(adapter_dir), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: no 'text' column") and err.count("\n") == 1
    short = tmp_path / "short.txt"
    short.write_text("the market rose")
    assert evaluate_main([str(adapter_dir), "--data", str(short)]) == 2
    assert "no document has 64 tokens" in capsys.readouterr().err


def test_evaluate_main_cli_has_the_command(bert, capsys):
    from analysis.__main__ import main

    base_dir, adapter_dir, labelled = bert
    argv = ["evaluate", str(adapter_dir), "--base", str(base_dir), "--data", str(labelled), "--energy", "0.9"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "uncompressed accuracy" in out and "energy 0.9" in out
