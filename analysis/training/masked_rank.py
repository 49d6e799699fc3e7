"""masked_rank: OUR OWN learned-rank method, kept as an ablation beside LR-LoRA; it is not LR-LoRA's method.

Written when only LR-LoRA's abstract was public (the rank of each layer is learned by the optimizer), before its
mechanism (a sinc nonlinearity on B @ A, analysis/training/lr_lora.py) was known. Each module has a continuous
rank rho, and rank slot i is gated by the smooth, monotone mask sigmoid((rho - i - 0.5) / T), so slot i is on
while i < rho. rho is trained jointly with the factors under a hinge penalty on the expected parameter count,
sum_m (in + out) * sum_i mask_i, above the budget, so the optimizer trades rank for loss. Final rank = round(rho);
slots beyond it are dropped (and the budget is enforced by lowering the module whose boundary slot is least on).
rho gets its own Adam step size (by default capacity / total steps, so a rho whose gradient keeps its sign can
cross every slot once in a run) and no weight decay. As an ablation it asks whether a learned per-module rank
alone (linear update, integer ranks within the budget) does what LR-LoRA's learned nonlinearity does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.data import Example
from analysis.training.gated import GatedLoraLinear, wrap_targets
from analysis.training.lora import StepCallback, TrainConfig, total_steps, train_loop


@dataclass(frozen=True)
class MaskedRankConfig:
    capacity: int = 16
    """Rank slots per module (the largest learnable rank)."""
    rho_init: float = 8.0
    """Start at the budget's uniform rank: inside the budget, so the loss moves rho first."""
    temperature: float = 0.5
    penalty: float = 5.0
    """Weight of the relative excess of expected parameters over the budget."""
    rho_lr: float | None = None
    """Learning rate of rho in rank units per step (an Adam step is about lr in size whatever the gradient).
    None: capacity / total steps, so a rho whose gradient keeps its sign can cross every slot once in a run."""


class LearnedRankLinear(GatedLoraLinear):
    """Gated LoRA whose gates come from a learned continuous rank."""

    def __init__(self, base: nn.Linear, cap: int, scaling: float, rho_init: float, temperature: float) -> None:
        super().__init__(base, cap, cap, scaling)
        self.rho = nn.Parameter(torch.tensor(float(rho_init)))
        self.temperature = temperature
        self.register_buffer("slots", torch.arange(cap, dtype=torch.float32) + 0.5)

    def mask(self) -> torch.Tensor:
        return torch.sigmoid((self.rho - self.slots) / self.temperature)  # (cap,), monotone in the slot index

    def gates(self) -> torch.Tensor:
        return self.active.to(self.A.dtype) * self.mask() * self.gate_override


def expected_params(layers: dict[str, LearnedRankLinear]) -> torch.Tensor:
    return sum(layer.cost * layer.mask().sum() for layer in layers.values())


def finalize_ranks(layers: dict[str, LearnedRankLinear], budget: int) -> dict[str, int]:
    """Round each rho, enforce the budget, and switch off the slots beyond each final rank."""
    ranks = {n: int(torch.clamp(layer.rho.detach().round(), 0, layer.cap)) for n, layer in layers.items()}
    while sum(ranks[n] * layers[n].cost for n in layers) > budget:
        # lower the module whose last kept slot is least on (its mask value is the smallest)
        name = min((n for n in layers if ranks[n] > 0), key=lambda n: float(layers[n].mask()[ranks[n] - 1]))
        ranks[name] -= 1
    with torch.no_grad():
        for name, layer in layers.items():
            layer.active[ranks[name] :] = False
    return ranks


def train_masked_rank(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: TrainConfig,
    settings: MaskedRankConfig,
    budget: int,
    *,
    on_step: StepCallback | None = None,
) -> tuple[dict[str, LearnedRankLinear], list[float], list[dict]]:
    """Train with learnable ranks under a parameter budget; returns layers, loss curve, rank trajectory."""
    torch.manual_seed(config.seed)
    scaling = config.lora_alpha / config.r  # the run's alpha / r (2 with alpha = 2r): every method's scale
    layers = wrap_targets(model, LearnedRankLinear, cap=settings.capacity, scaling=scaling,
                          rho_init=settings.rho_init, temperature=settings.temperature)  # fmt: skip
    rhos = [layer.rho for layer in layers.values()]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not r for r in rhos)]
    # rho moves in rank units: its own learning rate (Adam ignores gradient scale) and no weight decay, which
    # would otherwise pull every rank down by lr * decay * rho per step whatever the loss says
    rho_lr = settings.rho_lr or settings.capacity / max(1, total_steps(len(train), config))
    groups = [{"params": others}, {"params": rhos, "lr": rho_lr, "weight_decay": 0.0}]
    trajectory: list[dict] = []

    def penalty() -> torch.Tensor:
        return settings.penalty * torch.relu(expected_params(layers) / budget - 1.0)

    names = sorted(layers)

    def record(step: int) -> None:
        if step % 10 == 0 or step == 1:
            rho = [float(layers[n].rho.detach()) for n in names]
            ranks = [int(min(max(round(r), 0), settings.capacity)) for r in rho]
            expected = round(float(expected_params(layers).detach()))
            trajectory.append(
                {"step": step, "ranks": ranks, "rho": [round(r, 3) for r in rho], "expected_params": expected}
            )

    losses = train_loop(
        model, tokenizer, train, config, on_step=on_step, extra_loss=penalty, after_step=record, param_groups=groups
    )
    ranks = finalize_ranks(layers, budget)
    trajectory.append({"step": len(losses), "ranks": [ranks[n] for n in names], "final": True})
    return layers, losses, trajectory
