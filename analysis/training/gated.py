"""Gated LoRA layers shared by ALoRA and LR-LoRA, and their export as a standard PEFT LoRA folder.

`GatedLoraLinear` wraps a frozen nn.Linear with `cap` rank slots: delta_w = scaling * B diag(g) A, where the
gate g = active * gate_override (ALoRA's 0/1 gates; LR-LoRA multiplies in its learned mask). Inactive slots
hold LoRA's init (B column = 0). `save_gated` folds gates and scale into B, keeps the slots with a nonzero
gate, and writes adapter_config.json (rank_pattern = alpha_pattern = k per module) + the safetensors file
with the classifier head in modules_to_save, so peft and the engine load it as plain LoRA.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from torch import nn

from analysis.adapters import PEFT_PREFIX
from analysis.export import pattern_key
from analysis.training.model import BASE_MODEL_NAME, HEAD_NAME, TARGET_MODULES, target_linears


class GatedLoraLinear(nn.Module):
    """A frozen linear layer plus `cap` gated LoRA rank slots, the first `n_active` switched on.

    `gate_override` is (cap,) normally; set it to (G, cap) to run G gate settings in one forward pass
    over a batch of G copies of the same inputs (ALoRA's vectorised ablations).
    """

    def __init__(self, base: nn.Linear, cap: int, n_active: int, scaling: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.cap = cap
        self.scaling = scaling
        self.A = nn.Parameter(torch.zeros(cap, base.in_features))  # (cap, d_in)
        self.B = nn.Parameter(torch.zeros(base.out_features, cap))  # (d_out, cap)
        self.register_buffer("active", torch.zeros(cap, dtype=torch.bool))
        self.register_buffer("gate_override", torch.ones(cap))
        for i in range(min(n_active, cap)):
            self.init_slot(i)

    @property
    def cost(self) -> int:
        """LoRA parameters of one rank: d_in + d_out."""
        return self.base.in_features + self.base.out_features

    @torch.no_grad()
    def init_slot(self, i: int) -> None:
        """Fresh LoRA init for slot i (A row Kaiming-uniform as peft, B column 0) and switch it on."""
        bound = 1.0 / math.sqrt(self.A.shape[1])  # kaiming_uniform(a=sqrt(5)) on a (1, d_in) row
        self.A[i].uniform_(-bound, bound)
        self.B[:, i] = 0.0
        self.active[i] = True

    def gates(self) -> torch.Tensor:
        """(cap,) multipliers of the rank slots."""
        return self.active.to(self.A.dtype) * self.gate_override

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.A.T  # (..., d_in) @ (d_in, cap) -> (..., cap)
        g = self.gates()
        if g.dim() == 2:  # G gate settings at once on a batch of G equal-sized groups of inputs
            z = (z.reshape(g.shape[0], -1, self.cap) * g[:, None, :]).reshape(z.shape)  # (G, n, cap)
        else:
            z = z * g
        return self.base(x) + self.scaling * (z @ self.B.T)  # (..., cap) @ (cap, d_out)

    @torch.no_grad()
    def exported(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (k, d_in), B (d_out, k)) of the slots with a nonzero gate, gates and scale folded into B."""
        g = self.gates()
        idx = torch.nonzero(self.active & (g != 0)).flatten()
        return self.A[idx].clone(), self.B[:, idx] * (self.scaling * g[idx])  # (d_out, k) * (k,)


def wrap_targets(model: nn.Module, cls: type[GatedLoraLinear], **kwargs) -> dict[str, GatedLoraLinear]:
    """Replace every LoRA target linear of `model` by `cls(base, **kwargs)`; freeze all but LoRA and head.

    Returns:
        The new layers by module path (e.g. `bert.encoder.layer.0.attention.self.query`).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = list(target_linears(model))
    layers = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = cls(getattr(parent, leaf), **kwargs)
        setattr(parent, leaf, layer)
        layers[name] = layer
    for p in getattr(model, HEAD_NAME).parameters():
        p.requires_grad_(True)
    return layers


def write_lora_folder(
    out: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], head: nn.Linear
) -> dict[str, int]:
    """Write a standard PEFT LoRA folder whose update for module m is exactly `B_m @ A_m`.

    Args:
        out: the folder (created).
        factors: module name -> (A (k, d_in), B (d_out, k)) with every scale and gate folded in; k = 0 leaves
            the module out (listed in exclude_modules). rank_pattern = alpha_pattern = k (scale 1).
        head: the trained classifier head, saved as modules_to_save.

    Returns:
        The rank per module (0 for modules left out).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, (A, B) in factors.items():
        ranks[name] = int(A.shape[0])
        if ranks[name]:
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A.detach().float().contiguous()  # (k, d_in)
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B.detach().float().contiguous()  # (d_out, k)
    kept = {name: k for name, k in ranks.items() if k}
    if not kept:
        raise ValueError("every module ended at rank 0; raise the budget (--budget-rank)")
    tensors[f"{PEFT_PREFIX}{HEAD_NAME}.weight"] = head.weight.detach().clone()
    tensors[f"{PEFT_PREFIX}{HEAD_NAME}.bias"] = head.bias.detach().clone()
    pattern = {pattern_key(name): k for name, k in kept.items()}  # anchored: exactly one module each
    config = LoraConfig(
        r=max(kept.values()),
        lora_alpha=max(kept.values()),
        target_modules=TARGET_MODULES,
        exclude_modules=[n for n, k in ranks.items() if not k] or None,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        modules_to_save=[HEAD_NAME],
        base_model_name_or_path=BASE_MODEL_NAME,
    )
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return ranks


def save_gated(model: nn.Module, layers: dict[str, GatedLoraLinear], out: Path) -> dict[str, int]:
    """Write the gated adapter (gates and scale folded into B, switched-off slots dropped) as PEFT LoRA."""
    return write_lora_folder(
        out, {name: layer.exported() for name, layer in layers.items()}, getattr(model, HEAD_NAME)
    )


def lora_modules(peft_model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA/AdaLoRA layers of a wrapped model by module path (without the `base_model.model.` prefix)."""
    found = {}
    for name, module in peft_model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if isinstance(lora_A, (nn.ModuleDict, nn.ParameterDict)) and "default" in lora_A:
            found[name.removeprefix(PEFT_PREFIX)] = module
    return found


def trained_head(peft_model: nn.Module) -> nn.Linear:
    """The trained copy of the classifier head inside a peft model (modules_to_save)."""
    wrapper = peft_model.get_submodule(f"{PEFT_PREFIX}{HEAD_NAME}")
    return wrapper.modules_to_save["default"]
