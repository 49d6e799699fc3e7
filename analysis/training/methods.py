"""The training methods behind one interface, and the registry of their ids (used by the CLI and the app).

Every method trains under a parameter budget (the LoRA parameter count of uniform rank `budget_rank`, or an
explicit count) and writes a standard PEFT LoRA folder (LR-LoRA: its own record, which the engine reads as
dense-update modules); adaptive methods end within the budget with non-uniform ranks and return their rank
trajectory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.adalora import train_adalora
from analysis.training.alora import AloraConfig, train_alora
from analysis.training.data import TaskData
from analysis.training.gated import save_gated, trained_head, write_lora_folder
from analysis.training.lora import StepCallback, TrainConfig, train_lora
from analysis.training.lr_lora import LrLoraConfig, save_lr_lora, train_lr_lora
from analysis.training.masked_rank import MaskedRankConfig, train_masked_rank
from analysis.training.model import HEAD_NAME, target_linears


@dataclass(frozen=True)
class Budget:
    """A LoRA parameter budget and the uniform rank it corresponds to."""

    params: int
    rank: int
    """The uniform rank whose parameter count is `params` (or the largest one within it)."""


@dataclass
class MethodResult:
    """What a method reports besides the folder it wrote."""

    losses: list[float]
    ranks: dict[str, int]
    """Final rank of every target module (0 = dropped)."""
    trajectory: list[dict] = field(default_factory=list)
    """[{"step": s, "ranks": [...in sorted module order...], ...}] for adaptive methods."""
    details: dict = field(default_factory=dict)


class TrainingMethod(Protocol):
    """Train `model` on `task.train` within `budget` and write a standard PEFT LoRA folder to `out`."""

    def __call__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: TaskData, config: TrainConfig,
        budget: Budget, out: Path, on_step: StepCallback | None,
    ) -> MethodResult: ...  # fmt: skip


def rank_cost(model: nn.Module) -> int:
    """LoRA parameters of one rank on every target module: sum of d_in + d_out."""
    return sum(m.in_features + m.out_features for m in target_linears(model).values())


def resolve_budget(model: nn.Module, *, rank: int | None = None, params: int | None = None) -> Budget:
    """The budget from a uniform rank or an explicit parameter count (exactly one).

    Raises:
        ValueError: for neither/both, or a budget below one rank everywhere or above full rank.
    """
    per_rank = rank_cost(model)
    max_rank = min(min(m.in_features, m.out_features) for m in target_linears(model).values())
    if (rank is None) == (params is None):
        raise ValueError("give exactly one budget: --budget-rank R or --budget-params N")
    if rank is not None:
        if not 1 <= rank <= max_rank:
            raise ValueError(f"--budget-rank must be between 1 and {max_rank} for this model, got {rank}")
        return Budget(rank * per_rank, rank)
    assert params is not None
    if not per_rank <= params <= max_rank * per_rank:
        raise ValueError(
            f"--budget-params must be between {per_rank:,} (uniform rank 1) and {max_rank * per_rank:,} "
            f"(full rank) for this model, got {params:,}"
        )
    return Budget(params, params // per_rank)


def _lora(model, tokenizer, task, config, budget, out, on_step) -> MethodResult:
    """Fixed rank everywhere: the budget's uniform rank (alpha = 2r as the CLI sets it)."""
    names = list(target_linears(model))  # before peft replaces the layers
    result = train_lora(model, tokenizer, task.train, replace(config, r=budget.rank), on_step=on_step)
    # False, not peft's "auto": auto asks the Hub for the base model's config.json (no embeddings are tuned)
    result.model.save_pretrained(out, save_embedding_layers=False)
    return MethodResult(result.loss_curve, {n: budget.rank for n in names})


def _adalora(model, tokenizer, task, config, budget, out, on_step) -> MethodResult:
    peft_model, factors, losses, trajectory, details = train_adalora(
        model, tokenizer, task.train, config, budget.rank, budget.params, on_step=on_step
    )
    ranks = write_lora_folder(out, factors, trained_head(peft_model))
    return MethodResult(losses, ranks, trajectory, details)


def _alora(model, tokenizer, task, config, budget, out, on_step) -> MethodResult:
    """ALoRA under the paper's rank budget (uniform rank x modules); the scoring batch is 32 validation
    examples, or half the split when it is smaller (recorded)."""
    settings = AloraConfig(r_init=budget.rank, val_batch=min(32, len(task.validation) // 2))
    layers, losses, trajectory, details = train_alora(
        model, tokenizer, task.train, task.validation, config, settings, on_step=on_step
    )
    ranks = save_gated(model, layers, out)
    return MethodResult(losses, ranks, trajectory, details)


def _lr_lora(model, tokenizer, task, config, budget, out, on_step) -> MethodResult:
    """LR-LoRA at the largest uniform rank whose trained parameters, r (in + out) + 2K per module, fit the budget;
    alpha keeps the run's scale (alpha / r = 2 with the default alpha = 2 * budget rank)."""
    settings = LrLoraConfig()
    n_modules = len(target_linears(model))
    r = (budget.params - settings.n_params_per_module * n_modules) // rank_cost(model)
    if r < 1:
        raise ValueError(f"the budget ({budget.params:,} parameters) is below LR-LoRA at rank 1; raise --budget-rank")
    scale = config.lora_alpha / config.r
    layers, losses, trajectory = train_lr_lora(
        model, tokenizer, task.train, replace(config, r=r, lora_alpha=scale * r), settings, on_step=on_step
    )
    save_lr_lora(out, layers, getattr(model, HEAD_NAME), settings)
    final = dict(zip(sorted(layers), trajectory[-1]["stable_rank"], strict=True))
    # the learned rank is the stable rank of dW (continuous); allocation.json holds it rounded
    ranks = {name: round(value) for name, value in final.items()}
    details = {"modules": sorted(layers), "r": r, "lora_alpha": scale * r, "stable_rank": final,
               "learned_rank": "stable rank of dW, rounded in allocation.json", **asdict(settings)}  # fmt: skip
    return MethodResult(losses, ranks, trajectory, details)


def _masked_rank(model, tokenizer, task, config, budget, out, on_step) -> MethodResult:
    """Our learned-rank-mask ablation (not LR-LoRA): continuous ranks gating 2x the budget's rank slots."""
    settings = MaskedRankConfig(capacity=2 * budget.rank, rho_init=float(budget.rank))
    layers, losses, trajectory = train_masked_rank(
        model, tokenizer, task.train, config, settings, budget.params, on_step=on_step
    )
    ranks = save_gated(model, layers, out)
    return MethodResult(losses, ranks, trajectory, {"modules": sorted(layers), **settings.__dict__})


METHODS: dict[str, TrainingMethod] = {
    "lora": _lora, "alora": _alora, "lr_lora": _lr_lora, "adalora": _adalora, "masked_rank": _masked_rank,
}  # fmt: skip
"""Method id -> implementation. `alora` is Allocating LoRA (arXiv 2403.16187), not peft's Activated LoRA;
`masked_rank` is our own ablation, not from a paper."""
