"""What a loaded adapter may ask of the engine and the pages, checked before any spectrum is computed.

Shapes cost nothing to declare (a zero-size factor with r = 1e8 is a 0-byte tensor), so ranks and widths are
held to the bytes the file really has; a module whose update's singular values would overflow float64 (or
whose energy would: sigma^2 summed over every component) is refused here, since no page could show it and
an export of it would be Inf or NaN. Every refusal is an `AdapterError`: one line naming the file, the
module and the fix. No streamlit here.
"""

from __future__ import annotations

import math

import torch

from analysis.formats.base import LoraAdapter, LoraModule
from analysis.safe_io import AdapterError

MAX_MODULES = 20_000  # an all-linear LoRA of a 70B LLM has 560; a full SDXL kohya LoRA ~800
MAX_WIDTH = 1 << 31  # in or out features: no layer is wider (Llama-3's vocabulary is 128,256)
# Largest effective singular value shown: its square, summed over up to 1e6 components, stays finite in float64.
MAX_SIGMA = 1e150


def check_limits(adapter: LoraAdapter) -> LoraAdapter:
    """Refuse an adapter whose modules no page can show or the engine should not take on; return it as is.

    Raises:
        AdapterError: too many modules; a module with an empty side but a rank, or wider than any layer; a
            module whose update's largest singular value may exceed MAX_SIGMA (its scale or its factors).
    """
    source = adapter.source
    if len(adapter.modules) > MAX_MODULES:
        raise AdapterError(
            f"{source}: {len(adapter.modules):,} modules, over the limit of {MAX_MODULES:,}; point at one adapter"
        )
    for m in adapter.modules:
        if m.r > 0 and (m.in_features == 0 or m.out_features == 0):
            raise AdapterError(
                f"{source}: module {m.name} has rank {m.r:,} but factors {tuple(m.A.shape)} and {tuple(m.B.shape)} "
                "hold no values; the file is corrupt, re-export the adapter"
            )
        if max(m.in_features, m.out_features) > MAX_WIDTH:
            raise AdapterError(
                f"{source}: module {m.name} is {m.out_features:,} x {m.in_features:,}, wider than any layer; "
                "the file is corrupt"
            )
        if not math.isfinite(m.scaling):
            raise AdapterError(f"{source}: module {m.name} has scale {m.scaling}; fix lora_alpha (or its alpha)")
        if (bound := sigma_bound(m)) > MAX_SIGMA:
            raise AdapterError(
                f"{source}: module {m.name}'s update may reach singular values of {bound:.3g} (scale "
                f"{m.scaling:.3g}), beyond the {MAX_SIGMA:.0e} that energies can be summed to in float64; "
                "fix lora_alpha (or its alpha) or re-export the factors"
            )
    return adapter


def sigma_bound(module: LoraModule) -> float:
    """An upper bound on the largest singular value of `scaling * B @ A`: |s| ||B||_F ||A||_F.

    From the dtypes' largest values first (free); only where that bound is too loose to pass (float64
    factors, a huge scale) are the norms read, in float64.
    """
    if module.r == 0 or module.scaling == 0:
        return 0.0
    s = abs(module.scaling)
    by_dtype = s * _dtype_norm_bound(module.A) * _dtype_norm_bound(module.B)
    if by_dtype <= MAX_SIGMA:
        return by_dtype
    norm_A = float(torch.linalg.vector_norm(module.A, dtype=torch.float64))
    norm_B = float(torch.linalg.vector_norm(module.B, dtype=torch.float64))
    return s * norm_A * norm_B  # inf when it overflows: refused as well


def _dtype_norm_bound(X: torch.Tensor) -> float:
    """sqrt(numel) times the largest finite value of X's dtype: no Frobenius norm of X can exceed it."""
    return math.sqrt(X.numel()) * float(torch.finfo(X.dtype).max)
