"""AdaLoRA through peft's AdaLoraConfig, with `update_and_allocate` called every step; saved as plain LoRA.

Budget: peft's target_r is the budget's uniform rank (target_r * n_modules triplets at the end), starting
from init_r = 1.5 * target_r as in AdaLoRA's scripts (12 -> 8), with the cubic schedule over the middle of
training (tinit = 10 %, tfinal = 20 % of the steps). peft counts ranks, not parameters, so if the final
ranks cost more parameters than the budget (FFN ranks cost 1920, attention ranks 768 on MiniLM), the
rank-one terms with the smallest norm |E_i| * |B_i| * |A_i| are dropped until it fits ("budget trim",
recorded in the run's details). peft adds the orthogonality regulariser only to outputs with `.loss`; our
classifier returns logits, so the same term (weight 0.1, as AdaLoRA's scripts) is added here.
Export: lora_E and the scale alpha / init_r folded into the factors, per-module ranks in rank_pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import AdaLoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.data import Example
from analysis.training.gated import lora_modules
from analysis.training.lora import StepCallback, TrainConfig, total_steps, train_loop
from analysis.training.model import BASE_MODEL_NAME, HEAD_NAME, TARGET_MODULES


@dataclass(frozen=True)
class AdaLoraSettings:
    init_ratio: float = 1.5
    """init_r = round(init_ratio * target_r)."""
    tinit_fraction: float = 0.1
    tfinal_fraction: float = 0.2
    orth_reg_weight: float = 0.1


def _orth_penalty(peft_model: nn.Module) -> torch.Tensor:
    """peft's AdaLoRA regulariser: mean over lora_A and lora_B of ||P P^T - I||_F."""
    terms = []
    for name, p in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p  # (r, r)
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype)))
    return torch.stack(terms).mean()


def _factors(peft_model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per module: (A (r, d_in) with E folded in, B (d_out, r) with the scale folded in, component norms (r,))."""
    out = {}
    with torch.no_grad():
        for name, layer in lora_modules(peft_model).items():
            A, E, B = layer.lora_A["default"], layer.lora_E["default"], layer.lora_B["default"]  # (r,d), (r,1), (o,r)
            scale = layer.scaling["default"] / (layer.ranknum["default"].item() + 1e-5)  # as peft's forward
            AE, Bs = A * E, B * scale  # (r, d_in), (d_out, r)
            out[name] = (AE, Bs, AE.norm(dim=1) * Bs.norm(dim=0))  # ||b_i a_i^T||_F = |a_i| |b_i|
    return out


def budget_trim(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], budget: int
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Keep the nonzero components, dropping the smallest-norm ones until the parameter count <= budget."""
    keep = {name: norms > 0 for name, (_, _, norms) in factors.items()}

    def cost(name: str) -> int:
        A, B, _ = factors[name]
        return A.shape[1] + B.shape[0]

    n_params = sum(int(k.sum()) * cost(n) for n, k in keep.items())
    trimmed = 0
    while n_params > budget:
        name, i = min(
            ((n, int(i)) for n, k in keep.items() for i in torch.nonzero(k).flatten()),
            key=lambda t: float(factors[t[0]][2][t[1]]),
        )
        keep[name][i] = False
        n_params -= cost(name)
        trimmed += 1
    return {n: (factors[n][0][keep[n]], factors[n][1][:, keep[n]]) for n in factors}, trimmed


def train_adalora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: TrainConfig,
    budget_rank: int,
    budget_params: int,
    *,
    settings: AdaLoraSettings = AdaLoraSettings(),
    on_step: StepCallback | None = None,
) -> tuple[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]], list[float], list[dict], dict]:
    """Train AdaLoRA to uniform-rank budget `budget_rank` (at most `budget_params` parameters at the end).

    Returns:
        The peft model, the exported factors per module, the loss curve, the rank trajectory, and details.
    """
    torch.manual_seed(config.seed)
    total = total_steps(len(train), config)
    init_r = max(budget_rank + 1, round(settings.init_ratio * budget_rank))
    scale = config.lora_alpha / config.r  # the run's alpha / rank (2 by default), kept at init_r
    peft_config = AdaLoraConfig(
        init_r=init_r, target_r=budget_rank, lora_alpha=scale * init_r, target_modules=TARGET_MODULES,
        modules_to_save=[HEAD_NAME], total_step=total, tinit=int(total * settings.tinit_fraction),
        tfinal=int(total * settings.tfinal_fraction), deltaT=1, orth_reg_weight=settings.orth_reg_weight,
    )  # fmt: skip
    peft_model = get_peft_model(model, peft_config)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
    modules = lora_modules(peft_model)
    names = sorted(modules)
    trajectory: list[dict] = []

    def allocate(step: int) -> None:
        peft_model.base_model.update_and_allocate(step)  # after optimizer.step(), before zero_grad()
        if step % max(1, total // 20) == 0 or step == total:
            with torch.no_grad():
                ranks = [int((modules[n].lora_E["default"] != 0).sum()) for n in names]
            trajectory.append({"step": step, "ranks": ranks})

    def orth() -> torch.Tensor:
        return settings.orth_reg_weight * _orth_penalty(peft_model)

    losses = train_loop(peft_model, tokenizer, train, config, on_step=on_step, extra_loss=orth, after_step=allocate)
    factors, trimmed = budget_trim(_factors(peft_model), budget_params)
    details = {"init_r": init_r, "target_r": budget_rank, "total_step": total, "budget_trimmed_components": trimmed}
    details |= {"modules": names, **{k: getattr(peft_config, k) for k in ("tinit", "tfinal", "deltaT", "lora_alpha")}}
    return peft_model, factors, losses, trajectory, details
