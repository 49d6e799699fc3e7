"""Comparison results: JSON round trip, lookups by evaluation key, and the README's markdown tables."""

from __future__ import annotations

import json
import math

import pytest

from analysis.training.results import (
    ComparisonReport,
    CutResult,
    EvalKey,
    Evaluation,
    RunResult,
    TaskComparison,
    markdown_tables,
    read_report,
    write_report,
)


def ev(accuracy: float, n_params: int = 100) -> Evaluation:
    return Evaluation(accuracy, 1.0 - accuracy, 444, n_params)


def cut(position: int, n_params: int, accuracy: float | None, fraction: float | None = None) -> CutResult:
    return CutResult(position, 0, n_params, n_params / 1000, 0.9, None if accuracy is None else ev(accuracy), fraction)


def run(name: str, method: str, accuracy: float | None, spearman: float = 0.5) -> RunResult:
    return RunResult(
        run=name, method=method, fingerprint=f"fp-{name}", n_params=250,
        evaluation=None if accuracy is None else ev(accuracy), split_digest="d", para=cut(8, 256, 0.8),
        spearman=spearman, l1_distance=0.25,
        by_type={"attention.self.query": (3, 5)}, by_layer={"0": (3, 5)}, ranks={"m": 5}, para_ranks={"m": 3},
    )  # fmt: skip


def report() -> ComparisonReport:
    curve = (cut(30, 1000, 0.9, 1.0), cut(7, 250, 0.85, 0.25), cut(3, 100, 0.7, 0.1))
    task = TaskComparison(
        "bbc-topic", "test", "src", "fp-src", 1000, "d", ev(0.9, 1000), curve,
        (run("a", "alora", 0.82), run("u", "lora", None, spearman=math.nan)),
    )  # fmt: skip
    return ComparisonReport((task,), "python -m analysis.training compare", "cpu", 12.0)


def test_report_round_trips_through_json(tmp_path):
    path = write_report(report(), tmp_path / "comparison.json")
    back = read_report(path)
    assert back.tasks[0].runs[0] == report().tasks[0].runs[0]
    assert math.isnan(back.tasks[0].runs[1].spearman) and back.tasks[0].runs[1].evaluation is None
    assert back.tasks[0].curve == report().tasks[0].curve and back.command == report().command
    assert json.loads(path.read_text())["tasks"][0]["runs"][1]["spearman"] is None  # nan is written as null
    assert read_report(tmp_path / "missing.json") is None


def test_report_evaluations_are_keyed_by_fingerprint_cut_and_split():
    found = report().evaluations()
    assert found[EvalKey("fp-src", "bbc-topic", "test", "d")].accuracy == 0.9
    assert found[EvalKey("fp-src", "bbc-topic", "test", "d", 8, 0)].accuracy == 0.8  # the matched cut
    assert found[EvalKey("fp-src", "bbc-topic", "test", "d", 7, 0)].accuracy == 0.85  # curve points
    assert found[EvalKey("fp-src", "bbc-topic", "test", "d", 3, 0)].accuracy == 0.7
    assert found[EvalKey("fp-a", "bbc-topic", "test", "d")].accuracy == 0.82
    assert EvalKey("fp-u", "bbc-topic", "test", "d") not in found  # never evaluated
    assert EvalKey("fp-src", "bbc-topic", "validation", "d") not in found


def test_markdown_tables_list_every_run_and_the_claimed_reduction_points():
    text = markdown_tables(report())
    assert "| a | alora | 250 | 82.00% | 256 | 80.00% | -2.00 | 0.50 | 0.25 |" in text
    assert "| u | lora | 250 | – | 256 | 80.00% | – | n/a (uniform) | 0.25 |" in text
    assert "| 25% (−75%, PARA's lower claim) | 250 | 85.00% |" in text
    assert "| 10% (−90%, PARA's upper claim) | 100 | 70.00% |" in text


def test_read_report_rejects_other_schemas_and_bad_json(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"schema": 0, "tasks": []}))
    with pytest.raises(ValueError, match="schema 0 is not 2"):
        read_report(tmp_path / "old.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_report(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"schema": 1, "tasks": [{"task": "x"}]}))
    with pytest.raises(ValueError, match="malformed comparison file"):
        read_report(tmp_path / "partial.json")
