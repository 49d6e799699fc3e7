"""The compare command: matched budgets, evaluation as deployed, reuse by key, and its CLI."""

from __future__ import annotations

from pathlib import Path

from analysis.training import __main__ as cli

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"


def test_compare_cli_refuses_a_folder_without_classification_runs(tmp_path, capsys):
    (tmp_path / "lm").symlink_to(SAMPLES / "smollm2-135m-bbc-lora-r16")  # a causal-LM run: ignored
    code = cli.main(["compare", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "no finished classification run" in err and not (tmp_path / "comparison.json").exists()
