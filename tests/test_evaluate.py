"""Task evaluation of a bundled run and of PARA cuts of it (validation split: 223 headlines, seconds on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.adapters import load_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra
from analysis.training.evaluate import evaluate_adapter, evaluate_cut

RUN = Path(__file__).resolve().parents[1] / "sample_adapters" / "minilm-bbc-topic-lora-r32"


def recorded(split: str) -> dict:
    return json.loads((RUN / "metrics.json").read_text())[split]


def test_evaluate_adapter_twice_gives_the_same_accuracy_as_recorded():
    first = evaluate_adapter(RUN, "bbc-topic", split="validation")
    second = evaluate_adapter(RUN / "adapter", "bbc-topic", split="validation", run=RUN)
    assert first == second  # deterministic: same adapter, same examples, same numbers
    assert first.accuracy == recorded("validation")["accuracy"]  # as measured when the run was written
    assert first.loss == pytest.approx(recorded("validation")["loss"], rel=1e-5)
    assert first.n_examples == len(json.loads((RUN / "splits.json").read_text())["validation"]) == 223
    assert first.n_lora_params == 1_327_104


def test_evaluate_cut_at_full_budget_keeps_accuracy_and_reports_progress():
    adapter = load_adapter(RUN)
    index = para_index(adapter_spectra(adapter))
    steps: list[tuple[int, int]] = []
    full = evaluate_cut(
        adapter, allocate_ranks(index, 1.0, "params_fraction"), "bbc-topic", run=RUN, split="validation",
        on_step=lambda step, total, loss: steps.append((step, total)),
    )  # fmt: skip
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 223 examples in batches of 64
    assert full.n_lora_params == 1_327_104
    assert full.loss == pytest.approx(recorded("validation")["loss"], rel=1e-3)  # re-factored, same update
    assert abs(full.accuracy - recorded("validation")["accuracy"]) <= 1 / 223
    small = evaluate_cut(
        adapter, allocate_ranks(index, 0.05, "params_fraction"), "bbc-topic", run=RUN, split="validation"
    )
    assert small.n_lora_params <= 0.05 * 1_327_104 and small.loss != full.loss
