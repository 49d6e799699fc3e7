"""Compare page and the PARA page's evaluation button, through AppTest on the bundled runs.

The Compare page renders from the bundled comparison.json (no live evaluation); the PARA page's button runs
one real evaluation on the validation split (223 headlines).
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.training.results import read_report

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"


def test_compare_page_renders_the_bundled_comparison_without_evaluating(home):
    report = read_report(SAMPLES / "comparison.json")
    home.switch_page("pages/3_Compare.py").run()
    for task in report.tasks:
        home.selectbox(key="compare_task").set_value(task.task).run()
        assert not home.exception, task.task
        assert not any(b.label.startswith("Evaluate") for b in home.button)  # every result is current
        assert any("current for these adapters" in c.value for c in home.caption)
        table = home.dataframe[0].value
        assert list(table["run"]) == [r.run for r in task.runs] and len(table) >= 3  # no LR-LoRA tweets run yet
        assert table["accuracy"].notna().all() and table["PARA accuracy"].notna().all()
        assert list(table["PARA params (matched)"]) == [r.para.n_params for r in task.runs]
        # accuracy curve, then per run: rank maps, type totals, layer totals (LR-LoRA: + its stable-rank map);
        # then the rank scatter
        n_dense = sum(r.method == "lr_lora" for r in task.runs)
        charts = home.get("plotly_chart")
        assert len(charts) == 1 + 3 * len(task.runs) + n_dense + 1
        titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
        assert sum("stable rank of each module's dense update" in t for t in titles) == n_dense
        assert len(home.tabs) == len(task.runs)


def test_para_page_evaluates_the_current_cut_of_a_bundled_run(home):
    recorded = json.loads((SAMPLES / "minilm-bbc-topic-lora-r32" / "metrics.json").read_text())["validation"]
    home.switch_page("pages/2_PARA.py").run()
    home.radio(key="para_eval_split").set_value("validation").run()
    next(b for b in home.button if b.label == "Evaluate this compression").click().run()
    assert not home.exception
    metrics = {m.label: m.value for m in home.metric}
    assert metrics["Uncompressed"] == f"{recorded['accuracy']:.2%}"
    assert metrics["Validation accuracy at this cut"].endswith("%")
    home.run()  # a rerun reads the result from the cache: no button, same numbers
    assert not any(b.label == "Evaluate this compression" for b in home.button)
    again = {m.label: m.value for m in home.metric}
    assert again["Validation accuracy at this cut"] == metrics["Validation accuracy at this cut"]


def test_compare_page_warns_where_the_source_cannot_reach_a_runs_budget(home):
    home.switch_page("pages/3_Compare.py").run()
    home.selectbox(key="compare_task").set_value("bbc-topic").run()
    source = next(s for s in home.selectbox if s.label == "Fixed-rank run to cut with PARA")
    source.set_value("minilm-bbc-topic-lora-r8").run()  # rank 8: a quarter of the r=32 run's parameters
    assert not home.exception
    (warning,) = [w.value for w in home.warning if "cannot reach the budget" in w.value]
    assert "minilm-bbc-topic-lora-r32 (1,327,104 LoRA parameters; PARA at most 331,776)" in warning


def test_compare_table_shows_a_dash_not_none_and_the_accuracy_axis_fits_the_runs(home):
    home.switch_page("pages/3_Compare.py").run()
    home.selectbox(key="compare_task").set_value("bbc-topic").run()
    table = home.dataframe[0].value
    uniform = table[table["method"] == "LoRA (fixed rank)"]
    assert list(uniform["Spearman"]) == ["–"]  # undefined against a uniform allocation: a dash, not None
    assert table["LoRA params"].dtype.kind == "i" and table["accuracy"].dtype.kind == "f"  # numbers still sort
    (curve,) = [c for c in home.get("plotly_chart") if "Accuracy against parameter budget" in c.proto.spec]
    low, high = json.loads(curve.proto.spec)["layout"]["yaxis"]["range"]
    assert 80 < low < 86 and 90 < high < 93  # the runs lie at 84.9-89.9%: the axis is zoomed to them
