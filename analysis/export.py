"""Compress an adapter to a PARA allocation and write it back: pure `compress_adapter`, thin writers.

PEFT output folds each module's scale into balanced factors and sets rank_pattern = alpha_pattern = k
(scale 1), so it loads in any PEFT reader and in vLLM. Writes are atomic; the source is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from analysis.adapters import LoraAdapter
from analysis.para import RankAllocation

ExportFormat = Literal["peft", "kohya"]


@dataclass(frozen=True, eq=False)
class CompressedAdapter:
    """What gets written: config, tensors and a human-readable report (pure data, no I/O)."""

    format: ExportFormat
    config: Mapping[str, Any]
    """adapter_config.json content (empty for kohya)."""
    tensors: Mapping[str, torch.Tensor]
    """File key -> tensor, contiguous, in the source adapter's floating dtype."""
    report: str
    """Markdown rank report (threshold in every unit, ranks per module, params, energy)."""
    allocation: RankAllocation


def compress_adapter(adapter: LoraAdapter, allocation: RankAllocation, *, format: ExportFormat = "peft") -> CompressedAdapter:
    raise NotImplementedError


def save_adapter(compressed: CompressedAdapter, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    raise NotImplementedError


def adapter_zip_bytes(compressed: CompressedAdapter) -> bytes:
    raise NotImplementedError
