"""Tiny base models saved like real ones (config, safetensors, tokenizer) and small data files, for the own-data
tests: a Llama-architecture causal LM and a BERT sequence classifier built from configs, plus peft adapters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a market shares rose fell team won lost match game film music star bank rates growth minister vote "
    "party election player goal season album band show court law police report said year new first two"
).split()
LABELS = ("business", "sport", "entertainment")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4} | {w: i + 5 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        eos_token="</s>",
    )  # fmt: skip


def save_tiny_llama(folder: Path, *, seed: int = 0, hidden: int = 32, dtype: torch.dtype = torch.float32) -> Path:
    """A 2-layer Llama (hidden 32, GQA 4/2 heads) with the tiny tokenizer, saved with save_pretrained."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=4, bos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).to(dtype).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_bert_classifier(folder: Path, *, seed: int = 0, label_names: bool = True) -> Path:
    """A 2-layer BERT sequence classifier over LABELS (named in its config when `label_names`)."""
    torch.manual_seed(seed)
    names = dict(enumerate(LABELS)) if label_names else None
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=len(LABELS), **({"id2label": names, "label2id": {v: k for k, v in names.items()}} if names else {}),
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def save_adapter_of(base: Path, out: Path, *, task: str, seed: int = 1, r: int = 4) -> Path:
    """A LoRA adapter (random non-zero factors, and for a classifier a changed head) on the model in `base`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM",
                            init_lora_weights=False)  # fmt: skip
    else:
        model = AutoModelForSequenceClassification.from_pretrained(base)
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "key", "value", "dense"],
                            task_type="SEQ_CLS", init_lora_weights=False)  # fmt: skip
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p))
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(out)
    return out


def sentences(n: int, *, seed: int = 0, length: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def write_text_jsonl(path: Path, n: int = 12, *, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences(n, seed=seed, length=40)))
    return path


def write_labelled_csv(path: Path, n: int = 20, *, names: bool = True, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"] + [f'"{t}",{LABELS[k] if names else k}' for t in sentences(n, seed=seed)
                             for k in [rng.randrange(len(LABELS))]]  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path
