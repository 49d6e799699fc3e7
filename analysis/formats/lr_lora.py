"""LR-LoRA run records (analysis/training/lr_lora.py writes them) -> dense-update `LoraModule`s.

A folder with `lr_lora_config.json` and `lr_lora.safetensors`. Each module's update is rebuilt exactly as it
was trained, `dW = (lora_alpha / r) * phi(B @ A)` (analysis/sinc.py), and carried as the module's dense `delta`:
its spectrum comes from a dense SVD, and a PARA cut exports it as a standard PEFT LoRA (Eckart-Young per module).
The config the reader returns is the PEFT LoRA config such an export starts from (base model, target modules,
the head in modules_to_save). Every check names the file, the module and the fix. No streamlit, no prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from analysis.formats.base import PEFT_PREFIX, LoraAdapter, LoraModule, adapter_fingerprint, is_finite
from analysis.safe_io import AdapterError, read_safetensors
from analysis.sinc import lr_lora_delta

CONFIG_FILE = "lr_lora_config.json"
WEIGHTS_FILE = "lr_lora.safetensors"
FORMULA = (
    "(lora_alpha / r) * phi(lora_B @ lora_A), phi(x) = sum_k sinc_amplitude[k] * "
    "sinc(softplus(sinc_raw_bandwidth[k]) * (x - sinc_centre[k])), sinc(t) = sin(pi t) / (pi t)"
)
PARTS = ("lora_A.weight", "lora_B.weight", "sinc_amplitude", "sinc_raw_bandwidth", "sinc_centre")
WARNING = (
    "LR-LoRA (dense updates (alpha/r)·phi(B@A)): spectra come from a dense SVD of each update; a PARA export is "
    "a plain LoRA with the best rank-k approximation of each dW, not the trained nonlinear adapter itself"
)


def can_read(path: Path) -> bool:
    """A folder holding an LR-LoRA record (its config file)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _config(file: Path) -> dict[str, Any]:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AdapterError(f"{file}: not valid JSON ({str(err)[:80]}); re-save the LR-LoRA run") from None
    if not isinstance(config, dict) or config.get("format") != "lr_lora":
        raise AdapterError(f'{file}: not an LR-LoRA config ("format": "lr_lora" missing); re-save the run')
    modules = config.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise AdapterError(f'{file}: no "modules" object (module -> r, lora_alpha); re-save the LR-LoRA run')
    for name, entry in modules.items():
        r, alpha = (entry.get("r"), entry.get("lora_alpha")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
            raise AdapterError(f"{file}: module {name} has r {r!r}, not a whole number >= 1; fix it in {CONFIG_FILE}")
        if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)):
            raise AdapterError(f"{file}: module {name} has lora_alpha {alpha!r}, not a finite number; fix it")
    return config


def _module(file: Path, name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LoraModule:
    parts = {}
    for part in PARTS:
        key = f"{PEFT_PREFIX}{name}.{part}"
        if key not in tensors:
            raise AdapterError(f"{file}: module {name} has no {part} tensor ({key}); the record is incomplete")
        t = tensors[key]
        if not t.is_floating_point() or t.dtype.itemsize < 2:
            raise AdapterError(f"{file}: module {name} has a {t.dtype} {part}; re-save it as float32")
        if not is_finite(t):
            raise AdapterError(f"{file}: NaN or Inf values in module {name} ({part}); the training run diverged")
        parts[part] = t.float()
    A, B = parts["lora_A.weight"], parts["lora_B.weight"]
    a, raw_w, c = parts["sinc_amplitude"], parts["sinc_raw_bandwidth"], parts["sinc_centre"]
    r = entry["r"]
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
        raise AdapterError(
            f"{file}: module {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}, not (r, in) and (out, r) "
            f"with r = {r} as {CONFIG_FILE} says; the record is corrupt"
        )
    if not (a.ndim == raw_w.ndim == c.ndim == 1 and a.shape == raw_w.shape == c.shape and a.numel() >= 1):
        raise AdapterError(
            f"{file}: module {name} has sinc parameters of shapes {tuple(a.shape)}, {tuple(raw_w.shape)}, "
            f"{tuple(c.shape)}; they must be three (K,) vectors"
        )
    scaling = float(entry["lora_alpha"]) / r
    with torch.no_grad():
        delta = lr_lora_delta(A, B, a, raw_w, c, scaling)  # (out, in), exactly as trained
    if not is_finite(delta):
        raise AdapterError(f"{file}: module {name} has an update with NaN or Inf values; the run diverged")
    return LoraModule(
        name, A, B, scaling, "linear", tuple(delta.shape), float(entry["lora_alpha"]),
        delta=delta, n_other_params=2 * a.numel(),
    )  # fmt: skip


def read(folder: Path, *, in_memory: bool = False) -> LoraAdapter:
    """Read an LR-LoRA record folder as dense-update modules.

    Raises:
        AdapterError: one line naming the file, the module and the fix.
    """
    config = _config(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"{folder}: missing {WEIGHTS_FILE}; put the LR-LoRA weights beside {CONFIG_FILE}")
    tensors, _, buffer = read_safetensors(weights, in_memory=in_memory)
    modules = [_module(weights, name, entry, tensors) for name, entry in config["modules"].items()]
    used = {f"{PEFT_PREFIX}{m.name}.{part}" for m in modules for part in PARTS}
    extra = {k: t for k, t in tensors.items() if k not in used}  # the head (modules_to_save)
    r_max = max(m.factor_rank for m in modules)
    peft = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "target_modules": config.get("target_modules") or sorted(m.name for m in modules),
        "modules_to_save": config.get("modules_to_save"),
        "r": r_max,
        "lora_alpha": max(m.alpha or 0.0 for m in modules),
    }
    return LoraAdapter(
        source=str(folder),
        fingerprint=adapter_fingerprint(buffer, config),
        format="lr_lora",
        config=peft,
        modules=tuple(modules),
        extra_tensors=extra,
        warnings=(WARNING,),
        file_size=weights.stat().st_size,
    )
