"""The bundled MiniLM runs in sample_adapters/: which runs they are, one call that regenerates them, their table.

Per task: fixed-rank LoRA at r=32 ("train high", PARA's input), fixed-rank LoRA at r=8, and ALoRA, LR-LoRA and
AdaLoRA at the budget of uniform rank 8 (the same LoRA parameter count as r=8). Every run uses the same
schedule for its task (learning rate 5e-4, batch 32, seed 0): 3 epochs of bbc-topic, 1 epoch of the 8x larger
tweet-sentiment. Each task also gets its reference points (majority class, frozen linear probe) in
`baselines.json`. No streamlit, no printing: progress goes through callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from analysis.training.baselines import task_baselines
from analysis.training.data import TASKS, TaskName, load_task
from analysis.training.lora import StepCallback, TrainConfig
from analysis.training.model import load_minilm
from analysis.training.records import list_runs
from analysis.training.runs import RunSpec, train_run

BASELINES_FILE = "baselines.json"
EPOCHS: dict[TaskName, float] = {"bbc-topic": 3.0, "tweet-sentiment": 1.0}


@dataclass(frozen=True)
class SampleRun:
    """One bundled run: method, task and budget (as a uniform rank)."""

    task: TaskName
    method: str
    budget_rank: int

    @property
    def name(self) -> str:
        """Folder name, e.g. `minilm-bbc-topic-alora-r8`."""
        return f"minilm-{self.task}-{self.method}-r{self.budget_rank}"


SAMPLE_RUNS: tuple[SampleRun, ...] = tuple(
    SampleRun(task, method, rank)
    for task in TASKS
    for method, rank in (("lora", 32), ("lora", 8), ("alora", 8), ("lr_lora", 8), ("adalora", 8))
)


def make_samples(
    out: str | Path,
    *,
    tasks: Sequence[TaskName] = TASKS,
    on_run: Callable[[str], StepCallback | None] | None = None,
) -> list[str]:
    """Train every bundled run of `tasks` into `out` (runs already there are kept) and write baselines.json.

    Args:
        out: the folder (sample_adapters/ to regenerate the bundled runs in place).
        tasks: which tasks to do.
        on_run: `on_run(name)` returns the progress callback for that run (or for the baselines' embedding).

    Returns:
        The names of the runs trained by this call (skipped ones are left out).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trained = []
    for run in SAMPLE_RUNS:
        if run.task not in tasks or (out / run.name).exists():
            continue
        config = TrainConfig(epochs=EPOCHS[run.task])
        train_run(RunSpec(run.method, run.task, config, budget_rank=run.budget_rank), out / run.name,
                  on_step=on_run(run.name) if on_run else None)  # fmt: skip
        trained.append(run.name)
    file = out / BASELINES_FILE
    baselines = json.loads(file.read_text()) if file.is_file() else {}
    for task_name in tasks:
        if task_name in baselines:
            continue
        task = load_task(task_name)
        model, tokenizer = load_minilm(len(task.labels))
        found = task_baselines(model, tokenizer, task, on_step=on_run(f"baselines {task_name}") if on_run else None)
        baselines[task_name] = asdict(found)
        file.write_text(json.dumps(baselines, indent=1, sort_keys=True) + "\n")
    return trained


def runs_table(folder: str | Path) -> str:
    """Markdown table of the finished classification runs under `folder`, with the tasks' baselines."""
    folder = Path(folder)
    rows = [r for r in list_runs(folder) if r.status == "finished" and r.metrics.get("task") in TASKS]
    lines = [
        "| run | method | task | LoRA params | ranks (min-max) | test accuracy | wall time |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r.metrics["task"], -r.metrics["n_lora_params"], r.metrics["method"])):
        m: dict[str, Any] = r.metrics
        ranks = f"{m['ranks']['min']}-{m['ranks']['max']}" if "ranks" in m else "-"
        lines.append(
            f"| {r.name} | {m['method']} | {m['task']} | {m['n_lora_params']:,} | {ranks} "
            f"| {m['test']['accuracy']:.2%} | {m['wall_time_s']:.0f} s |"
        )
    file = folder / BASELINES_FILE
    if file.is_file():
        for task, b in sorted(json.loads(file.read_text()).items()):
            lines.append(f"| majority class | - | {task} | 0 | - | {b['majority_test_accuracy']:.2%} | - |")
            lines.append(f"| frozen linear probe | - | {task} | 0 | - | {b['probe_test_accuracy']:.2%} | - |")
    return "\n".join(lines)
