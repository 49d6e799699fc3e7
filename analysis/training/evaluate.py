"""Task accuracy of any adapter (a run, an export, a PARA cut) on a task's held-out split.

The split is the one saved with the run (`splits.json`) when there is one, else the task's fixed seeded
split. PARA cuts are evaluated by exporting to a temp folder and loading it with peft, exactly as a user
would deploy them. No streamlit, no printing: progress goes through `on_step`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from analysis.adapters import LoraAdapter, load_adapter
from analysis.export import compress_adapter, save_adapter
from analysis.para import RankAllocation, allocate_ranks, para_index
from analysis.spectra import adapter_spectra
from analysis.training.data import Example, TaskData, TaskName, load_task
from analysis.training.deploy import adapted_model, is_adapter_folder
from analysis.training.lora import StepCallback, predict
from analysis.training.model import load_minilm
from analysis.training.records import ADAPTER_DIR
from analysis.training.results import Evaluation

__all__ = ["Evaluation", "evaluate_adapter", "evaluate_cut", "para_accuracy_curve", "task_for_run"]


def _adapter_folder(path: Path) -> Path:
    return path / ADAPTER_DIR if is_adapter_folder(path / ADAPTER_DIR) else path


def task_for_run(run: str | Path) -> TaskName:
    """The task a run record was trained on (from its metrics.json).

    Raises:
        ValueError: when the folder has no metrics.json.
    """
    metrics = Path(run) / "metrics.json"
    if not metrics.is_file():
        raise ValueError(f"{run}: no metrics.json, so the task is unknown; pass --task")
    return json.loads(metrics.read_text())["task"]


def split_examples(task: TaskData, run: Path | None, split: str) -> tuple[Example, ...]:
    """The examples of `split`: those saved in the run's splits.json when there is one, else the task's."""
    examples = task.split(split)
    splits_file = run / "splits.json" if run is not None else None
    if splits_file is not None and splits_file.is_file():
        by_id = {e.id: e for part in ("train", "validation", "test") for e in task.split(part)}
        examples = tuple(by_id[i] for i in json.loads(splits_file.read_text())[split])
    return examples


def evaluate_adapter(
    adapter_path: str | Path,
    task_name: TaskName,
    *,
    split: str = "test",
    run: str | Path | None = None,
    on_step: StepCallback | None = None,
) -> Evaluation:
    """Accuracy and loss of the adapter at `adapter_path` on `split` (deterministic: same adapter, same result).

    Args:
        adapter_path: a PEFT folder or LR-LoRA record (or a run folder holding `adapter/`) with the head.
        task_name: the task; its labels must match the head.
        split: "test" or "validation".
        run: the run whose saved split to use (defaults to `adapter_path` if it is a run folder).
        on_step: progress callback, once per batch of 64 examples.

    Returns:
        Accuracy, mean cross-entropy, the number of examples and the adapter's LoRA parameter count.
    """
    path = Path(adapter_path)
    folder = _adapter_folder(path)
    run_dir = Path(run) if run is not None else (path if folder != path else None)
    task = load_task(task_name)
    examples = split_examples(task, run_dir, split)
    model, tokenizer = load_minilm(len(task.labels))
    accuracy, loss, predictions = predict(adapted_model(model, folder), tokenizer, examples, on_step=on_step)
    targets = tuple(e.label for e in examples)
    return Evaluation(accuracy, loss, len(examples), load_adapter(folder).n_params, tuple(predictions), targets)


def evaluate_cut(
    adapter: LoraAdapter,
    allocation: RankAllocation,
    task_name: TaskName,
    *,
    run: str | Path,
    split: str = "test",
    on_step: StepCallback | None = None,
) -> Evaluation:
    """Accuracy of a PARA cut as deployed: compress, write a PEFT folder, load it with peft, evaluate.

    Args:
        adapter: the adapter the cut is of (a run's adapter: modules_to_save carries the head).
        allocation: the cut (from `allocate_ranks`, `match_budget` or `allocate_at`).
        task_name: the run's task.
        run: the run whose saved split to use.
        split: "test" or "validation".
        on_step: progress callback.
    """
    with tempfile.TemporaryDirectory(prefix="para-eval-") as tmp:
        compressed = compress_adapter(adapter, allocation, format="peft")  # read back by peft
        out = save_adapter(compressed, Path(tmp) / "cut")
        return evaluate_adapter(out, task_name, split=split, run=run, on_step=on_step)


def para_accuracy_curve(
    run: str | Path, fractions: Sequence[float], *, split: str = "test", on_step: StepCallback | None = None
) -> list[tuple[float, Evaluation]]:
    """Accuracy of PARA cuts of a run's adapter at parameter budgets `fractions` (of its LoRA params)."""
    run = Path(run)
    task = task_for_run(run)
    adapter = load_adapter(_adapter_folder(run))
    index = para_index(adapter_spectra(adapter))
    cuts = [(f, allocate_ranks(index, f, "params_fraction")) for f in fractions]
    return [(f, evaluate_cut(adapter, cut, task, run=run, split=split, on_step=on_step)) for f, cut in cuts]
