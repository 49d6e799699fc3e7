"""Adapter formats -> one `LoraAdapter` of `LoraModule`s (PEFT, AdaLoRA, kohya/diffusers, zips).

Shapes in the files are the truth: the config is cross-checked against them and every disagreement is
reported by module name. Nothing here runs code from a file (pickles go through a tensors-only
unpickler) and nothing here imports streamlit or prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

ModuleKind = Literal["linear", "embedding", "conv"]
AdapterFormat = Literal["peft", "adalora", "kohya"]


class AdapterError(ValueError):
    """A file the user brought cannot be read as a LoRA adapter.

    The message is one line that names the file, the module (when there is one) and the fix.
    """


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted module: its update is `delta_w = scaling * B @ A`.

    Conv and embedding updates are flattened to the same (out, r) @ (r, in) form; `weight_shape` keeps
    the base weight's real shape for export.
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

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def n_params(self) -> int:
        """LoRA parameters of this module: r * (in + out)."""
        return self.r * (self.in_features + self.out_features)


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
    kohya_prefixes: Mapping[str, str] = field(default_factory=dict)
    """kohya only: module name -> original key prefix (e.g. `lora_unet_down_blocks_0_...`)."""

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.modules)

    def module(self, name: str) -> LoraModule:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module named {name!r} in {self.source}")


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT folder, an AdaLoRA folder, a kohya/diffusers `.safetensors` file or a `.zip` of any.

    Args:
        path: folder or file.

    Returns:
        The adapter with one `LoraModule` per adapted module, in file order.

    Raises:
        AdapterError: with one line naming the file, the module and the fix.
    """
    raise NotImplementedError  # filled in by the loader work (issue 2)
