"""A trained adapter applied to a fresh base classifier, as a user deploys it (for evaluation).

PEFT folders go through peft. An LR-LoRA record goes through the engine's reader: each module's dense
`(alpha / r) phi(B @ A)` is added to its base weight (the same sum the training forward takes) and the trained
head is loaded. No streamlit, no printing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from analysis.adapters import PEFT_PREFIX, load_adapter
from analysis.formats import lr_lora
from analysis.training.model import HEAD_NAME


def is_adapter_folder(path: Path) -> bool:
    """A PEFT folder or an LR-LoRA record."""
    return (path / "adapter_config.json").is_file() or lr_lora.can_read(path)


def adapted_model(model: nn.Module, folder: str | Path) -> nn.Module:
    """`model` (a fresh base classifier) with the adapter at `folder` applied, in eval mode.

    Raises:
        AdapterError: when the folder cannot be read.
    """
    folder = Path(folder)
    if not lr_lora.can_read(folder):
        return PeftModel.from_pretrained(model, folder).eval()
    adapter = load_adapter(folder)
    with torch.no_grad():
        for module in adapter.modules:
            layer = model.get_submodule(module.name)
            layer.weight += module.delta.to(layer.weight.dtype)  # (out, in): W + (alpha / r) phi(B @ A)
        head = getattr(model, HEAD_NAME)
        head.weight.copy_(adapter.extra_tensors[f"{PEFT_PREFIX}{HEAD_NAME}.weight"])
        head.bias.copy_(adapter.extra_tensors[f"{PEFT_PREFIX}{HEAD_NAME}.bias"])
    return model.eval()
