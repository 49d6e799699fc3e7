"""Synthetic PEFT adapters with the exact module names and shapes of real models (generated, never committed).

`python bench/make_adapter.py llama2-7b --rank 64 --out bench/out/llama2-7b-r64` writes
adapter_config.json + adapter_model.safetensors whose modules have decaying spectra (power law with a
random per-module scale), built as B = U sqrt(S), A = sqrt(S) V^T from QR of seeded Gaussians.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# model -> (n_layers, [(module path inside a layer, in_features, out_features), ...], layer prefix)
LLAMA_LIKE = "model.layers.{i}."
SHAPES: dict[str, tuple[int, list[tuple[str, int, int]], str]] = {
    "llama2-7b": (32, [("self_attn.q_proj", 4096, 4096), ("self_attn.k_proj", 4096, 4096),
                       ("self_attn.v_proj", 4096, 4096), ("self_attn.o_proj", 4096, 4096),
                       ("mlp.gate_proj", 4096, 11008), ("mlp.up_proj", 4096, 11008),
                       ("mlp.down_proj", 11008, 4096)], LLAMA_LIKE),
    "llama3-8b": (32, [("self_attn.q_proj", 4096, 4096), ("self_attn.k_proj", 4096, 1024),
                       ("self_attn.v_proj", 4096, 1024), ("self_attn.o_proj", 4096, 4096),
                       ("mlp.gate_proj", 4096, 14336), ("mlp.up_proj", 4096, 14336),
                       ("mlp.down_proj", 14336, 4096)], LLAMA_LIKE),
    "mistral-7b": (32, [("self_attn.q_proj", 4096, 4096), ("self_attn.k_proj", 4096, 1024),
                        ("self_attn.v_proj", 4096, 1024), ("self_attn.o_proj", 4096, 4096),
                        ("mlp.gate_proj", 4096, 14336), ("mlp.up_proj", 4096, 14336),
                        ("mlp.down_proj", 14336, 4096)], LLAMA_LIKE),
    "minilm": (6, [("attention.self.query", 384, 384), ("attention.self.key", 384, 384),
                   ("attention.self.value", 384, 384), ("attention.output.dense", 384, 384),
                   ("intermediate.dense", 384, 1536), ("output.dense", 1536, 384)], "encoder.layer.{i}."),
}  # fmt: skip


def make_adapter(model: str, rank: int, out: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a synthetic adapter for `model` at `rank` into `out`; returns the folder."""
    if model not in SHAPES:
        raise ValueError(f"model must be one of {', '.join(SHAPES)}, got {model!r}")
    n_layers, modules, prefix = SHAPES[model]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    decay = torch.arange(1, rank + 1, dtype=torch.float32) ** -1.2  # power-law spectrum
    for i in range(n_layers):
        for path, d_in, d_out in modules:
            name = prefix.format(i=i) + path
            scale = float(torch.empty(1).log_normal_(0, 0.7, generator=g))
            root = (scale * decay).sqrt()
            U = torch.linalg.qr(torch.randn(d_out, rank, generator=g))[0]  # (out, r)
            V = torch.linalg.qr(torch.randn(d_in, rank, generator=g))[0]  # (in, r)
            tensors[f"base_model.model.{name}.lora_B.weight"] = (U * root).to(dtype).contiguous()  # (out, r)
            tensors[f"base_model.model.{name}.lora_A.weight"] = (root[:, None] * V.T).to(dtype).contiguous()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    targets = sorted({p.rsplit(".", 1)[-1] for p, _, _ in modules})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets,
              "base_model_name_or_path": f"synthetic {model}", "task_type": "CAUSAL_LM"}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(SHAPES))
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    make_adapter(args.model, args.rank, args.out, dtype=torch.bfloat16 if args.bf16 else torch.float32)


if __name__ == "__main__":
    main()
