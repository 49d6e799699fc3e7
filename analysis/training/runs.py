"""Training run records: `<out>/adapter/` (PEFT folder), allocation.json, metrics.json, log.txt, status.

A run trains in a temp folder beside `out` and is renamed into place only when complete, so a crash never
leaves a finished-looking adapter; a failed run leaves `<out>.failed/` with status "failed" and its log.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from analysis.adapters import load_adapter
from analysis.training.data import TaskName, load_task
from analysis.training.lora import StepCallback, TrainConfig, evaluate, train_lora
from analysis.training.model import load_minilm

ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class RunSpec:
    """What to train: method, task and its hyperparameters."""

    method: str
    task: TaskName
    train: TrainConfig


def _baselines(task_data) -> dict[str, float]:
    counts = torch.bincount(torch.tensor([e.label for e in task_data.train]))
    majority = int(counts.argmax())
    test = task_data.test
    return {"majority_test_accuracy": sum(e.label == majority for e in test) / max(len(test), 1)}


def train_run(spec: RunSpec, out: str | Path, *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train one run and write its record atomically to `out`; returns metrics.json's content.

    Raises:
        ValueError: for an unknown method, or if `out` already exists.
    """
    out = Path(out)
    if spec.method != "lora":
        raise ValueError(f"method must be one of: lora, got {spec.method!r}")
    if out.exists():
        raise ValueError(f"{out}: already exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        (tmp / "log.txt").write_text("\n".join(log_lines) + "\n")

    try:
        (tmp / "status").write_text("running\n")
        task = load_task(spec.task, seed=spec.train.seed)
        (tmp / "splits.json").write_text(json.dumps(task.split_ids()))
        model, tokenizer = load_minilm(len(task.labels), seed=spec.train.seed)
        log(f"training {spec.method} on {spec.task}: {len(task.train)} train examples, config {asdict(spec.train)}")

        def step_cb(step: int, total: int, loss: float) -> None:
            if step % 10 == 0 or step == total:
                log(f"step {step}/{total} loss {loss:.4f}")
            if on_step is not None:
                on_step(step, total, loss)

        result = train_lora(model, tokenizer, task.train, spec.train, on_step=step_cb)
        val_acc, val_loss = evaluate(result.model, tokenizer, task.validation)
        test_acc, test_loss = evaluate(result.model, tokenizer, task.test)
        log(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}")
        result.model.save_pretrained(tmp / ADAPTER_DIR)
        adapter = load_adapter(tmp / ADAPTER_DIR)
        allocation = {m.name: m.r for m in adapter.modules}
        metrics = {
            "method": spec.method,
            "task": spec.task,
            "labels": list(task.labels),
            "validation": {"accuracy": val_acc, "loss": val_loss},
            "test": {"accuracy": test_acc, "loss": test_loss},
            "baselines": _baselines(task),
            "n_lora_params": adapter.n_params,
            "wall_time_s": result.seconds,
            "n_steps": result.n_steps,
            "seed": spec.train.seed,
            "config": asdict(spec.train),
            "loss_curve": result.loss_curve,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        }
        (tmp / "allocation.json").write_text(json.dumps(allocation, indent=1))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / "status").write_text("finished\n")
        tmp.rename(out)
        return metrics
    except BaseException as err:
        log(f"failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        (tmp / "status").write_text("failed\n")
        shutil.rmtree(tmp / ADAPTER_DIR, ignore_errors=True)
        failed = out.with_name(out.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        raise
