"""The compare command: matched budgets, evaluation as deployed, reuse by key, and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

from analysis.training import __main__ as cli
from analysis.training.results import read_report

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"
SOURCE, UNIFORM_R8 = "minilm-bbc-topic-lora-r32", "minilm-bbc-topic-lora-r8"


def recorded(run: str) -> dict:
    return json.loads((SAMPLES / run / "metrics.json").read_text())


def test_compare_cli_refuses_a_folder_without_classification_runs(tmp_path, capsys):
    (tmp_path / "lm").symlink_to(SAMPLES / "smollm2-135m-bbc-lora-r16")  # a causal-LM run: ignored
    code = cli.main(["compare", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "no finished classification run" in err and not (tmp_path / "comparison.json").exists()


def test_compare_command_matches_budgets_evaluates_and_reuses_by_key(tmp_path, capsys):
    """On bundled runs (validation split): exact counts, accuracies as recorded, a rerun evaluates nothing."""
    for name in (SOURCE, UNIFORM_R8, "smollm2-135m-bbc-lora-r16"):  # the causal-LM run is ignored
        (tmp_path / name).symlink_to(SAMPLES / name)
    argv = ["compare", str(tmp_path), "--split", "validation", "--fractions", "1,0.1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"| {UNIFORM_R8} | lora | 331,776 |" in out and "5 of 5 evaluations computed" in out
    report = read_report(tmp_path / "comparison.json")
    (task,) = report.tasks
    assert task.task == "bbc-topic" and task.source == SOURCE and task.split == "validation"
    assert task.source_evaluation.accuracy == recorded(SOURCE)["validation"]["accuracy"]
    assert [c.n_params for c in task.curve] == [1_327_104, 131_712] and task.curve[0].evaluation is not None
    (run,) = task.runs
    assert run.n_params == recorded(UNIFORM_R8)["n_lora_params"] == 331_776
    assert abs(run.params_gap) <= 768  # within one component of the widest module (384 + 384)
    assert run.evaluation.accuracy == recorded(UNIFORM_R8)["validation"]["accuracy"]
    assert math.isnan(run.spearman) and run.ranks == dict.fromkeys(run.para_ranks, 8)  # uniform: rho undefined
    assert sum(a for a, _ in run.by_type.values()) == sum(run.para_ranks.values())
    assert cli.main(argv) == 0
    assert "0 of 5 evaluations computed" in capsys.readouterr().out
    assert read_report(tmp_path / "comparison.json").evaluations() == report.evaluations()
