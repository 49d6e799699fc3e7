"""LR-LoRA (Learnable Rank LoRA, arXiv 2606.04325, section 3.3 "Learnable Adapter Nonlinearity").

Each adapted module learns its own elementwise sinc nonlinearity over the materialised low-rank product:
`dW = (alpha / r) * phi(B @ A)`, `phi(x) = sum_k a_k sinc(w_k (x - c_k))` (analysis/sinc.py), K centres fixed on
[-2, 2], a_k = 0 and w_k = softplus(raw_k) = 1 at init, B = 0 and A as in LoRA. phi(0) = 0 at init, so dW = 0
and the factors get no gradient on the first step; the amplitudes do (dL/da_k = sum(G * sinc(-w_k c_k)) with
G = dL/d(dW)), and once they move phi'(0) != 0 passes the gradient on to B and A. The module's learned rank is
the stable rank of dW, ||dW||_F^2 / ||dW||_2^2, recorded per module over training. dW is dense (its rank is not
bounded by r), so the run writes the native record below, which the engine reads as dense-update modules.

Record (`adapter/` of the run): `lr_lora_config.json` (the formula, K, base model, target modules, and per module
r and lora_alpha) and `lr_lora.safetensors` (per module `<name>.lora_A.weight` (r, in), `<name>.lora_B.weight`
(out, r), `<name>.sinc_amplitude` (K,), `<name>.sinc_raw_bandwidth` (K,), `<name>.sinc_centre` (K,), keys under
`base_model.model.`; the trained head under its PEFT modules_to_save key). No streamlit, no printing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.formats.lr_lora import CONFIG_FILE, FORMULA, WEIGHTS_FILE
from analysis.sinc import N_BASIS, SPAN, lr_lora_delta, raw_bandwidth, sinc_centres
from analysis.training.data import Example
from analysis.training.lora import StepCallback, TrainConfig, train_loop
from analysis.training.model import BASE_MODEL_NAME, HEAD_NAME, TARGET_MODULES, target_linears

PREFIX = "base_model.model."


@dataclass(frozen=True)
class LrLoraConfig:
    """The sinc basis of every module (the re-implementations' defaults)."""

    n_basis: int = N_BASIS
    """K, sinc terms per module."""
    span: float = SPAN
    """Centres evenly spaced on [-span, span]."""
    bandwidth_init: float = 1.0
    """w_k at init (w_k = softplus(raw_k))."""
    b_init: Literal["uniform", "zero"] = "uniform"
    """"zero": B = 0 as in LoRA and the paper reading. With a = 0 and centres symmetric about 0, every gradient
    step keeps phi even (dL/da_k and dL/dw_k are equal for c_k and -c_k while B @ A = 0), so phi'(0) = 0 and B
    and A get no gradient, ever: the update stays the constant matrix phi(0) (tests/test_lr_lora.py shows it).
    "uniform" (our default): B ~ U(-1/sqrt(r), 1/sqrt(r)), peft's A init on B's fan-in; dW is still exactly 0 at
    init because a = 0, which is what LoRA's B = 0 is for."""
    record_every: int = 10
    """Steps between two records of every module's stable rank."""
    is_compiled: bool = True
    """Compile the sinc basis for large modules (analysis/sinc.py COMPILE_MIN_ELEMENTS): ~10x faster steps."""

    def __post_init__(self) -> None:
        if self.n_basis < 1:
            raise ValueError(f"n_basis must be >= 1, got {self.n_basis}")
        if not self.bandwidth_init > 0:
            raise ValueError(f"bandwidth_init must be > 0, got {self.bandwidth_init}")
        if self.b_init not in ("uniform", "zero"):
            raise ValueError(f"b_init must be 'uniform' or 'zero', got {self.b_init!r}")

    @property
    def n_params_per_module(self) -> int:
        """Trained sinc parameters of one module: K amplitudes and K bandwidths."""
        return 2 * self.n_basis


class SincLoraLinear(nn.Module):
    """A frozen linear layer plus LR-LoRA's update: y = x (W + (alpha/r) phi(B A))^T + b."""

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, settings: LrLoraConfig) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r = r
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / r
        bound = 1.0 / math.sqrt(base.in_features)  # peft's kaiming_uniform(a=sqrt(5)) on A: U(-1/sqrt(in), ..)
        self.A = nn.Parameter(torch.empty(r, base.in_features).uniform_(-bound, bound))  # (r, in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # (out, r)
        if settings.b_init == "uniform":
            nn.init.uniform_(self.B, -1.0 / math.sqrt(r), 1.0 / math.sqrt(r))
        self.amplitude = nn.Parameter(torch.zeros(settings.n_basis))  # a_k = 0: phi = 0 at init
        self.raw_bandwidth = nn.Parameter(torch.full((settings.n_basis,), raw_bandwidth(settings.bandwidth_init)))
        self.register_buffer("centre", sinc_centres(settings.n_basis, settings.span))
        self.is_compiled = settings.is_compiled

    def delta_w(self) -> torch.Tensor:
        """(out, in) dW = (alpha / r) * phi(B @ A)."""
        return lr_lora_delta(
            self.A, self.B, self.amplitude, self.raw_bandwidth, self.centre, self.scaling, is_compiled=self.is_compiled
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one matmul with the merged weight: (..., in) @ (in, out)
        return nn.functional.linear(x, self.base.weight + self.delta_w(), self.base.bias)


def wrap_sinc(model: nn.Module, r: int, lora_alpha: float, settings: LrLoraConfig) -> dict[str, SincLoraLinear]:
    """Replace every target linear by a SincLoraLinear; freeze all but its parameters and the head."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for name, linear in target_linears(model).items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layers[name] = SincLoraLinear(linear, r, lora_alpha, settings)
        setattr(parent, leaf, layers[name])
    for p in getattr(model, HEAD_NAME).parameters():
        p.requires_grad_(True)
    return layers


@torch.no_grad()
def stable_ranks(layers: dict[str, SincLoraLinear]) -> dict[str, float]:
    """||dW||_F^2 / ||dW||_2^2 per module (0 for a zero update), by one batched svdvals per shape."""
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name, layer in layers.items():
        by_shape.setdefault((layer.base.out_features, layer.base.in_features), []).append(name)
    out = {}
    for names in by_shape.values():
        sigma = torch.linalg.svdvals(torch.stack([layers[n].delta_w() for n in names]))  # (n, min(out, in))
        for n, s in zip(names, sigma, strict=True):
            out[n] = float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0
    return out


def train_lr_lora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: TrainConfig,
    settings: LrLoraConfig,
    *,
    on_step: StepCallback | None = None,
) -> tuple[dict[str, SincLoraLinear], list[float], list[dict]]:
    """Train LR-LoRA at rank `config.r` and scale `config.lora_alpha / config.r`.

    Returns:
        The layers by module path, the loss curve, and the trajectory: every `record_every` steps the stable
        rank of each module's dW (sorted module order), its Frobenius norm and phi(0).
    """
    torch.manual_seed(config.seed)
    layers = wrap_sinc(model, config.r, config.lora_alpha, settings)
    names = sorted(layers)
    trajectory: list[dict] = []

    def record(step: int) -> None:
        if step % settings.record_every and step != 1:
            return
        ranks = stable_ranks(layers)
        with torch.no_grad():
            norms = [float(torch.linalg.matrix_norm(layers[n].delta_w())) for n in names]
        trajectory.append({"step": step, "stable_rank": [round(ranks[n], 4) for n in names],
                           "frobenius": [round(x, 6) for x in norms]})  # fmt: skip

    losses = train_loop(model, tokenizer, train, config, on_step=on_step, after_step=record)
    final = stable_ranks(layers)
    trajectory.append({"step": len(losses), "stable_rank": [round(final[n], 4) for n in names], "final": True})
    return layers, losses, trajectory


def save_lr_lora(out: Path, layers: dict[str, SincLoraLinear], head: nn.Linear, settings: LrLoraConfig) -> None:
    """Write the native LR-LoRA record (module docstring) into the folder `out` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    modules = {}
    for name, layer in layers.items():
        key = PREFIX + name
        tensors[f"{key}.lora_A.weight"] = layer.A.detach().contiguous()  # (r, in)
        tensors[f"{key}.lora_B.weight"] = layer.B.detach().contiguous()  # (out, r)
        tensors[f"{key}.sinc_amplitude"] = layer.amplitude.detach().contiguous()  # (K,)
        tensors[f"{key}.sinc_raw_bandwidth"] = layer.raw_bandwidth.detach().contiguous()  # (K,)
        tensors[f"{key}.sinc_centre"] = layer.centre.detach().contiguous()  # (K,)
        modules[name] = {"r": layer.r, "lora_alpha": layer.lora_alpha}
    tensors[f"{PREFIX}{HEAD_NAME}.weight"] = head.weight.detach().clone()
    tensors[f"{PREFIX}{HEAD_NAME}.bias"] = head.bias.detach().clone()
    config = {
        "format": "lr_lora",
        "version": 1,
        "method": "LR-LoRA, arXiv 2606.04325 section 3.3",
        "delta_w": FORMULA,
        "n_basis": settings.n_basis,
        "settings": asdict(settings),
        "base_model_name_or_path": BASE_MODEL_NAME,
        "target_modules": TARGET_MODULES,
        "modules_to_save": [HEAD_NAME],
        "modules": modules,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
