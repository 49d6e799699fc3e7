"""Builders for test adapters: chosen singular values, and real peft adapters on tiny in-memory models."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification


def factors_with_sigma(
    sigma: list[float], out_features: int = 48, in_features: int = 40, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) float32 with B @ A having exactly the singular values `sigma` (U, V from QR of seeded noise)."""
    g = torch.Generator().manual_seed(seed)
    r = len(sigma)
    U = torch.linalg.qr(torch.randn(out_features, r, generator=g, dtype=torch.float64))[0]  # (out, r)
    V = torch.linalg.qr(torch.randn(in_features, r, generator=g, dtype=torch.float64))[0]  # (in, r)
    root = torch.tensor(sigma, dtype=torch.float64).sqrt()
    return (U * root).float().contiguous(), (root[:, None] * V.T).float().contiguous()  # (out, r), (r, in)


def tiny_bert_config() -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def make_peft_dir(folder: Path, *, seed: int = 0, adalora: bool = False, **lora_kwargs) -> Path:
    """Wrap a tiny BERT with peft (random non-zero LoRA weights) and save_pretrained into `folder`."""
    kwargs = {"r": 8, "lora_alpha": 16, "target_modules": ["query", "key", "value", "dense"]} | lora_kwargs
    model = tiny_bert(seed)
    if adalora:
        config = AdaLoraConfig(init_r=kwargs["r"], target_r=4, lora_alpha=kwargs["lora_alpha"], total_step=10,
                               target_modules=kwargs["target_modules"])  # fmt: skip
    else:
        config = LoraConfig(init_lora_weights=False, **kwargs)
    torch.manual_seed(seed + 1)
    peft_model = get_peft_model(model, config)
    if adalora:  # lora_E starts at zero; give every triplet a value so the update is not zero
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_E" in name or "lora_B" in name:
                    p.copy_(torch.randn_like(p))
    peft_model.save_pretrained(folder)
    return folder


def make_adalora_with_rank_pattern(folder: Path, *, lora_alpha: float, seed: int = 0) -> Path:
    """An AdaLoRA adapter after peft's own rank allocation (a few SGD steps on a tiny BERT), saved with the
    rank_pattern peft writes: each module's tensors then hold only its kept ranks, as in a real run."""
    torch.manual_seed(seed)
    config = AdaLoraConfig(init_r=6, target_r=3, lora_alpha=lora_alpha, total_step=12, tinit=2, tfinal=2, deltaT=1,
                           target_modules=["query", "key", "value", "dense"])  # fmt: skip
    model = get_peft_model(tiny_bert(seed), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_E" in name or "lora_B" in name:  # lora_E starts at zero: give every triplet a value
                p.copy_(torch.randn_like(p))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 100, (4, 6), generator=torch.Generator().manual_seed(seed))
    model.train()
    for step in range(11):
        model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder
