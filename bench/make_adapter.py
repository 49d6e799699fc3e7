"""Synthetic PEFT adapters with the exact module names and shapes of real models (generated, never committed).

`python bench/make_adapter.py llama2-7b --rank 64 --out bench/out/llama2-7b-r64` writes adapter_config.json
and adapter_model.safetensors. Every module's update has a chosen, decaying spectrum (a power law whose
exponent and scale vary per module). Factor style "trained" (default) looks like a trained PEFT adapter: A is
a kaiming-uniform init (well conditioned) and B carries the spectrum, so B is as ill-conditioned as the update,
which is what the bundled MiniLM runs show (cond(A) ~2-3, cond(B) ~10-80). Style "balanced" is what an SVD
export writes: B = U sqrt(S), A = sqrt(S) V^T. Style "steep" is "trained" with an exponential spectrum down to
1e-6 of sigma_max, to exercise the engine's ill-conditioning detection and fallback.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

FactorStyle = Literal["trained", "balanced", "steep"]
STYLES: tuple[FactorStyle, ...] = ("trained", "balanced", "steep")

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
BASE_MODELS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """(rows, cols) with orthonormal columns: Cholesky-QR of a Gaussian in float64 (cond ~1, so exact enough)."""
    X = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(X.T @ X)  # (cols, rows) @ (rows, cols) -> (cols, cols)
    return torch.linalg.solve_triangular(L.T, X, upper=True, left=False)  # X L^-T: (rows, cols)


def module_spectrum(rank: int, style: FactorStyle, g: torch.Generator) -> torch.Tensor:
    """(rank,) singular values of one module's update B @ A (before the LoRA scale), descending.

    "trained"/"balanced": sigma_i = c * i^-beta with beta ~ U(0.6, 1.2) and a log-normal scale c, so that
    sigma_1 / sigma_r at r=32 spans ~8-64 (the bundled r=32 runs: median 20, max ~160). "steep":
    c * 10^(-6 (i-1)/(r-1)), six decades.
    """
    c = float(torch.empty(1, dtype=torch.float64).log_normal_(0.0, 0.7, generator=g)) * 0.05
    i = torch.arange(1, rank + 1, dtype=torch.float64)
    if style == "steep":
        return c * 10.0 ** (-6.0 * (i - 1) / max(rank - 1, 1))
    beta = 0.6 + 0.6 * float(torch.rand(1, generator=g, dtype=torch.float64))
    return c * i**-beta


def module_factors(
    d_out: int, d_in: int, rank: int, style: FactorStyle, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (d_out, r), A (r, d_in)) in float64 with B @ A = U diag(sigma) V^T exactly (sigma from module_spectrum).

    "trained": A is PEFT's kaiming-uniform init, A^T = Q_A R_A; with V = Q_A W (W a random rotation),
    B = U S W^T R_A^-T gives B A = U S W^T Q_A^T = U S V^T. "balanced": B = U sqrt(S), A = sqrt(S) V^T.
    """
    sigma = module_spectrum(rank, style, g)
    U = _orthonormal(d_out, rank, g)  # (out, r)
    if style == "balanced":
        V = _orthonormal(d_in, rank, g)  # (in, r)
        root = sigma.sqrt()
        return U * root, root[:, None] * V.T  # (out, r) * (r,) and (r, 1) * (r, in)
    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on an (r, in) weight: U(-1/sqrt(in), 1/sqrt(in))
    A = (torch.rand(rank, d_in, generator=g, dtype=torch.float64) * 2 - 1) * bound  # (r, in)
    R_A = torch.linalg.cholesky(A @ A.T).T  # A^T = Q_A R_A with R_A upper: (r, in) @ (in, r) -> (r, r)
    W = _orthonormal(rank, rank, g)  # (r, r) random rotation
    core = (U * sigma) @ W.T  # (out, r) @ (r, r) -> (out, r): U S W^T
    B = torch.linalg.solve_triangular(R_A.T, core, upper=False, left=False)  # core R_A^-T: (out, r)
    return B, A


def make_adapter(
    model: str,
    rank: int,
    out: str | Path,
    *,
    style: FactorStyle = "trained",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a synthetic PEFT adapter for `model` at `rank` into `out`.

    Args:
        model: one of SHAPES (llama2-7b, llama3-8b, mistral-7b, minilm).
        rank: LoRA rank r (the bench uses 8 to 128), at most the smallest module dimension.
        out: folder to write adapter_config.json and adapter_model.safetensors into.
        style: "trained" (default), "balanced" or "steep" (see the module docstring).
        seed: generator seed (mixed with the model name); the same seed gives the same tensors on the same
            torch version.
        dtype: dtype of the stored factors (float32, bfloat16 or float16).

    Returns:
        The folder written.

    Raises:
        ValueError: unknown model or style, or a rank outside [1, min module dimension].
    """
    if model not in SHAPES:
        raise ValueError(f"model must be one of {', '.join(SHAPES)}, got {model!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    n_layers, modules, prefix = SHAPES[model]
    smallest = min(min(d_in, d_out) for _, d_in, d_out in modules)
    if not 1 <= rank <= smallest:
        raise ValueError(f"rank must be in [1, {smallest}] for {model}, got {rank}")
    g = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(model.encode()))  # models with equal shapes differ
    tensors = {}
    for i in range(n_layers):
        for path, d_in, d_out in modules:
            name = f"base_model.model.{prefix.format(i=i)}{path}"
            B, A = module_factors(d_out, d_in, rank, style, g)
            tensors[f"{name}.lora_A.weight"] = A.to(dtype).contiguous()  # (r, in)
            tensors[f"{name}.lora_B.weight"] = B.to(dtype).contiguous()  # (out, r)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    targets = sorted({p.rsplit(".", 1)[-1] for p, _, _ in modules})
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets,
        "base_model_name_or_path": BASE_MODELS[model], "task_type": "CAUSAL_LM", "lora_dropout": 0.0,
        "bias": "none", "synthetic": f"bench/make_adapter.py {model} --rank {rank} --style {style} --seed {seed}",
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def adapter_name(model: str, rank: int, style: FactorStyle = "trained", dtype: str = "f32") -> str:
    """Folder name the bench uses for one synthetic adapter, e.g. `llama2-7b-r64` or `minilm-r32-steep-bf16`."""
    name = f"{model}-r{rank}"
    name += "" if style == "trained" else f"-{style}"
    return name + ("" if dtype == "f32" else f"-{dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(SHAPES))
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--style", choices=STYLES, default="trained")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    make_adapter(args.model, args.rank, args.out, style=args.style, seed=args.seed, dtype=dtype)


if __name__ == "__main__":
    main()
