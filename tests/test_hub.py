"""Adapters and base models by Hugging Face Hub id, from a cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis.adapters import load_adapter
from analysis.evaluation import BaseModelError, open_base
from analysis.evaluation.__main__ import main as evaluate_main
from analysis.hub import HubError, is_hub_id, parse_hub_id, resolve_hub
from tests.own_models import save_adapter_of, save_tiny_llama, write_text_jsonl

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, source: Path) -> Path:
    """Copy `source`'s files into `cache` as huggingface_hub stores a download: blobs, a snapshot, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i:04d}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def cached_llama(tmp_path, hub_cache):
    """org/tiny-llama and its adapter org/tiny-llama-lora (naming its base by Hub id) in the cache."""
    base = save_tiny_llama(tmp_path / "base")
    adapter = save_adapter_of(base, tmp_path / "adapter", task="causal-lm")
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text().replace(str(base), "org/tiny-llama"))
    cache_repo(hub_cache, "org/tiny-llama", base)
    return cache_repo(hub_cache, "org/tiny-llama-lora", adapter)


def test_parse_hub_id_reads_ids_and_leaves_paths():
    assert parse_hub_id("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    assert parse_hub_id("hf://org/name@v1.0") == ("org/name", "v1.0")
    for path in ("./runs/a", "/abs/path", "a/b/c", "name", "../x", "org/.."):
        assert parse_hub_id(path) is None, path
    assert not is_hub_id("tests/builders.py")  # an existing path is a path


def test_resolve_hub_finds_the_cached_snapshot_offline(cached_llama):
    assert resolve_hub("org/tiny-llama-lora", kind="adapter") == cached_llama
    adapter = load_adapter(resolve_hub("org/tiny-llama-lora", kind="adapter"))
    assert adapter.base_model == "org/tiny-llama" and len(adapter.modules) == 14


def test_resolve_hub_not_cached_while_offline_is_one_line(hub_cache):
    with pytest.raises(HubError) as err:
        resolve_hub("org/missing", download=True)
    message = str(err.value)
    assert message.startswith(f"org/missing: not in the Hugging Face cache ({hub_cache}) and HF_HUB_OFFLINE is set")
    assert "\n" not in message


def test_resolve_hub_asks_for_a_download_when_online_and_not_cached(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with pytest.raises(HubError, match=r"org/missing: not in the Hugging Face cache .*; ask for a download"):
        resolve_hub("org/missing")  # no download unless asked: nothing reaches the network


def test_open_base_finds_the_adapters_base_in_the_cache(cached_llama):
    base = open_base(load_adapter(cached_llama))
    assert base.task == "causal-lm" and base.info.folder.parent.parent.name == "models--org--tiny-llama"


def test_open_base_says_when_the_base_is_not_cached(cached_llama, hub_cache):
    shutil.rmtree(hub_cache / "models--org--tiny-llama")
    with pytest.raises(BaseModelError, match=r"org/tiny-llama: not in the Hugging Face cache .*; or give the base "):
        open_base(load_adapter(cached_llama))


def test_evaluate_cli_takes_hub_ids(cached_llama, tmp_path, capsys):
    text = write_text_jsonl(tmp_path / "text.jsonl")
    argv = ["org/tiny-llama-lora", "--data", str(text), "--seq-len", "16", "--max-chunks", "4"]
    assert evaluate_main(argv) == 0
    out = capsys.readouterr().out
    assert "models--org--tiny-llama/snapshots" in out and "uncompressed perplexity" in out
    assert evaluate_main(["org/other-lora", "--data", str(text)]) == 2
    assert capsys.readouterr().err.startswith("error: org/other-lora: not in the Hugging Face cache")


def test_home_loads_an_adapter_by_hub_id_from_the_cache(cached_llama, home):
    from tests.test_app import metric

    home.radio[0].set_value("Hugging Face Hub").run()
    assert "offline: HF_HUB_OFFLINE is set" in home.caption[0].value
    home.text_input(key="hub_id").input("org/tiny-llama-lora")
    next(b for b in home.button if b.label == "Load").click().run()
    assert not home.exception and not home.error
    assert metric(home, "Modules") == "14" and "from the Hugging Face cache" in home.success[0].value
    home.text_input(key="hub_id").input("org/not-there")
    next(b for b in home.button if b.label == "Load").click().run()
    assert home.error[0].value.startswith("org/not-there: not in the Hugging Face cache")
    assert metric(home, "Modules") == "14"  # the loaded adapter stays


def test_info_and_compress_take_a_cached_hub_id(cached_llama, tmp_path, capsys):
    from analysis.__main__ import main

    assert main(["info", "org/tiny-llama-lora"]) == 0
    assert f"source       {cached_llama}" in capsys.readouterr().out
    assert main(["compress", "org/tiny-llama-lora", "--energy", "0.9", "--out", str(tmp_path / "cut")]) == 0
    assert load_adapter(tmp_path / "cut").n_params < load_adapter(cached_llama).n_params
    assert main(["info", "org/not-cached"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: org/not-cached: no such file or folder, nor a Hub id in the cache"
    )
