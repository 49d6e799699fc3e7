"""LR-LoRA's learned elementwise nonlinearity: a sum of K shifted, scaled sinc functions (arXiv 2606.04325, 3.3).

`phi(x) = sum_k a_k sinc(w_k (x - c_k))` with `sinc(t) = sin(pi t) / (pi t)` (torch's and numpy's normalised
sinc; the paper's normalisation is not public: our choice). `lr_lora_delta` builds a module's dense update
`(alpha / r) * phi(B @ A)`; training and the reader both call it. The basis is an autograd Function that saves
only x and recomputes each sinc term in backward, so memory stays one (out, in) matrix per module instead of K;
training compiles it for large matrices. No streamlit here.
"""

from __future__ import annotations

import math

import torch

N_BASIS = 8
"""K, the number of sinc terms (the re-implementations' default)."""
SPAN = 2.0
"""Centres c_k are evenly spaced on [-SPAN, SPAN]."""
# |u| below this takes the Taylor series of sinc'(u): the closed form (cos(pi u) - sinc(u)) / u cancels there
TAYLOR_BELOW = 0.1


def sinc_centres(n_basis: int = N_BASIS, span: float = SPAN) -> torch.Tensor:
    """(K,) float32 centres evenly spaced on [-span, span]. Example: K = 3, span 2 -> [-2, 0, 2]."""
    return torch.linspace(-span, span, n_basis, dtype=torch.float32)


def raw_bandwidth(w: float) -> float:
    """The raw parameter whose softplus is `w` (> 0): log(exp(w) - 1). Example: w = 1 -> 0.5413."""
    if w <= 0:
        raise ValueError(f"bandwidth must be > 0, got {w}")
    return w + math.log(-math.expm1(-w))  # log(exp(w) - 1), stable for large w


def _dsinc(u: torch.Tensor) -> torch.Tensor:
    """d sinc(u) / du: (cos(pi u) - sinc(u)) / u, by its Taylor series near 0."""
    small = u.abs() < TAYLOR_BELOW
    safe = torch.where(small, torch.ones_like(u), u)
    closed = (torch.cos(math.pi * safe) - torch.sinc(safe)) / safe
    p2 = (math.pi * u) ** 2
    series = -(math.pi**2) * u / 3 * (1 - p2 / 10 + p2**2 / 280)  # -pi^2 u/3 + pi^4 u^3/30 - pi^6 u^5/840
    return torch.where(small, series, closed)


def _phi(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for k in range(a.shape[0]):  # one (out, in) temporary at a time, never (K, out, in)
        out = out + a[k] * torch.sinc(w[k] * (x - c[k]))
    return out


def _phi_backward(
    x: torch.Tensor, grad: torch.Tensor, a: torch.Tensor, w: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x = torch.zeros_like(x)
    grad_a, grad_w = [], []
    for k in range(a.shape[0]):
        d = x - c[k]  # (out, in)
        u = w[k] * d
        grad_a.append(torch.sum(grad * torch.sinc(u)))  # dphi/da_k = sinc(u)
        t = grad * _dsinc(u)
        grad_w.append(a[k] * torch.sum(t * d))  # dphi/dw_k = a_k sinc'(u) (x - c_k)
        grad_x = grad_x + (a[k] * w[k]) * t  # dphi/dx = sum_k a_k w_k sinc'(u)
    return grad_x, torch.stack(grad_a), torch.stack(grad_w)


COMPILE_MIN_ELEMENTS = 1 << 16
"""Training compiles the basis (torch.compile: one fused loop instead of ~8 K passes over memory, about 10x
faster on MiniLM's 384 x 1536 updates) for matrices at least this large; smaller ones, and every reader, run
eagerly (the two agree to float32 rounding)."""
_compiled: dict[str, object] = {}


def _kernels(x: torch.Tensor, is_compiled: bool) -> tuple:
    if not is_compiled or x.numel() < COMPILE_MIN_ELEMENTS:
        return _phi, _phi_backward
    if not _compiled:
        _compiled["fwd"] = torch.compile(_phi, dynamic=False)
        _compiled["bwd"] = torch.compile(_phi_backward, dynamic=False)
    return _compiled["fwd"], _compiled["bwd"]


class SincBasis(torch.autograd.Function):
    """phi(x) = sum_k a_k sinc(w_k (x - c_k)), elementwise; gradients for x, a and w (c is fixed).

    Saves only x and recomputes each sinc term in backward: memory is one (out, in) matrix, not K.
    """

    @staticmethod
    def forward(ctx, x, a, w, c, is_compiled):  # type: ignore[override]
        ctx.save_for_backward(x, a, w, c)
        ctx.is_compiled = is_compiled
        return _kernels(x, is_compiled)[0](x, a, w, c)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, a, w, c = ctx.saved_tensors
        grad_x, grad_a, grad_w = _kernels(x, ctx.is_compiled)[1](x, grad.contiguous(), a, w, c)
        return grad_x, grad_a, grad_w, None, None


def sinc_phi(
    x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, c: torch.Tensor, *, is_compiled: bool = False
) -> torch.Tensor:
    """phi(x) elementwise, differentiable in x, a (amplitudes) and w (bandwidths, > 0); c (centres) is fixed.

    Example: a = [1], w = [1], c = [0] -> phi(0) = 1, phi(1) = sinc(1) = 0, phi(0.5) = 2 / pi.
    """
    return SincBasis.apply(x, a, w, c.to(x.dtype), is_compiled)


def lr_lora_delta(
    A: torch.Tensor,
    B: torch.Tensor,
    a: torch.Tensor,
    raw_w: torch.Tensor,
    c: torch.Tensor,
    scaling: float,
    *,
    is_compiled: bool = False,
) -> torch.Tensor:
    """One LR-LoRA module's dense update `scaling * phi(B @ A)`, with w = softplus(raw_w).

    Args:
        A: (r, in) factor; B: (out, r) factor.
        a: (K,) amplitudes; raw_w: (K,) raw bandwidths; c: (K,) centres.
        scaling: alpha / r.
        is_compiled: use the compiled basis for large matrices (training; see COMPILE_MIN_ELEMENTS).

    Returns:
        (out, in) dW, differentiable in A, B, a and raw_w.
    """
    w = torch.nn.functional.softplus(raw_w)
    return scaling * sinc_phi(B @ A, a, w, c, is_compiled=is_compiled)  # (out, r) @ (r, in) -> (out, in)
