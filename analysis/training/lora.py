"""Fixed-rank LoRA training ("train high" for PARA) on a real task, through HF Accelerate.

`train_lora` fine-tunes the base model with peft's LoraConfig at one rank everywhere and returns the
trained PeftModel with its loss curve. The same loop runs on several GPUs with `accelerate launch`.
No streamlit, no printing: progress goes through `on_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.data import Example
from analysis.training.model import BASE_MODEL_NAME, HEAD_NAME, MAX_LENGTH, TARGET_MODULES

StepCallback = Callable[[int, int, float], None]
"""on_step(step, total_steps, loss); loss is NaN for steps that compute none."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one fixed-rank run."""

    r: int = 32
    """LoRA rank of every module."""
    lora_alpha: float = 64.0
    """Scale alpha / r = 2 (the common alpha = 2r)."""
    epochs: float = 3.0
    lr: float = 5e-4
    batch_size: int = 32
    max_length: int = MAX_LENGTH
    seed: int = 0
    max_steps: int | None = None
    """Stop early after this many steps (tests)."""
    warmup_fraction: float = 0.06
    """Linear warm-up over this share of the steps, then linear decay to 0 (ALoRA's paper: 6 %); one schedule
    per run, whatever a method does between steps."""
    constant_lr: bool = False
    """Keep the learning rate at `lr` throughout instead (no warm-up, no decay)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


@dataclass
class TrainResult:
    model: PeftModel
    loss_curve: list[float] = field(default_factory=list)
    """Task loss of every optimizer step, in order."""


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def batches(examples: Sequence[Example], batch_size: int, *, seed: int | None) -> list[list[Example]]:
    """Fixed-size batches, shuffled with `seed` (None keeps order)."""
    order = list(range(len(examples)))
    if seed is not None:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[examples[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def lora_config(r: int, lora_alpha: float, **extra: object) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=TARGET_MODULES, modules_to_save=[HEAD_NAME], **extra)


def total_steps(n_train: int, config: TrainConfig) -> int:
    """Optimizer steps of a run: `epochs` passes over `n_train` examples in batches, capped by max_steps."""
    total = int(config.epochs * math.ceil(n_train / config.batch_size))
    return min(total, config.max_steps) if config.max_steps is not None else total


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Multiplier of the learning rate before optimizer step `step` (0-based) of `total`: warm-up, linear decay."""
    if config.constant_lr:
        return 1.0
    warmup = max(1, round(config.warmup_fraction * total)) if config.warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_loop(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: TrainConfig,
    *,
    on_step: StepCallback | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    param_groups: list[dict] | None = None,
    on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
) -> list[float]:
    """AdamW over the trainable parameters with cross-entropy; returns the task loss of every step.

    One optimizer and one learning-rate schedule (`lr_factor`) for the whole run.

    Args:
        model: the classifier with its LoRA layers.
        tokenizer: its tokenizer.
        train: training examples.
        config: schedule, batch size and learning rate.
        on_step: progress callback.
        extra_loss: a regulariser added to each step's loss (LR-LoRA's budget penalty, AdaLoRA's
            orthogonality term); the curve records the task loss alone.
        after_step: `after_step(step)` runs after `optimizer.step()` and before `zero_grad()`, so the
            gradients are still there (AdaLoRA's update_and_allocate needs them).
        param_groups: AdamW parameter groups instead of all trainable parameters at `config.lr`.
        on_optimizer: receives the (unwrapped) AdamW once it exists (ALoRA resets the state of re-added ranks).
    """
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups or params, lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = getattr(optimizer, "optimizer", optimizer)
    base_lrs = [group["lr"] for group in inner.param_groups]
    if on_optimizer is not None:
        on_optimizer(inner)
    n_epochs = math.ceil(config.epochs)
    total = total_steps(len(train), config)
    losses: list[float] = []
    step = 0
    model.train()
    for epoch in range(n_epochs):
        for batch in batches(train, config.batch_size, seed=config.seed + epoch):
            if step >= total:
                break
            inputs = encode(tokenizer, [e.text for e in batch], config.max_length)
            labels = torch.tensor([e.label for e in batch], device=accelerator.device)
            logits = model(inputs["input_ids"].to(accelerator.device), inputs["attention_mask"].to(accelerator.device))
            loss = nn.functional.cross_entropy(logits, labels)
            losses.append(float(loss.detach()))
            if extra_loss is not None:
                loss = loss + extra_loss()
            accelerator.backward(loss)
            for group, base in zip(inner.param_groups, base_lrs, strict=True):
                group["lr"] = base * lr_factor(step, total, config)
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(step)
            optimizer.zero_grad()
            if on_step is not None:
                on_step(step, total, losses[-1])
    model.eval()
    return losses


def train_lora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: TrainConfig,
    *,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Fine-tune `model` with fixed-rank LoRA on `train`.

    Args:
        model: a SentenceClassifier (MiniLM or a tiny test BERT); wrapped with peft here.
        tokenizer: its tokenizer.
        train: training examples.
        config: rank, alpha, schedule.
        on_step: progress callback.

    Returns:
        The trained PeftModel (eval mode) and the loss curve.
    """
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora_config(config.r, config.lora_alpha, init_lora_weights=True))
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
    return TrainResult(peft_model, train_loop(peft_model, tokenizer, train, config, on_step=on_step))


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    max_length: int = MAX_LENGTH,
    on_step: StepCallback | None = None,
) -> tuple[float, float, list[int]]:
    """Accuracy, mean cross-entropy and the predicted label of every example, in order (eval mode, fixed order)."""
    model.eval()
    loss_sum, predictions = 0.0, []
    chunks = batches(examples, batch_size, seed=None)
    for i, batch in enumerate(chunks):
        inputs = encode(tokenizer, [e.text for e in batch], max_length)
        labels = torch.tensor([e.label for e in batch])
        logits = model(inputs["input_ids"], inputs["attention_mask"])
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        predictions += logits.argmax(-1).tolist()
        if on_step is not None:
            on_step(i + 1, len(chunks), loss_sum / max(1, sum(len(b) for b in chunks[: i + 1])))
    n = max(len(examples), 1)
    correct = sum(p == e.label for p, e in zip(predictions, examples, strict=True))
    return correct / n, loss_sum / n, predictions


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    max_length: int = MAX_LENGTH,
    on_step: StepCallback | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of `model` on `examples` (deterministic: eval mode, fixed order)."""
    accuracy, loss, _ = predict(model, tokenizer, examples, batch_size=batch_size, max_length=max_length,
                                on_step=on_step)  # fmt: skip
    return accuracy, loss
