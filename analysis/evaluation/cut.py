"""A PARA cut of an adapter evaluated on the user's data: exported, loaded by peft on the shared base, scored.

`open_base` finds, checks and loads the adapter's base model once; `evaluate_cut` then scores the uncompressed
adapter or any cut of it without reloading the base: the adapter is attached with peft, scored, and detached,
and any head it replaced (modules_to_save) is put back. No streamlit, no printing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from analysis.adapters import CONFIG_NAME, LoraAdapter
from analysis.evaluation.base_model import (
    TASK_KINDS,
    BaseModel,
    BaseModelError,
    BaseModelInfo,
    TaskKind,
    adapter_task,
    base_param_name,
    check_shapes,
    find_base_model,
    head_labels,
    inspect_base_model,
    load_base_model,
)
from analysis.evaluation.metrics import EvalData, ProgressCallback, score
from analysis.export import compress_adapter, save_adapter
from analysis.para import RankAllocation

Metric = Literal["perplexity", "accuracy"]


@dataclass(frozen=True)
class CutEvaluation:
    """One adapter (uncompressed or cut) scored on the user's data."""

    metric: Metric
    value: float
    """Perplexity (lower is better) or accuracy in [0, 1]."""
    loss: float
    """Mean cross-entropy per predicted token (causal LM) or per text (classification)."""
    n_lora_params: int
    params_fraction: float
    """LoRA parameters kept, as a fraction of the uncompressed adapter's."""
    n_examples: int
    n_tokens: int

    def describe(self) -> str:
        figure = f"perplexity {self.value:.3f}" if self.metric == "perplexity" else f"accuracy {self.value:.2%}"
        return f"{figure} (loss {self.loss:.4f}) with {self.n_lora_params:,} LoRA params ({self.params_fraction:.1%})"


def metric_of(task: TaskKind) -> Metric:
    return "perplexity" if task == "causal-lm" else "accuracy"


def check_base(
    adapter: LoraAdapter, base: str | Path | None = None, *, task: TaskKind | None = None, download: bool = False
) -> tuple[BaseModelInfo, TaskKind, int | None]:
    """Find the base model of `adapter` and check it without loading its weights.

    Returns:
        (what the folder holds, the task, the classes of the adapter's head or None).

    Raises:
        BaseModelError: see `open_base`.
    """
    if adapter.format == "kohya":
        raise BaseModelError(
            f"{adapter.source}: a kohya / diffusers file has no transformers base model to evaluate on; "
            "evaluation needs a PEFT adapter of a causal LM or a sequence classifier"
        )
    name = base if base is not None and str(base).strip() else adapter.base_model
    if not name:
        raise BaseModelError(f"{adapter.source}: the adapter names no base model; give its folder (--base DIR)")
    info = inspect_base_model(find_base_model(name, download=download))
    task = task or adapter_task(adapter) or info.task()
    if task not in TASK_KINDS:
        raise BaseModelError(
            f"{info.folder}: neither the adapter nor the model says whether it is a causal LM or a classifier; "
            "pass --task causal-lm or --task classification"
        )
    check_shapes(info, adapter, task)
    return info, task, head_labels(adapter)


def check_head(loaded: BaseModel, n_labels: int | None) -> None:
    """A classifier needs a head from the model or the adapter, not a freshly initialised one.

    Raises:
        BaseModelError: neither holds it.
    """
    head_missing = [k for k in loaded.missing_keys if k.split(".")[0] in ("classifier", "score")]
    if loaded.task == "classification" and n_labels is None and head_missing:
        raise BaseModelError(
            f"{loaded.info.folder}: neither the model nor the adapter holds a classification head "
            f"({head_missing[0]}); give the fine-tuned classifier as --base, or an adapter saved with its head"
        )


