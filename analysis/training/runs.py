"""One training run of any registered method, evaluated and written as a run record (see records.py).

The record is built in a temp folder and renamed into place only when complete; a crash leaves `<out>.failed/`.
The reported accuracy is that of the written PEFT folder loaded on a fresh base model, as a user would load it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.adapters import load_adapter
from analysis.training.baselines import majority_accuracy
from analysis.training.data import TaskData, TaskName, load_task, subsample
from analysis.training.deploy import adapted_model
from analysis.training.lora import StepCallback, TrainConfig, predict
from analysis.training.methods import METHODS, resolve_budget
from analysis.training.model import load_minilm
from analysis.training.records import ADAPTER_DIR, writing_run

ModelFactory = Callable[..., tuple[nn.Module, PreTrainedTokenizerBase]]
"""(n_labels, seed=...) -> (SentenceClassifier, tokenizer); MiniLM by default, a tiny BERT in tests."""

DEFAULT_BUDGET_RANK = {"lora": 32, "alora": 8, "lr_lora": 8, "adalora": 8, "masked_rank": 8}


@dataclass(frozen=True)
class RunSpec:
    """What to train: method, task, hyperparameters and the parameter budget."""

    method: str
    task: TaskName
    train: TrainConfig
    budget_rank: int | None = None
    """Budget = LoRA parameters of uniform rank `budget_rank` (lora: its rank). Default: lora 32, others 8."""
    budget_params: int | None = None
    """Or an explicit parameter count (then budget_rank must be None)."""
    lora_alpha: float | None = None
    """Default 2 * the budget's rank (scale 2, as alpha = 2r)."""
    split_seed: int = 0
    """Seed of the train / validation / test split (and of any subsample), separate from the training seed
    `train.seed`, so seeds share their test examples."""
    train_limit: int | None = None
    """Train on a stratified subsample of about this many examples (None: the whole train split)."""
    validation_limit: int | None = None
    """Cut the validation split to about this many examples (None: whole)."""
    adapter_dtype: str = "float32"
    """Store the LoRA factors in "float32" or "bfloat16" (half the size; the head stays float32). Accuracy is
    measured on the stored adapter either way."""


def train_run(
    spec: RunSpec,
    out: str | Path,
    *,
    on_step: StepCallback | None = None,
    model_factory: ModelFactory | None = None,
    task_data: TaskData | None = None,
) -> dict[str, Any]:
    """Train one run and write its record atomically to `out`; returns metrics.json's content.

    Args:
        spec: method, task, schedule, budget.
        out: the run folder to create (must not exist).
        on_step: progress callback.
        model_factory: builds (classifier, tokenizer); MiniLM by default.
        task_data: the task's examples (default: `load_task(spec.task)`; tests pass a slice).

    Raises:
        ValueError: for an unknown method or a bad budget (before anything is written), or if `out` exists.
    """
    if spec.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {spec.method!r}")
    if spec.budget_rank is not None and spec.budget_rank < 1:
        raise ValueError(f"budget rank must be >= 1, got {spec.budget_rank}")
    if spec.budget_params is not None and spec.budget_params < 1:
        raise ValueError(f"budget params must be >= 1, got {spec.budget_params}")
    if spec.adapter_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"adapter dtype must be float32 or bfloat16, got {spec.adapter_dtype!r}")
    build = model_factory or load_minilm
    with writing_run(out) as run:
        task = task_data or load_task(spec.task, seed=spec.split_seed)
        task = subsample(task, train=spec.train_limit, validation=spec.validation_limit, seed=spec.split_seed)
        run.write_json("splits.json", task.split_ids(), indent=None)
        model, tokenizer = build(len(task.labels), seed=spec.train.seed)
        rank = spec.budget_rank
        if rank is None and spec.budget_params is None:
            rank = DEFAULT_BUDGET_RANK[spec.method]
        try:
            budget = resolve_budget(model, rank=rank, params=spec.budget_params)
        except ValueError:
            run.discard()  # a user error, not a failed run: leave nothing behind
            raise
        config = replace(spec.train, r=budget.rank, lora_alpha=spec.lora_alpha or 2.0 * budget.rank)
        run.log(
            f"training {spec.method} on {spec.task}: {len(task.train)} examples, {budget}, config {asdict(config)}"
        )

        def step_cb(step: int, total: int, loss: float) -> None:
            if step % 10 == 0 or step == total:
                run.log(f"step {step}/{total} loss {loss:.4f}")
            if on_step is not None:
                on_step(step, total, loss)

        start = time.perf_counter()
        result = METHODS[spec.method](model, tokenizer, task, config, budget, run.folder / ADAPTER_DIR, step_cb)
        seconds = time.perf_counter() - start
        if spec.adapter_dtype != "float32":
            _store_factors_as(run.folder / ADAPTER_DIR, spec.adapter_dtype)
        # evaluate exactly what a user loads: a fresh base model plus the written PEFT folder
        fresh, _ = build(len(task.labels), seed=spec.train.seed)
        trained = adapted_model(fresh, run.folder / ADAPTER_DIR)
        val_acc, val_loss, val_pred = predict(trained, tokenizer, task.validation)
        test_acc, test_loss, test_pred = predict(trained, tokenizer, task.test)
        run.log(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}")
        # per example, in the order of splits.json: what a paired test between two runs needs
        predictions = {
            split: {"predictions": pred, "targets": [e.label for e in examples]}
            for split, pred, examples in (("validation", val_pred, task.validation), ("test", test_pred, task.test))
        }
        run.write_json("predictions.json", predictions, indent=None)
        adapter = load_adapter(run.folder / ADAPTER_DIR)
        allocation = dict(sorted(result.ranks.items()))
        metrics = {
            "method": spec.method,
            "task": spec.task,
            "labels": list(task.labels),
            "validation": {"accuracy": val_acc, "loss": val_loss},
            "test": {"accuracy": test_acc, "loss": test_loss},
            "baselines": {"majority_test_accuracy": majority_accuracy(task.train, task.test)},
            "n_lora_params": adapter.n_params,
            "budget": {"params": budget.params, "rank": budget.rank},
            "within_budget": adapter.n_params <= budget.params,
            "ranks": {
                "min": min(allocation.values()),
                "max": max(allocation.values()),
                "n_modules": len(allocation),
                "total": sum(allocation.values()),
            },  # fmt: skip
            "wall_time_s": seconds,
            "n_steps": len(result.losses),
            "seed": spec.train.seed,
            "split_seed": spec.split_seed,
            "n_train": len(task.train),
            "config": asdict(config),
            "method_details": result.details,
            "loss_curve": result.losses,
            "rank_trajectory": result.trajectory,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        }
        run.write_json("allocation.json", allocation)
        run.write_json("metrics.json", metrics)
    return metrics


def _store_factors_as(folder: Path, dtype: str) -> None:
    """Rewrite the adapter's lora_A / lora_B tensors in `dtype` ("bfloat16"); other tensors are kept as they are."""
    from safetensors.torch import load_file, save_file

    if dtype != "bfloat16":
        raise ValueError(f"adapter_dtype must be float32 or bfloat16, got {dtype!r}")
    file = folder / "adapter_model.safetensors"
    if not file.is_file():  # an LR-LoRA record: its factors are lora_A / lora_B too, its sinc parameters stay
        file = folder / "lr_lora.safetensors"
    tensors = load_file(str(file))
    for key, value in tensors.items():
        if ".lora_A." in key or ".lora_B." in key:
            tensors[key] = value.to(torch.bfloat16).contiguous()
    save_file(tensors, str(file), metadata={"format": "pt"})
