"""Over seeds: mean ± sd per method and PARA − method gaps with paired intervals, from hand-made predictions."""

from __future__ import annotations

import json

import pytest

from analysis.training.results import (
    ComparisonReport,
    CutResult,
    Evaluation,
    RunResult,
    TaskComparison,
    read_report,
    write_report,
)
from analysis.training.summary import group_name, summarize, summary_table, summary_to_json

TARGETS = tuple([0, 1] * 100)  # 200 examples


def ev(n_right: int) -> Evaluation:
    """Right on the first n_right examples, wrong on the rest."""
    predictions = tuple(t if i < n_right else 1 - t for i, t in enumerate(TARGETS))
    return Evaluation(n_right / 200, 0.5, 200, 100, predictions, TARGETS)


def cut(n_right: int) -> CutResult:
    return CutResult(5, 0, 256, 0.25, 0.9, ev(n_right), None)


def run(seed: int, run_right: int, para_right: int, self_right: int | None = None) -> RunResult:
    return RunResult(
        run=f"minilm-bbc-topic-alora-r8-s{seed}", method="alora", fingerprint=f"fp{seed}", n_params=250,
        evaluation=ev(run_right), split_digest="d", para=cut(para_right), spearman=0.1, l1_distance=0.2,
        by_type={}, by_layer={}, ranks={}, para_ranks={}, seed=seed, n_steps=200, wall_time_s=10.0, lr=5e-4,
        self_cut=None if self_right is None else cut(self_right),
    )  # fmt: skip


def report(pairs) -> ComparisonReport:
    tasks = tuple(
        TaskComparison("bbc-topic", "test", f"src-s{s}", "fps", 1000, "d", ev(190), (), (run(s, *p),), s, 200, 20.0)
        for s, p in enumerate(pairs)
    )
    return ComparisonReport(tasks)


def test_seed_groups_pair_seed_by_seed_and_pool():
    rows = summarize(report([(150, 170, 140), (160, 170, 160), (170, 170, 150)]))
    matched, self_cut = rows
    assert group_name("minilm-bbc-topic-alora-r8-s2") == "minilm-bbc-topic-alora-r8"
    assert matched.kind == "matched" and matched.seeds == (0, 1, 2)
    assert matched.accuracy == pytest.approx((0.8, 0.05)) and matched.para_accuracy == pytest.approx((0.85, 0.0))
    assert matched.gap.difference == pytest.approx(0.05)  # (20 + 10 + 0) / 600
    assert matched.gap.mcnemar.b == 30 and matched.gap.mcnemar.c == 0 and matched.significant
    assert self_cut.kind == "self" and self_cut.gap.difference == pytest.approx(-30 / 600)  # -10, 0, -20
    table = summary_table(rows, "bbc-topic")
    assert "80.00% ± 5.00" in table and "+5.00 [" in table and "| yes |" in table
    assert "PARA applied to minilm-bbc-topic-alora-r8 (50%)" in table


def test_no_gap_shown_without_predictions_or_for_equal_runs(tmp_path):
    rows = summarize(report([(150, 150), (160, 160)]))
    assert rows[0].gap.difference == 0 and not rows[0].significant
    assert "no difference shown" in summary_table(rows, "bbc-topic")
    path = write_report(report([(150, 150)]), tmp_path / "c.json", extra={"summary": summary_to_json(rows)})
    back = read_report(path)
    assert back.tasks[0].runs[0].evaluation.correct() == ev(150).correct() and back.tasks[0].seed == 0
    old = ComparisonReport((TaskComparison("t", "test", "s", "f", 1, "d", None, (), (run(0, 150, 150),)),))
    stripped = old.tasks[0].runs[0]
    no_predictions = Evaluation(0.75, 0.5, 200, 100)
    bare = RunResult(**{**stripped.__dict__, "evaluation": no_predictions})
    assert (
        summarize(ComparisonReport((TaskComparison("t", "test", "s", "f", 1, "d", None, (), (bare,)),)))[0].gap is None
    )


def test_compare_page_seed_summary_shows_error_bars_and_which_gaps_are_shown():
    from streamlit.testing.v1 import AppTest

    def page():
        from pages.shared.seed_widgets import show_seed_summary
        from tests.test_summary import report

        show_seed_summary(report([(150, 170, 140), (160, 170, 160), (170, 170, 150)]), "bbc-topic", "test")

    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["gap"]) == ["shown", "shown"] and list(table["accuracy"]) == ["80.00 ± 5.00"] * 2
    assert table["95% interval"][0].startswith("[+")
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert all(trace["error_x"]["visible"] for trace in figure["data"])  # the error bars
    assert figure["data"][0]["error_x"]["array"] == pytest.approx([5.0, 5.0])