def open_base(
    adapter: LoraAdapter,
    base: str | Path | None = None,
    *,
    task: TaskKind | None = None,
    download: bool = False,
    on_log: Callable[[str], None] | None = None,
) -> BaseModel:
    """Find, check and load the base model of `adapter`.

    Args:
        adapter: the adapter to evaluate (peft module names).
        base: a model folder or Hub id; default the adapter's base_model_name_or_path.
        task: "causal-lm" or "classification"; default the adapter's task_type, else the model's architecture.
        download: fetch a Hub id that is not cached (never under HF_HUB_OFFLINE=1).
        on_log: told what is loaded.

    Raises:
        BaseModelError: no base model named or found, a folder without config or weights, shapes that differ
            from the adapter's (the first module is named), too little memory, no tokenizer, no classifier head.
    """
    info, task, n_labels = check_base(adapter, base, task=task, download=download)
    loaded = load_base_model(info, task, n_labels=n_labels, on_log=on_log)
    check_head(loaded, n_labels)
    return loaded


def adapter_folder(adapter: LoraAdapter) -> Path | None:
    """The PEFT folder the adapter was read from, when it is one on disk (peft loads it as is)."""
    source = Path(adapter.source)
    for folder in (source, source / "adapter"):
        if adapter.format != "kohya" and (folder / CONFIG_NAME).is_file():
            return folder
    return None


@contextmanager
def attached(base: BaseModel, folder: Path) -> Iterator[torch.nn.Module]:
    """`base.model` with the PEFT adapter in `folder` attached (under the base's lock); detached on exit.

    peft's unload() keeps a modules_to_save copy (a trained head) in place of the base's module, so the base's
    own values of those tensors are saved first and put back.
    """
    from peft import PeftModel

    with base.lock:
        heads = _heads(folder)
        saved = {k: v.detach().clone() for k, v in base.model.state_dict().items() if k.split(".")[0] in heads}
        model = PeftModel.from_pretrained(base.model, folder)
        try:
            yield model
        finally:
            base.model = model.unload()
            if saved:
                base.model.load_state_dict(saved, strict=False)
            base.model.eval()


def _heads(folder: Path) -> set[str]:
    """Top-level module names the adapter's modules_to_save may replace (the first part of each path)."""
    import json

    config = json.loads((folder / CONFIG_NAME).read_text())
    names = list(config.get("modules_to_save") or [])
    if config.get("task_type") == "SEQ_CLS":
        names += ["classifier", "score"]  # peft adds these for sequence classification
    return {n.split(".")[0] for n in names} | {base_param_name(n).split(".")[0] for n in names}


def evaluate_cut(
    base: BaseModel,
    adapter: LoraAdapter,
    allocation: RankAllocation | None,
    data: EvalData,
    *,
    on_step: ProgressCallback | None = None,
) -> CutEvaluation:
    """Score the adapter (allocation None) or a PARA cut of it on `data`, exactly as deployed.

    A cut is compressed, written as a PEFT folder to a temp folder and loaded by peft onto the shared base; the
    uncompressed adapter is loaded from its own folder (or, for a zip or upload, exported at full rank).

    Args:
        base: from `open_base` (loaded once, reused).
        adapter: the adapter the cut is of.
        allocation: the cut (`allocate_ranks` / `allocate_at`), or None for the adapter itself.
        data: from `prepare_data` with the same base.
        on_step: progress per batch.
    """
    n_params = adapter.n_params if allocation is None else allocation.n_params_after
    folder = adapter_folder(adapter) if allocation is None else None
    with tempfile.TemporaryDirectory(prefix="para-own-") as tmp:
        if folder is None:
            from analysis.para import allocate_ranks, para_index
            from analysis.spectra import adapter_spectra

            cut = allocation or allocate_ranks(para_index(adapter_spectra(adapter)), 1.0, "params_fraction")
            folder = save_adapter(compress_adapter(adapter, cut, format="peft"), Path(tmp) / "cut")
        with attached(base, folder) as model:
            value, loss = score(model, base, data, on_step)
    fraction = n_params / max(adapter.n_params, 1)
    return CutEvaluation(metric_of(base.task), value, loss, n_params, fraction, data.n_examples, data.n_tokens)
