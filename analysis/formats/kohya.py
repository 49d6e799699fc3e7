"""kohya and diffusers single-file LoRAs: `<name>.lora_down/lora_up.weight` (or `lora_A/lora_B`) with an
optional `<name>.alpha` per module, and the file's training metadata. No streamlit, no prints."""

from __future__ import annotations

import math
import re
from pathlib import Path

from analysis.formats.base import (
    PEFT_PREFIX,
    LoraAdapter,
    LoraModule,
    adapter_fingerprint,
    adapter_warnings,
    as_matrices,
    check_finite,
    no_lora_error,
    split_keys,
)
from analysis.formats.peft import CONFIG_NAME
from analysis.safe_io import AdapterError, read_safetensors

KOHYA_KEY = re.compile(r"^(?P<name>.+)\.(?P<part>lora_down|lora_up|lora_A|lora_B)\.weight$")


def load_single_file(file: Path, *, in_memory: bool) -> LoraAdapter:
    """kohya / diffusers single-file LoRA: `<name>.lora_down/up.weight` (or lora_A/B) and `<name>.alpha`."""
    tensors, metadata, buffer = read_safetensors(file, in_memory=in_memory)
    if any(k.startswith(PEFT_PREFIX) for k in tensors):
        raise AdapterError(
            f"{file}: PEFT weights with no {CONFIG_NAME} beside them (the scale is unknown); copy the config there"
        )
    parts, extra = split_keys(file, tensors, KOHYA_KEY)
    if not parts:
        raise no_lora_error(file, tensors)
    if mid := next((k for k in extra if k.endswith((".lora_mid.weight", ".lora_mid"))), None):
        raise AdapterError(
            f"{file}: {mid!r} is a LyCORIS Tucker (lora_mid) factor, not plain LoRA; only lora_down/lora_up "
            "(kohya) and lora_A/lora_B (PEFT, diffusers) adapters are read"
        )
    modules, keys = [], {}
    for name, p in parts.items():
        down, up = ("lora_down", "lora_up") if "lora_down" in p or "lora_up" in p else ("lora_A", "lora_B")
        keys[name] = (down, up, f"{name}.alpha" in extra)
        A, B = p.get(down), p.get(up)
        if A is None or B is None:
            raise AdapterError(f"{file}: module {name} has only half of its down/up pair; corrupt file")
        weight_shape = (B.shape[0], *A.shape[1:])
        A, B, kind = as_matrices(file, name, A, B)
        alpha_t = extra.pop(f"{name}.alpha", None)
        r = A.shape[0]
        if alpha_t is not None and (alpha_t.numel() != 1 or not alpha_t.is_floating_point()):
            raise AdapterError(
                f"{file}: module {name} has an alpha of shape {tuple(alpha_t.shape)} and dtype "
                f"{str(alpha_t.dtype).removeprefix('torch.')}; {name}.alpha must be one float"
            )
        alpha = float(alpha_t) if alpha_t is not None else 0.0  # one float, checked above
        if not math.isfinite(alpha):
            raise AdapterError(f"{file}: module {name} has alpha {alpha}; set {name}.alpha to a finite number")
        alpha = alpha or float(r)  # kohya reads a missing or zero alpha as alpha = rank (scale 1)
        modules.append(LoraModule(name, A, B, alpha / r if r else 0.0, kind, weight_shape, alpha))
    config = {"kohya_metadata": metadata}
    fingerprint = adapter_fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    check_finite(file, modules)
    return LoraAdapter(
        source=str(file),
        fingerprint=fingerprint,
        format="kohya",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        file_size=file.stat().st_size,
        single_file_keys=keys,
        warnings=adapter_warnings(config, extra),
    )
