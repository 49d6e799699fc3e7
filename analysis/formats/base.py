"""The types every reader returns (`LoraModule`, `LoraAdapter`) and the checks they share.

Shapes in the files are the truth: every disagreement is reported by module name, in one line naming the
file and the fix. Nothing here runs code from a file, imports streamlit or prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from analysis.safe_io import AdapterError, content_digest

ModuleKind = Literal["linear", "embedding", "conv"]
AdapterFormat = Literal["peft", "adalora", "kohya", "diffusers", "lr_lora"]
SINGLE_FILE_FORMATS = ("kohya", "diffusers")  # one .safetensors, written back in its own layout

PEFT_PREFIX = "base_model.model."
# Where kohya's trainer (ss_*) and the modelspec convention record the base model, most specific first.
KOHYA_BASE_MODEL_KEYS = ("ss_sd_model_name", "ss_base_model_version", "modelspec.architecture")
# Initialisations that change the base weights when peft loads the adapter (PiSSA, OLoRA, CorDA and LoRA-GA
# subtract the initial factors, LoftQ quantises): such an adapter's update is relative to that changed base.
BASE_ALTERING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted module: its update is `delta_w = scaling * B @ A`, or the dense `delta` when it has one.

    Conv and embedding updates are flattened to the same (out, r) @ (r, in) form; `weight_shape` keeps
    the base weight's real shape for export. A dense-update module (LR-LoRA's `(alpha/r) phi(B @ A)`) carries
    its update in `delta`; its spectrum comes from a dense SVD and its rank `r` is min(out, in).
    """

    name: str
    """PEFT module path without `base_model.model.`, e.g. `encoder.layer.0.attention.self.query`.
    This is exactly the key format of `rank_pattern`. For kohya inputs it is the kohya module name."""
    A: torch.Tensor
    """(r, in_features) in the file's dtype; conv: (r, in_channels * kh * kw / groups)."""
    B: torch.Tensor
    """(out_features, r) in the file's dtype."""
    scaling: float
    """Effective scale s: alpha / r, alpha / sqrt(r) under rsLoRA, alpha / init_r for AdaLoRA."""
    kind: ModuleKind = "linear"
    weight_shape: tuple[int, ...] = ()
    """Shape of the base weight delta as the framework stores it (conv: (out, in, kh, kw))."""
    alpha: float | None = None
    """The alpha this module was saved with (after alpha_pattern), if the format has one."""
    is_dora: bool = False
    """Has a DoRA magnitude vector: peft cannot hold such a module at rank 0, so a cut keeps rank >= 1."""
    expert: tuple[str, int, int] | None = None
    """One expert of a peft `target_parameters` wrapper: (wrapper module, expert index, number of experts)."""

    delta: torch.Tensor | None = None
    """Dense-update modules only: the update itself, (out_features, in_features) float32 with every scale
    applied (LR-LoRA: (alpha / r) * phi(B @ A)). A and B are then the trained factors it was built from, not a
    factorisation of it, and `scaling` is the alpha / r in front of phi."""
    n_other_params: int = 0
    """Trained parameters besides A and B (LR-LoRA: its 2K sinc parameters)."""

    @property
    def is_dense(self) -> bool:
        """The update is the dense `delta`, not `scaling * B @ A`."""
        return self.delta is not None

    @property
    def r(self) -> int:
        """Rank bound of the update (the length of its spectrum): A's rows, min(out, in) for a dense update."""
        return min(self.out_features, self.in_features) if self.delta is not None else int(self.A.shape[0])

    @property
    def factor_rank(self) -> int:
        """Rows of A: the trained factors' rank (equal to `r` except for dense updates)."""
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.delta.shape[1] if self.delta is not None else self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.delta.shape[0] if self.delta is not None else self.B.shape[0])

    @property
    def n_params(self) -> int:
        """Trained parameters of this module: r * (in + out) for LoRA; a dense update's factor rank * (in + out)
        plus its other parameters (LR-LoRA: + 2K)."""
        return self.factor_rank * (self.in_features + self.out_features) + self.n_other_params


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A loaded adapter: modules in file order plus everything needed to write it back."""

    source: str
    """Path (or upload name) it was read from."""
    fingerprint: str
    """Content hash of the tensors and config: the cache key."""
    format: AdapterFormat
    config: Mapping[str, Any]
    """The adapter_config.json as read (empty for kohya files)."""
    modules: tuple[LoraModule, ...]
    extra_tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """Tensors passed through unchanged on export (modules_to_save, lora bias, DoRA magnitudes...),
    keyed by their original file key."""
    warnings: tuple[str, ...] = ()
    file_size: int = 0
    """Bytes on disk of the weights file(s)."""
    single_file_keys: Mapping[str, tuple[str, str, bool]] = field(default_factory=dict)
    """kohya/diffusers single files only: module name -> (down part, up part, had an alpha), e.g.
    ("lora_down", "lora_up", True) or ("lora_A", "lora_B", False): the export keeps the file's own layout."""

    @property
    def base_model(self) -> str | None:
        """The base model as recorded: PEFT's config, or a kohya file's training metadata."""
        if name := self.config.get("base_model_name_or_path"):
            return name
        metadata = self.config.get("kohya_metadata") or {}
        return next((metadata[k] for k in KOHYA_BASE_MODEL_KEYS if metadata.get(k)), None)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.modules)

    @property
    def is_single_file(self) -> bool:
        """A kohya or diffusers `.safetensors` file (no config beside it), written back as one file."""
        return self.format in SINGLE_FILE_FORMATS

    def module(self, name: str) -> LoraModule:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module named {name!r} in {self.source}")


