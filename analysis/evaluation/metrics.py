"""Perplexity and accuracy of a model on the user's data, and the data prepared for them.

Causal LMs: each document's tokens are cut into consecutive chunks of `seq_len` (a short tail is dropped), and a
seeded sample of `max_chunks` of them is scored (every predicted token counts). Classifiers: accuracy and mean
cross-entropy over every labelled row, in file order. Deterministic (eval mode, fixed order). No streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.evaluation.base_model import BaseModel, TaskKind
from analysis.evaluation.data import DataError, LabelledData, read_labelled, read_texts

ProgressCallback = Callable[[int, int], None]
"""on_step(done, total) after each batch."""


@dataclass(frozen=True)
class EvalSettings:
    """How the data is cut and scored (the defaults reproduce the bundled SmolLM2 run's held-out figures)."""

    seq_len: int = 64
    """Causal LM: tokens per chunk (seq_len - 1 predicted tokens each)."""
    max_chunks: int = 128
    """Causal LM: chunks scored at most, a seeded sample of all the file's chunks."""
    seed: int = 0
    """Seed of that sample: same file, same seed, same chunks."""
    max_length: int = 128
    """Classification: tokens per text (longer texts are truncated)."""
    batch_size: int = 16
    label_names: tuple[str, ...] | None = None
    """Classification: the name of each class id, when the file's labels are names and the model has none."""

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (one predicted token), got {self.seq_len}")
        for name in ("max_chunks", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalData:
    """The user's data, tokenized and ready to score."""

    task: TaskKind
    source: str
    settings: EvalSettings
    chunks: torch.Tensor | None = None
    """Causal LM: (n, seq_len) token ids."""
    n_all_chunks: int = 0
    """Causal LM: chunks in the whole file (the sample is drawn from these)."""
    labelled: LabelledData | None = None

    @property
    def n_examples(self) -> int:
        return len(self.chunks) if self.chunks is not None else len(self.labelled.texts) if self.labelled else 0

    @property
    def n_tokens(self) -> int:
        """Causal LM: predicted tokens scored; classification: 0 (rows are counted instead)."""
        return self.n_examples * (self.settings.seq_len - 1) if self.chunks is not None else 0

    def describe(self) -> str:
        """One line saying what is scored, e.g. '128 chunks of 64 tokens (8,064 predicted tokens, seed 0) ...'."""
        name = Path(self.source).name
        if self.chunks is not None:
            return (
                f"{self.n_examples:,} chunks of {self.settings.seq_len} tokens ({self.n_tokens:,} predicted tokens, "
                f"seed {self.settings.seed}) of the {self.n_all_chunks:,} in {name}"
            )
        classes = len(self.labelled.label_names) if self.labelled else 0
        limit = self.settings.max_length
        return f"{self.n_examples:,} labelled texts in {name} ({classes} classes, up to {limit} tokens each)"


def token_chunks(tokenizer: object, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Each text's tokens cut into consecutive chunks of `seq_len` (a shorter tail is dropped): (n, seq_len)."""
    rows: list[list[int]] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        rows += [ids[s : s + seq_len] for s in range(0, len(ids) - seq_len + 1, seq_len)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, seq_len)  # (n_chunks, seq_len)


def sample_chunks(chunks: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded sample of `n` chunks (all of them, reordered, when there are fewer)."""
    pick = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed))
    return chunks[pick[:n]]


def prepare_data(base: BaseModel, path: str | Path, settings: EvalSettings = EvalSettings()) -> EvalData:
    """Read and tokenize a data file for `base`'s task.

    Raises:
        DataError: a file that cannot be read, no text / label column, bad labels, too little text for a chunk.
    """
    if base.task == "causal-lm":
        chunks = token_chunks(base.tokenizer, read_texts(path), settings.seq_len)
        if len(chunks) == 0:
            raise DataError(
                f"{path}: no document has {settings.seq_len} tokens, so no chunk can be scored; give more text "
                "or a shorter --seq-len"
            )
        picked = sample_chunks(chunks, settings.max_chunks, settings.seed)
        return EvalData("causal-lm", str(path), settings, chunks=picked, n_all_chunks=len(chunks))
    n_labels = int(base.model.config.num_labels)
    names = settings.label_names or model_label_names(base)
    if names is not None and len(names) != n_labels:
        raise DataError(f"{path}: {len(names)} label names for a model of {n_labels} classes; give {n_labels} names")
    labelled = read_labelled(path, n_labels=n_labels, label_names=names)
    return EvalData("classification", str(path), settings, labelled=labelled)


def model_label_names(base: BaseModel) -> tuple[str, ...] | None:
    """The model config's class names, None when they are transformers' defaults (LABEL_0, LABEL_1, ...)."""
    id2label = getattr(base.model.config, "id2label", None) or {}
    names = tuple(str(id2label[i]) for i in sorted(id2label, key=int))
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, chunks: torch.Tensor, *, batch_size: int = 16, on_step: ProgressCallback | None = None
) -> tuple[float, float]:
    """(exp(mean next-token cross-entropy), that mean) over every predicted token of `chunks` (n, seq_len)."""
    model.eval()
    device = next(model.parameters()).device
    nll, n_tokens = 0.0, 0
    n_batches = math.ceil(len(chunks) / batch_size)
    for i, start in enumerate(range(0, len(chunks), batch_size)):
        ids = chunks[start : start + batch_size].to(device)  # (b, t)
        n = ids.shape[0] * (ids.shape[1] - 1)  # the model predicts tokens 1..t-1 of each row
        nll += float(model(input_ids=ids, labels=ids).loss.float()) * n
        n_tokens += n
        if on_step is not None:
            on_step(i + 1, n_batches)
    loss = nll / n_tokens
    return math.exp(loss), loss


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    tokenizer: object,
    data: LabelledData,
    *,
    max_length: int = 128,
    batch_size: int = 16,
    on_step: ProgressCallback | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a sequence classifier on every labelled text, in file order."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    n_batches = math.ceil(len(data.texts) / batch_size)
    for i, start in enumerate(range(0, len(data.texts), batch_size)):
        texts = list(data.texts[start : start + batch_size])
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        labels = torch.tensor(data.labels[start : start + batch_size], device=device)  # (b,)
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()  # (b, n_labels)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        if on_step is not None:
            on_step(i + 1, n_batches)
    return correct / len(data.texts), loss_sum / len(data.texts)


def score(model: torch.nn.Module, base: BaseModel, data: EvalData, on_step: ProgressCallback | None = None):
    """The task's figure of `model` on `data`: (perplexity, loss) or (accuracy, loss)."""
    if data.chunks is not None:
        return perplexity(model, data.chunks, batch_size=data.settings.batch_size, on_step=on_step)
    assert data.labelled is not None
    return accuracy(model, base.tokenizer, data.labelled, max_length=data.settings.max_length,
                    batch_size=data.settings.batch_size, on_step=on_step)  # fmt: skip
