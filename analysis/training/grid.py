"""The comparison grid: every registered method x task x 3 training seeds, one resumable call.

What runs (chosen to fit about 2.5 hours of a quiet 2-core CPU; measured times are in the README):
- per task, fixed-rank LoRA at r=32 (PARA's source) and r=8, and every other registered method at the budget
  of uniform rank 8, through the method registry (so LR-LoRA is whatever `METHODS["lr_lora"]` is);
- the same schedule for all: 4 epochs of at most 1,600 training examples (batch 32: 196-200 steps), AdamW
  with 6 % linear warm-up and linear decay; validation cut to 400 examples; the whole test split;
- one data split (split seed 0) for every run, and training seeds 0, 1, 2;
- each method's learning rate picked from LR_GRID on bbc-topic's validation split with seed 0 (best
  accuracy, then lower loss) and used for both tasks and every seed: the same grid for every method;
- adapters stored in bfloat16 (the head in float32), so the bundled folder stays small; accuracy is measured
  on the stored adapter.
Runs already finished under `out` are kept; a run killed half-way leaves only a hidden partial folder, which
the next call removes and trains again. No streamlit, no printing: progress goes through callbacks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.training.data import TASKS, TaskName
from analysis.training.lora import StepCallback, TrainConfig
from analysis.training.methods import METHODS
from analysis.training.records import ADAPTER_DIR, read_run
from analysis.training.runs import RunSpec, train_run

LR_GRID = (2e-4, 5e-4, 1e-3)
"""Learning rates tried for every method (seed 0, bbc-topic validation)."""
LR_TASK: TaskName = "bbc-topic"
SEEDS = (0, 1, 2)
EPOCHS = 4.0
TRAIN_LIMIT = 1600
VALIDATION_LIMIT = 400
SPLIT_SEED = 0
LAST_METHODS = ("lr_lora",)
"""Trained after every other method (its implementation is the newest)."""
SEARCH_DIR = "lr-search"
SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class GridRun:
    task: TaskName
    method: str
    rank: int
    seed: int
    lr: float | None = None
    """Set on learning-rate search runs (their name carries it)."""

    @property
    def method_key(self) -> str:
        return f"{self.method}-r{self.rank}"

    @property
    def name(self) -> str:
        lr = f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"minilm-{self.task}-{self.method}-r{self.rank}{lr}-s{self.seed}"


def grid_methods(methods: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(method, budget rank) in training order: lora r32 and r8, the adaptive methods at 8, LAST_METHODS last."""
    chosen = [m for m in METHODS if methods is None or m in methods]
    pairs = [("lora", 32), ("lora", 8)] if "lora" in chosen else []
    pairs += [(m, 8) for m in chosen if m != "lora" and m not in LAST_METHODS]
    return pairs + [(m, 8) for m in chosen if m in LAST_METHODS]


def spec_of(run: GridRun, lr: float) -> RunSpec:
    config = TrainConfig(epochs=EPOCHS, lr=lr, seed=run.seed)
    return RunSpec(
        run.method, run.task, config, budget_rank=run.rank, split_seed=SPLIT_SEED, train_limit=TRAIN_LIMIT,
        validation_limit=VALIDATION_LIMIT, adapter_dtype="bfloat16",
    )  # fmt: skip


def _finished(path: Path) -> bool:
    return read_run(path).status == "finished" and (path / ADAPTER_DIR / "adapter_config.json").is_file()


