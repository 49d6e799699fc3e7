"""peft's `target_parameters`: LoRA on `nn.Parameter`s such as a stacked MoE expert weight (E, in, out), through
peft's `lora.ParamWrapper`. One wrapper holds A (r * E, in) and B (out, r * E) and applies one rank-r update
per expert: expert e's update is B[:, e::E] @ A[e*r:(e+1)*r] times the wrapper's scale. So each expert is one
module of the cut, named `<wrapper>.expert_<e>`, and an export writes the wrapper back in that layout, every
expert padded with zeros to the export's common rank r (peft gives all experts of a wrapper one rank).
No streamlit, no prints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from analysis.formats.base import PEFT_PREFIX, LoraModule
from analysis.patterns import MatchBudget
from analysis.safe_io import AdapterError


def parameter_keys(config: Mapping[str, Any], name: str) -> list[str]:
    """The `target_parameters` entries a wrapper module `name` stands for, as `<module>.<parameter>` (peft matches
    the module path without its `.base_layer`s, by equality or dotted suffix); [] for an ordinary module."""
    targets = config.get("target_parameters") or []
    path = name.replace(".base_layer", "")
    keys = []
    for target in targets if isinstance(targets, list) else []:
        key = f"{path}.{str(target).rpartition('.')[2]}"
        if key == target or key.endswith(f".{target}"):
            keys.append(key)
    return keys


def split_experts(
    file: Path, config: Mapping[str, Any], name: str, A: torch.Tensor, B: torch.Tensor, budget: MatchBudget
) -> list[LoraModule] | None:
    """One module per expert of a ParamWrapper's factors, or None if `name` is no wrapper of a target parameter.

    Raises:
        AdapterError: the parameters one module wraps have different ranks or alphas in the config (which
            tensor is which parameter is then unknown), or the factors do not split into experts of that rank.
    """
    from analysis.formats.peft import pattern_value  # the pattern rule lives with the peft reader

    keys = parameter_keys(config, name)
    if not keys:
        return None
    if A.ndim != 2 or B.ndim != 2:
        raise AdapterError(f"{file}: target parameter module {name} has factors {tuple(A.shape)}, {tuple(B.shape)}")

    def rank_alpha(key: str) -> tuple[int, float]:
        rank = pattern_value(config.get("rank_pattern") or {}, key, budget)
        alpha = pattern_value(config.get("alpha_pattern") or {}, key, budget)
        return (int(rank[1]) if rank else int(config.get("r", 8)),
                float(alpha[1]) if alpha else float(config.get("lora_alpha", 8)))  # fmt: skip

    found = {rank_alpha(key) for key in keys}
    if len(found) > 1:
        raise AdapterError(
            f"{file}: module {name} wraps the target parameters {', '.join(keys)} whose rank / alpha differ in the "
            "config, so which tensors belong to which parameter is unknown; give them one r and lora_alpha"
        )
    ((r, alpha),) = found
    if r <= 0 or A.shape[0] % r or B.shape[1] != A.shape[0]:
        raise AdapterError(
            f"{file}: target parameter module {name} has A {tuple(A.shape)} and B {tuple(B.shape)}, which do not "
            f"split into experts of rank {r} (A: r * experts rows); fix r / rank_pattern in adapter_config.json"
        )
    n_experts = A.shape[0] // r
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return [
        LoraModule(
            f"{name}.expert_{e}",
            A[e * r : (e + 1) * r].contiguous(),  # (r * E, in) -> expert e's (r, in)
            B[:, e::n_experts].contiguous(),  # (out, r * E): column j * E + e is expert e's j-th
            scaling,
            "linear",
            (B.shape[0], A.shape[1]),
            alpha,
            expert=(name, e, n_experts),
        )
        for e in range(n_experts)
    ]


def expert_tensors(
    modules: Sequence[LoraModule], factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], rank: int
) -> dict[str, torch.Tensor]:
    """Each wrapper's A (rank * E, in) and B (out, rank * E) for peft, every expert's kept factors (scale
    folded in) padded with zeros to `rank`; an expert cut to rank 0 is all zeros (peft builds every expert)."""
    tensors: dict[str, torch.Tensor] = {}
    for m in modules:
        wrapper, e, n_experts = m.expert  # type: ignore[misc]
        key = f"{PEFT_PREFIX}{wrapper}"
        if f"{key}.lora_A.weight" not in tensors:
            dtype = m.A.dtype if m.A.is_floating_point() else torch.float32
            tensors[f"{key}.lora_A.weight"] = torch.zeros(rank * n_experts, m.in_features, dtype=dtype)
            tensors[f"{key}.lora_B.weight"] = torch.zeros(m.out_features, rank * n_experts, dtype=dtype)
        if m.name in factors:
            B_k, A_k = factors[m.name]
            k = A_k.shape[0]
            tensors[f"{key}.lora_A.weight"][e * rank : e * rank + k] = A_k  # rows of expert e
            tensors[f"{key}.lora_B.weight"][:, e : k * n_experts : n_experts] = B_k  # columns j * E + e, j < k
    return tensors
