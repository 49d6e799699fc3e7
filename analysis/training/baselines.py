"""Reference points for a task, on its test split: the majority class and a frozen-encoder linear probe.

The probe is MiniLM with no LoRA: mean-pooled embeddings of the frozen encoder, and a linear head trained on
the train split (full-batch L-BFGS, weight decay picked on the validation split). It tells how much of a
run's accuracy comes from adapting the encoder rather than from the head alone. No streamlit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from analysis.training.data import Example, TaskData
from analysis.training.lora import StepCallback, batches, encode
from analysis.training.model import MAX_LENGTH, SentenceClassifier

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
"""L2 penalties tried for the probe's head; the best on the validation split is reported."""


@dataclass(frozen=True)
class Baselines:
    """Test accuracy of the reference points (and the probe's validation accuracy and chosen penalty)."""

    majority_test_accuracy: float
    probe_test_accuracy: float
    probe_validation_accuracy: float
    probe_weight_decay: float


def majority_accuracy(train: Sequence[Example], test: Sequence[Example]) -> float:
    """Accuracy on `test` of always answering the most frequent label of `train`."""
    counts = torch.bincount(torch.tensor([e.label for e in train]))
    majority = int(counts.argmax())
    return sum(e.label == majority for e in test) / max(len(test), 1)


@torch.no_grad()
def embed(model: SentenceClassifier, tokenizer, examples: Sequence[Example], *, on_step: StepCallback | None = None):
    """Mean-pooled frozen-encoder embeddings (n, hidden) and labels (n,) of `examples`, in order."""
    model.eval()
    chunks = batches(examples, 128, seed=None)
    out = []
    for i, batch in enumerate(chunks):
        inputs = encode(tokenizer, [e.text for e in batch], MAX_LENGTH)
        hidden = model.bert(**inputs).last_hidden_state  # (b, t, h)
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))  # (b, h)
        if on_step is not None:
            on_step(i + 1, len(chunks), float("nan"))  # no loss: embedding only
    return torch.cat(out), torch.tensor([e.label for e in examples])


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_labels: int, weight_decay: float) -> nn.Linear:
    """Multinomial logistic regression on fixed features: full-batch L-BFGS on cross-entropy + L2."""
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], n_labels)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.square().sum()  # (n, h) @ (h, c)
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def _accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(x).argmax(-1) == y).float().mean())


def task_baselines(
    model: SentenceClassifier, tokenizer, task: TaskData, *, on_step: StepCallback | None = None
) -> Baselines:
    """Majority class and frozen linear probe on `task` (the probe's penalty chosen on validation).

    Args:
        model: a classifier whose `bert` encoder is used frozen (its head is ignored).
        tokenizer: its tokenizer.
        task: the task's splits.
        on_step: progress over the embedding batches of the three splits.
    """
    features = {name: embed(model, tokenizer, task.split(name), on_step=on_step) for name in TaskData.SPLITS}
    fits = [(fit_probe(*features["train"], len(task.labels), wd), wd) for wd in WEIGHT_DECAYS]
    scored = [(_accuracy(head, *features["validation"]), -wd, head, wd) for head, wd in fits]
    val_acc, _, head, wd = max(scored, key=lambda t: (t[0], t[1]))  # ties -> the stronger penalty
    return Baselines(
        majority_test_accuracy=majority_accuracy(task.train, task.test),
        probe_test_accuracy=_accuracy(head, *features["test"]),
        probe_validation_accuracy=val_acc,
        probe_weight_decay=wd,
    )
