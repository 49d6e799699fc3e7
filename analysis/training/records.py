"""Reading training run records (no training code imported: the app lists runs without loading torch models)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """A run folder: status, and metrics when finished."""

    path: Path
    status: str
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> str | None:
        """The task trained on, e.g. "bbc-topic" (classification) or "bbc-lm" (causal LM); None if unknown."""
        return self.metrics.get("task")

    @property
    def is_causal_lm(self) -> bool:
        """A causal-LM run: its metrics hold `held_out` perplexity instead of `test` accuracy."""
        return self.metrics.get("objective") == "causal-lm"


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    status_file = path / "status"
    status = status_file.read_text().strip() if status_file.is_file() else "unknown"
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if status == "finished" and metrics_file.is_file() else {}
    return RunRecord(path, status, metrics)


def list_runs(folder: str | Path) -> list[RunRecord]:
    """Every run record (a folder with a `status` file) directly under `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [read_run(p) for p in sorted(folder.iterdir()) if (p / "status").is_file() and not p.name.startswith(".")]