def base_altering_init(config: Mapping[str, Any]) -> str | None:
    """The config's `init_lora_weights` when it is one that changes the base weights at load (see
    BASE_ALTERING_INITS), else None."""
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_ALTERING_INITS):  # "pissa_niter_16" too
        return init
    return "loftq" if config.get("loftq_config") else None


def adapter_warnings(config: Mapping[str, Any], extra: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """What the spectra or an export leave out, from the config and the passed-through tensors (PEFT or kohya)."""
    warnings = []
    if config.get("use_dora") or any("lora_magnitude_vector" in k or k.endswith(".dora_scale") for k in extra):
        warnings.append(
            "DoRA adapter: spectra show the direction part s*B@A only; the magnitudes are passed through, and every "
            "DoRA module keeps at least rank 1 in a cut (peft cannot hold a DoRA module at rank 0)"
        )
    if config.get("lora_bias") or any(k.endswith(".lora_B.bias") for k in extra):
        warnings.append(
            "LoRA bias (lora_bias=True): the biases are passed through, but a module cut to rank 0 loses its "
            "bias; set the minimum rank to 1 to keep every one"
        )
    if init := base_altering_init(config):
        warnings.append(
            f"init_lora_weights={init!r}: peft changes the base weights by the initial factors when it loads this "
            "adapter, so its update is not s*B@A on the base model and it cannot be exported at other ranks; "
            "convert it to a plain LoRA first (peft's save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    return tuple(warnings)


def adapter_fingerprint(buffer: Any, config: Mapping[str, Any]) -> str:
    """Content hash of the weights bytes and the canonical config: the cache key."""
    return content_digest(buffer, json.dumps(config, sort_keys=True, default=str).encode())


def split_keys(
    file: Path, tensors: Mapping[str, torch.Tensor], regex: re.Pattern, strip: str = ""
) -> tuple[dict, dict]:
    """Group LoRA tensors by module name; everything else goes to the pass-through dict."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    adapter_names: dict[str, str] = {}  # adapter name (PEFT keys of unsaved state dicts) -> an example key
    for key, tensor in tensors.items():
        match = regex.match(key[len(strip) :] if strip and key.startswith(strip) else key)
        if match:
            parts.setdefault(match["name"], {})[match["part"]] = tensor
            adapter_names.setdefault(match.groupdict().get("adapter") or "", key)
        else:
            extra[key] = tensor
    if len(adapter_names) > 1:
        examples = ", ".join(repr(k) for k in list(adapter_names.values())[:2])
        raise AdapterError(f"{file}: holds several adapters ({examples}); save one adapter per file with peft")
    return parts, extra


def is_finite(t: torch.Tensor) -> bool:
    """Whether every value is finite, in one read of the tensor.

    A sum is NaN/Inf if some value is; it can also overflow with finite values, so a non-finite sum is
    confirmed with an exact element check. numpy's sum is single-threaded: torch's OpenMP reduction was
    ~10x slower on a shared 2-core machine (threads spinning on busy cores).
    """
    if t.dtype in (torch.float32, torch.float64, torch.float16) and t.device.type == "cpu":
        with np.errstate(over="ignore", invalid="ignore"):
            total = t.numpy().sum(dtype=np.float64 if t.dtype == torch.float64 else np.float32)
        if np.isfinite(total):
            return True
    elif bool(torch.isfinite(t.sum(dtype=torch.float32))):  # bfloat16 (no numpy dtype): no full-size mask
        return True
    return bool(torch.isfinite(t).all())


def check_finite(file: Path, modules: list[LoraModule]) -> None:
    bad = [m.name for m in modules if not (is_finite(m.A) and is_finite(m.B))]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise AdapterError(
            f"{file}: NaN or Inf values in module(s) {', '.join(bad[:3])}{more}; the training run diverged, "
            "use an earlier checkpoint"
        )


def no_lora_error(file: Path, tensors: Mapping[str, torch.Tensor]) -> AdapterError:
    if not tensors:
        return AdapterError(f"{file}: holds no tensors; re-export the adapter")
    # a weight's key, not an `.alpha` one: that names the layout
    weights = [k for k in tensors if not k.endswith(".alpha")] or list(tensors)
    lora_like = next((k for k in weights if any(w in k.lower() for w in ("hada_", "lokr_", "oft_"))), None)
    lora_like = lora_like or next((k for k in weights if "lora" in k.lower()), None)
    if lora_like is not None:
        return AdapterError(
            f"{file}: its tensors (e.g. {lora_like!r}) are in a layout not read here (LyCORIS LoHa/LoKr, OFT or "
            "old diffusers attention processors); convert it to PEFT (lora_A/lora_B) or kohya (lora_down/lora_up)"
        )
    example = next(iter(tensors))
    return AdapterError(
        f"{file}: no LoRA tensors found among {len(tensors)} tensors (e.g. {example!r}); this looks like a full "
        "model checkpoint, not an adapter: point at the LoRA adapter instead"
    )


def as_matrices(file: Path, name: str, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Flatten conv factors to (r, in*k*k) and (out, r); check the inner dimension."""
    kind = "conv" if A.ndim >= 3 else "linear"
    if A.ndim < 2 or B.ndim < 2:
        raise AdapterError(f"{file}: module {name} has 1-d LoRA factors {tuple(A.shape)}, {tuple(B.shape)}; corrupt")
    if A.ndim != B.ndim:
        raise AdapterError(
            f"{file}: module {name} has factors of {A.ndim} and {B.ndim} dimensions ({tuple(A.shape)}, "
            f"{tuple(B.shape)}); the file is corrupt or mixes two adapters"
        )
    for factor in (A, B):
        if not factor.is_floating_point() or factor.dtype.itemsize < 2:  # integers, bool, float8
            raise AdapterError(
                f"{file}: module {name} has {str(factor.dtype).removeprefix('torch.')} factors; LoRA factors are "
                "float32, float16 or bfloat16: re-save them in one of those"
            )
    if A.shape[0] != B.shape[1]:
        raise AdapterError(
            f"{file}: module {name} has A {tuple(A.shape)} and B {tuple(B.shape)} whose inner dimensions "
            f"({A.shape[0]} vs {B.shape[1]}) disagree; the file is corrupt or mixes two adapters"
        )
    if kind == "conv":
        A = A.reshape(A.shape[0], -1)  # (r, in, kh, kw) -> (r, in * kh * kw)
        B = B.reshape(B.shape[0], B.shape[1], -1)  # (out, r, 1, 1) -> (out, r, 1)
        if B.shape[2] != 1:
            raise AdapterError(f"{file}: module {name} has a lora_B with a kernel {tuple(B.shape)}; not supported")
        B = B[:, :, 0]
    return A, B, kind
