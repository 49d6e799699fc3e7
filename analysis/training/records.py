"""Training run records: writing one atomically, and reading them (no torch here: the app lists runs cheaply).

A run folder holds `adapter/` (a PEFT folder), metrics.json, allocation.json, splits.json, log.txt and a
`status` file. `writing_run` builds it in a temp folder beside the target and renames it into place only when
complete, so a crash never leaves a finished-looking adapter; a failed run becomes `<out>.failed/` with status
"failed", its log and no adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"


@dataclass
class RunWriter:
    """The temp folder a run is written into, and its log."""

    folder: Path
    on_log: Callable[[str], None] | None = None
    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        """Append a timestamped line to log.txt (rewritten each time, so a live reader sees whole lines)."""
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        (self.folder / "log.txt").write_text("\n".join(self.lines) + "\n")
        if self.on_log is not None:
            self.on_log(line)

    def write_json(self, name: str, content: Any, *, indent: int | None = 1) -> None:
        (self.folder / name).write_text(json.dumps(content, indent=indent))

    def discard(self) -> None:
        """Remove the temp folder (a refused run, not a failed one: nothing is left behind)."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def writing_run(out: str | Path, *, on_log: Callable[[str], None] | None = None) -> Iterator[RunWriter]:
    """Write a run record atomically to `out` (which must not exist).

    Args:
        out: the run folder to create.
        on_log: also receives every log line.

    Yields:
        A writer whose `folder` (a temp folder beside `out`) receives the files; status is "running" meanwhile.

    Raises:
        ValueError: `out` already exists (nothing is written).
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out}: already exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)), on_log)
    try:
        (writer.folder / "status").write_text("running\n")
        yield writer
        (writer.folder / "status").write_text("finished\n")
        writer.folder.rename(out)
    except BaseException as err:
        if not writer.folder.exists():  # discarded: a refused run leaves nothing
            raise
        writer.log(f"failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        (writer.folder / "status").write_text("failed\n")
        shutil.rmtree(writer.folder / ADAPTER_DIR, ignore_errors=True)
        failed = out.with_name(out.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        writer.folder.rename(failed)
        raise


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
