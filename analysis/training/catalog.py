"""Finding runs to compare (no torch here): classification runs by task, PARA's source, an adapter's run.

Runs are found by their metrics.json (method, task, status finished), never by folder name. Causal-LM runs
(task "bbc-lm", perplexity instead of accuracy) are not classification runs and are skipped. A split digest
says exactly which examples an evaluation used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from analysis.training.data import TASKS
from analysis.training.records import ADAPTER_DIR, RunRecord, list_runs, read_run


def is_classification_run(run: RunRecord) -> bool:
    """A finished run on a classification task, with test accuracy (causal-LM runs report perplexity instead)."""
    test = run.metrics.get("test")
    is_finished = run.status == "finished" and run.metrics.get("task") in TASKS
    return is_finished and isinstance(test, dict) and "accuracy" in test


def classification_runs(folder: str | Path) -> dict[str, list[RunRecord]]:
    """Finished classification runs under `folder` by task (discovered by metrics.json, not by folder name).

    Returns:
        task -> its runs sorted by name; tasks in sorted order.
    """
    by_task: dict[str, list[RunRecord]] = {}
    for run in list_runs(folder):
        if is_classification_run(run):
            by_task.setdefault(run.metrics["task"], []).append(run)
    return dict(sorted(by_task.items()))


def fixed_rank(run: RunRecord) -> int | None:
    """The rank of a fixed-rank ("lora") run, None for adaptive methods."""
    if run.metrics.get("method") != "lora":
        return None
    return int(run.metrics.get("config", {}).get("r") or run.metrics.get("budget", {}).get("rank") or 0)


def para_source(runs: Sequence[RunRecord]) -> RunRecord | None:
    """The fixed-rank run with the highest rank (ties: more LoRA parameters, then name): PARA's input."""
    fixed = [r for r in runs if fixed_rank(r) is not None]
    if not fixed:
        return None
    return max(fixed, key=lambda r: (fixed_rank(r), r.metrics.get("n_lora_params", 0), r.name))


def run_of_adapter(adapter_source: str | Path) -> RunRecord | None:
    """The classification run whose `adapter/` folder is `adapter_source`, or None (uploads, plain folders).

    Example: `sample_adapters/minilm-bbc-topic-lora-r32/adapter` -> the run `minilm-bbc-topic-lora-r32`.
    """
    path = Path(adapter_source)
    if path.name != ADAPTER_DIR or not (path.parent / "metrics.json").is_file():
        return None
    run = read_run(path.parent)
    return run if is_classification_run(run) else None


def split_digest(run_path: str | Path, split: str) -> str:
    """sha256 of the example ids of `split` saved with a run (splits.json); "" when the run saved none.

    Two evaluations on the same digest used exactly the same examples.
    """
    file = Path(run_path) / "splits.json"
    if not file.is_file():
        return ""
    ids = json.loads(file.read_text()).get(split)
    if ids is None:
        raise ValueError(f"{file}: no {split!r} split; use test or validation")
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()
