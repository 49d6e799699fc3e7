"""AdaLoRA (Zhang et al., ICLR 2023) through peft's AdaLoraConfig, `update_and_allocate` every step; saved as
plain LoRA.

Budget: peft's target_r is the budget's uniform rank (target_r * n_modules triplets at the end), starting
from init_r = 1.5 * target_r (AdaLoRA's BART scripts: 12 -> 8). The schedule follows the proportions of the
paper's own scripts, not their absolute step counts (MRPC: 600 / 1800 of ~3,450 steps; CoLA: 800 / 3500 of
~6,700): the budget stays at init for tinit = 15 % of the steps, falls on the cubic schedule, and is fixed
at its final value for the last tfinal = 50 % (recovery with the final ranks). beta1 = beta2 = 0.85 as in
the paper: the EMAs forget with a time constant of 1 / (1 - 0.85) ~ 6.7 steps, so tinit (30 of a 200-step
run) leaves < 1 % of their zero start (0.85^30) and masking every deltaT = 10 steps (CoLA's, STS-B's)
decides each time on a fresh window (80 % of the weight on the last 10 steps).

peft counts ranks, not parameters (an FFN rank costs 1920 parameters on MiniLM, an attention one 768), so
when the final ranks (fixed at step T - tfinal) cost more than the budget, the rank-one terms with the
smallest norm |E_i| |B_i| |A_i| are masked there too ("budget trim"), and the tfinal recovery steps train
with that mask; the record counts the trimmed terms, the step and the recovery steps. peft adds the
orthogonality regulariser only to outputs with `.loss`; our classifier returns logits, so the same term
(weight 0.1, as AdaLoRA's scripts) is added here. Export: lora_E and the scale alpha / init_r folded into the
factors, per-module ranks in rank_pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import AdaLoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.adapters import PEFT_PREFIX
from analysis.training.data import Example
from analysis.training.gated import lora_modules
from analysis.training.lora import StepCallback, TrainConfig, total_steps, train_loop
from analysis.training.model import BASE_MODEL_NAME, HEAD_NAME, TARGET_MODULES


@dataclass(frozen=True)
class AdaLoraSettings:
    init_ratio: float = 1.5
    """init_r = round(init_ratio * target_r)."""
    tinit_fraction: float = 0.15
    tfinal_fraction: float = 0.5
    delta_t: int = 10
    """Steps between masking decisions (fewer when the falling phase is short: at least 5 decisions)."""
    beta: float = 0.85
    """beta1 = beta2 of the sensitivity and uncertainty EMAs."""
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
    keep, trimmed = budget_mask(factors, budget)
    return {n: (factors[n][0][keep[n]], factors[n][1][:, keep[n]]) for n in factors}, trimmed


def budget_mask(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], budget: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Which components `budget_trim` keeps, per module a (r,) boolean mask, and how many it drops."""
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
    return keep, trimmed


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
    tinit, tfinal = int(total * settings.tinit_fraction), int(total * settings.tfinal_fraction)
    delta_t = max(1, min(settings.delta_t, (total - tinit - tfinal) // 5))
    peft_config = AdaLoraConfig(
        init_r=init_r, target_r=budget_rank, lora_alpha=scale * init_r, target_modules=TARGET_MODULES,
        modules_to_save=[HEAD_NAME], total_step=total, tinit=tinit, tfinal=tfinal, deltaT=delta_t,
        beta1=settings.beta, beta2=settings.beta, orth_reg_weight=settings.orth_reg_weight,
    )  # fmt: skip
    peft_model = get_peft_model(model, peft_config)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
    modules = lora_modules(peft_model)
    names = sorted(modules)
    trajectory: list[dict] = []
    trim: dict = {"budget_trimmed_components": 0, "trim_step": None, "recovery_steps": 0}

    def allocate(step: int) -> None:
        peft_model.base_model.update_and_allocate(step)  # after optimizer.step(), before zero_grad()
        if step == total - tfinal and tfinal > 0:  # the final ranks are fixed now: fit them to the budget
            trim.update(_trim_in_training(peft_model, budget_params), trim_step=step, recovery_steps=tfinal)
        if step % max(1, total // 20) == 0 or step == total:
            with torch.no_grad():
                ranks = [int((modules[n].lora_E["default"] != 0).sum()) for n in names]
            trajectory.append({"step": step, "ranks": ranks})

    def orth() -> torch.Tensor:
        return settings.orth_reg_weight * _orth_penalty(peft_model)

    losses = train_loop(peft_model, tokenizer, train, config, on_step=on_step, extra_loss=orth, after_step=allocate)
    factors, trimmed_at_end = budget_trim(_factors(peft_model), budget_params)  # 0 unless tfinal = 0
    details = {"init_r": init_r, "target_r": budget_rank, "total_step": total, **trim}
    details["budget_trimmed_after_training"] = trimmed_at_end
    keys = ("tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "lora_alpha")
    details |= {"modules": names, **{k: getattr(peft_config, k) for k in keys}}
    return peft_model, factors, losses, trajectory, details


def _trim_in_training(peft_model: nn.Module, budget_params: int) -> dict:
    """Mask (in lora_E and in peft's rank_pattern, which peft re-applies every later step) the smallest-norm
    terms until the kept ranks cost at most `budget_params`; returns how many were masked."""
    keep, trimmed = budget_mask(_factors(peft_model), budget_params)
    if trimmed:
        config = peft_model.peft_config["default"]
        modules = lora_modules(peft_model)
        with torch.no_grad():
            for name, mask in keep.items():
                E = modules[name].lora_E["default"]  # (r, 1)
                E.masked_fill_(~mask.unsqueeze(-1), 0.0)
                for key in config.rank_pattern or {}:
                    if key.removeprefix(PEFT_PREFIX).startswith(f"{name}.lora_E"):
                        config.rank_pattern[key] = mask.tolist()
    return {"budget_trimmed_components": trimmed}
