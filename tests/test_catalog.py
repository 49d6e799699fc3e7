"""Run discovery: classification runs by task (by metrics.json, not names), PARA's source, an adapter's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.training.catalog import classification_runs, para_source, run_of_adapter, split_digest
from analysis.training.records import read_run

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"


def make_run(folder: Path, method: str, task: str, *, r: int = 8, status: str = "finished", **metrics) -> Path:
    (folder / "adapter").mkdir(parents=True)
    (folder / "status").write_text(status + "\n")
    body = {"method": method, "task": task, "config": {"r": r}, "n_lora_params": r * 100}
    body |= metrics if metrics else {"test": {"accuracy": 0.5, "loss": 1.0}}
    (folder / "metrics.json").write_text(json.dumps(body))
    (folder / "splits.json").write_text(json.dumps({"test": ["a", "b"], "validation": ["c"]}))
    return folder


def test_classification_runs_group_by_task_and_skip_lm_and_unfinished_runs(tmp_path):
    make_run(tmp_path / "zz-named-like-anything", "lora", "bbc-topic", r=32)
    make_run(tmp_path / "b", "alora", "bbc-topic")
    make_run(tmp_path / "c", "lora", "tweet-sentiment")
    make_run(tmp_path / "lm", "lora", "bbc-lm", held_out={"perplexity": 41.2})  # causal LM: no accuracy
    make_run(tmp_path / "failed", "lr_lora", "bbc-topic", status="failed")
    runs = classification_runs(tmp_path)
    assert list(runs) == ["bbc-topic", "tweet-sentiment"]
    assert [r.name for r in runs["bbc-topic"]] == ["b", "zz-named-like-anything"]
    assert classification_runs(tmp_path / "missing") == {}


def test_para_source_is_the_fixed_rank_run_of_highest_rank(tmp_path):
    runs = [
        read_run(make_run(tmp_path / "r8", "lora", "bbc-topic", r=8)),
        read_run(make_run(tmp_path / "r32", "lora", "bbc-topic", r=32)),
        read_run(make_run(tmp_path / "alora", "alora", "bbc-topic", r=64)),  # adaptive: never the source
    ]
    assert para_source(runs).name == "r32"
    assert para_source(runs[2:]) is None


def test_run_of_adapter_finds_the_task_only_for_run_adapters(tmp_path):
    bundled = run_of_adapter(SAMPLES / "minilm-bbc-topic-lora-r32" / "adapter")
    assert bundled is not None and bundled.metrics["task"] == "bbc-topic"
    run = make_run(tmp_path / "run", "lora", "tweet-sentiment")
    assert run_of_adapter(run / "adapter").name == "run"
    assert run_of_adapter(run) is None  # the run folder itself is not an adapter folder
    assert run_of_adapter(make_run(tmp_path / "lm", "lora", "bbc-lm", held_out={}) / "adapter") is None
    assert run_of_adapter(tmp_path / "upload" / "adapter") is None


def test_split_digest_changes_with_the_examples(tmp_path):
    a = make_run(tmp_path / "a", "lora", "bbc-topic")
    b = make_run(tmp_path / "b", "lora", "bbc-topic")
    assert split_digest(a, "test") == split_digest(b, "test") != split_digest(a, "validation")
    (b / "splits.json").write_text(json.dumps({"test": ["a", "x"]}))
    assert split_digest(a, "test") != split_digest(b, "test")
    assert split_digest(tmp_path, "test") == ""  # no splits.json: the task's default split
    with pytest.raises(ValueError, match="no 'validation' split"):
        split_digest(b, "validation")