def _clean_partials(folder: Path) -> None:
    """Remove what a killed run left: hidden `.<name>.partial-*` folders and `<name>.failed` records."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and ((p.name.startswith(".") and ".partial-" in p.name) or p.name.endswith(".failed")):
                shutil.rmtree(p, ignore_errors=True)


def read_selection(out: Path) -> dict:
    file = out / SEARCH_DIR / SELECTION_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _write_selection(out: Path, selection: dict) -> None:
    file = out / SEARCH_DIR / SELECTION_FILE
    tmp = file.with_name(f".{file.name}.partial")
    tmp.write_text(json.dumps(selection, indent=1, sort_keys=True) + "\n")
    tmp.replace(file)


def pick_lr(results: dict[float, dict]) -> float:
    """The learning rate with the best validation accuracy (ties: lower validation loss, then smaller lr)."""
    return min(results, key=lambda lr: (-results[lr]["accuracy"], results[lr]["loss"], lr))


def run_grid(
    out: str | Path,
    *,
    tasks: Sequence[TaskName] = TASKS,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = SEEDS,
    lr_grid: Sequence[float] = LR_GRID,
    on_run: Callable[[str], StepCallback | None] | None = None,
    on_done: Callable[[str, float], None] | None = None,
    on_fail: Callable[[str, Exception], None] | None = None,
    train: Callable[..., dict] = train_run,
) -> list[str]:
    """Train every grid run that `out` does not hold yet; returns the names trained by this call.

    Args:
        out: the grid folder (final runs in it, learning-rate search runs in `lr-search/`).
        tasks, methods, seeds: a part of the grid (default all).
        lr_grid: learning rates to try.
        on_run: `on_run(name)` gives the progress callback of that run.
        on_done: `on_done(name, seconds)` after each run.
        on_fail: `on_fail(name, error)` when a run fails (its `.failed` record stays until the next call); the
            grid goes on without it. Without a callback the error is raised.
        train: trains one run (`train_run`; tests pass one with a tiny model).
    """
    out = Path(out)
    search = out / SEARCH_DIR
    search.mkdir(parents=True, exist_ok=True)
    _clean_partials(out)
    _clean_partials(search)
    trained: list[str] = []

    def do(run: GridRun, folder: Path, lr: float) -> bool:
        """Train the run unless it is there; False when it failed."""
        if _finished(folder):
            return True
        start = time.perf_counter()
        try:
            train(spec_of(run, lr), folder, on_step=on_run(run.name) if on_run else None)
        except Exception as err:
            if on_fail is None:
                raise
            on_fail(run.name, err)
            return False
        trained.append(run.name)
        if on_done is not None:
            on_done(run.name, time.perf_counter() - start)
        return True

    def chosen_lr(method: str, rank: int) -> float | None:
        """Search on LR_TASK with seed 0 (once; recorded in selection.json) and promote the winner."""
        key = f"{method}-r{rank}"
        selection = read_selection(out)
        if key in selection:
            return float(selection[key]["chosen"])
        results = {}
        for lr in lr_grid:
            run = GridRun(LR_TASK, method, rank, 0, lr)
            final = out / GridRun(LR_TASK, method, rank, 0).name
            folder = search / run.name
            if not folder.exists() and _finished(final) and read_run(final).metrics["config"]["lr"] == lr:
                folder = final  # promoted earlier, selection file lost
            if do(run, folder, lr):
                metrics = read_run(folder).metrics
                results[lr] = {"accuracy": metrics["validation"]["accuracy"], "loss": metrics["validation"]["loss"]}
        if len(results) < len(lr_grid):
            return None  # a search run failed: this method waits for the next call
        best = pick_lr(results)
        best_folder = search / GridRun(LR_TASK, method, rank, 0, best).name
        final = out / GridRun(LR_TASK, method, rank, 0).name
        if best_folder.exists() and not final.exists():
            best_folder.rename(final)  # the winner is the seed-0 run of the grid
        for lr in lr_grid:  # the others keep their record (metrics, log, predictions), not their adapter
            other = search / GridRun(LR_TASK, method, rank, 0, lr).name
            if lr != best and other.exists():
                shutil.rmtree(other / ADAPTER_DIR, ignore_errors=True)
                (other / "status").write_text("not-chosen\n")
        selection[key] = {
            "task": LR_TASK, "seed": 0, "split": "validation", "grid": {f"{lr:g}": r for lr, r in results.items()},
            "chosen": best,
        }  # fmt: skip
        _write_selection(out, selection)
        return best

    pairs = grid_methods(methods)
    early = [p for p in pairs if p[0] not in LAST_METHODS]
    late = [p for p in pairs if p[0] in LAST_METHODS]
    for group in (early, late):
        for task in sorted(tasks, key=lambda t: t != LR_TASK):  # the search task first
            for method, rank in group:
                lr = chosen_lr(method, rank)
                if lr is None:
                    continue
                for seed in seeds:
                    run = GridRun(task, method, rank, seed)
                    do(run, out / run.name, lr)
    return trained
