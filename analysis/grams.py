"""r x r Gram matrices of LoRA factors and their Cholesky factors, each side at the precision it needs.

The singular values of B @ A are those of the r x r core L_B^T L_A, where B^T B = L_B L_B^T and
A A^T = L_A L_A^T. A Gram squares its factor's condition number, so a float32 Gram of an ill-conditioned
factor loses the small singular values. Each side (B or A) is formed in float32 and redone in float64 only
where its error estimate says float32 is not enough. Trained adapters have a well-conditioned A (its random
init) and a B about as ill-conditioned as the update, so B is usually the side in float64. No streamlit here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

Side = Literal["B", "A"]
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
POWER_STEPS = 6
CHUNK_BYTES = 256 * 1024  # upcast block: fits in L2 next to the Gram


def _blocks(X: torch.Tensor, side: Side, dtype: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (range, block): X's blocks upcast to `dtype` in one reused buffer of about CHUNK_BYTES.

    Side "B": X is (out, r), blocks are row ranges (count, r). Side "A": X is (r, in), blocks are column
    ranges (r, count). Either way a block copies contiguous runs of X.
    """
    r, n = (X.shape[1], X.shape[0]) if side == "B" else (X.shape[0], X.shape[1])
    step = max(1, CHUNK_BYTES // (r * torch.finfo(dtype).bits // 8))
    shape = (min(step, n), r) if side == "B" else (r, min(step, n))
    buffer = torch.empty(shape, dtype=dtype, device=X.device)
    for start in range(0, n, step):
        span = slice(start, min(start + step, n))
        count = span.stop - start
        block = buffer[:count] if side == "B" else buffer[:, :count]
        block.copy_(X[span] if side == "B" else X[:, span])  # upcast (count, r) or (r, count)
        yield span, block


def side_gram(X: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """B^T B for side "B" (X is (out, r)) or A A^T for side "A" (X is (r, in)), in `dtype`.

    On the CPU the product goes through numpy, which turns `a.T @ a` into one BLAS syrk call (half the
    flops of torch's general matmul; about 2x faster in float64 here). An upcast is done a block of
    CHUNK_BYTES at a time into one reused buffer (`_blocks`): converting a whole 11008 x 64 factor allocates
    fresh pages for every module, and page faults cost more than the arithmetic on virtual machines.
    """
    if X.device.type != "cpu":
        X = X.to(dtype)  # no copy when X already has this dtype
        return X.T @ X if side == "B" else X @ X.T  # (r, out) @ (out, r) or (r, in) @ (in, r) -> (r, r)
    if X.dtype == dtype:
        a = X.numpy() if side == "B" else X.numpy().T  # (n, r) view
        return torch.from_numpy(a.T @ a)  # (r, n) @ (n, r) -> (r, r), one syrk
    r = X.shape[1] if side == "B" else X.shape[0]
    G = np.zeros((r, r), dtype=np.float64 if dtype == torch.float64 else np.float32)
    for _, block in _blocks(X, side, dtype):
        a = block.numpy() if side == "B" else block.numpy().T  # (count, r) view
        G += a.T @ a  # (r, count) @ (count, r) -> (r, r), one syrk
    return torch.from_numpy(G)


def upcast_matmul(X: torch.Tensor, M: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """B @ M (side "B": X = B (out, r), M (r, k)) or M @ A (side "A": X = A (r, in), M (k, r)) in float64.

    X is upcast block by block (`_blocks`) and each block's product is written straight into the result,
    returned in `dtype`: (out, k) for "B", (k, in) for "A".
    """
    shape = (X.shape[0], M.shape[1]) if side == "B" else (M.shape[0], X.shape[1])
    out = torch.empty(shape, dtype=dtype, device=X.device)
    for span, block in _blocks(X, side, torch.float64):
        if side == "B":
            out[span] = block @ M  # (count, r) @ (r, k) -> (count, k)
        else:
            out[:, span] = M @ block  # (k, r) @ (r, count) -> (k, count)
    return out


def cholesky_factors(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched Cholesky factors of Grams (n, r, r) with the condition estimate of each.

    Returns:
        (L (n, r, r) float64, sqrt(diag G) (n, r) float64, condition estimate (n,) float64; inf where the
        factorisation failed).
    """
    L, info = torch.linalg.cholesky_ex(G)
    L, d = L.double(), G.diagonal(dim1=-2, dim2=-1).double().sqrt()  # (n, r, r), (n, r)
    kappa = condition_estimate(L, d)
    return L, d, torch.where(info != 0, torch.full_like(kappa, float("inf")), kappa)


def condition_estimate(L: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Estimated 2-norm condition number of each unit-diagonal Gram G_s = L_s L_s^T, L_s = L / d (batched).

    Power iteration for lambda_max(G_s) and inverse iteration (two triangular solves a step) for
    1 / lambda_min(G_s), POWER_STEPS steps each from a fixed start; O(r^2) a step. Both are lower bounds that
    converge from below. eps x this estimate tracks the measured relative error of the singular values of B A
    within a factor of ~4 on graded, trained-like, steep and near-dependent factors (tests/test_spectra.py).

    Args:
        L: (n, r, r) lower Cholesky factors, float64.
        d: (n, r) square roots of the Grams' diagonals.

    Returns:
        (n,) float64; inf where L is not finite or singular.
    """
    Ls = L.double() / d.double()[..., :, None]  # rows scaled: D^-1/2 L, (n, r, r)
    n, r = Ls.shape[0], Ls.shape[-1]
    g = torch.Generator().manual_seed(0)
    start = (torch.rand(r, 1, generator=g, dtype=torch.float64) + 0.5).to(Ls.device).expand(n, r, 1)
    x, y = start, start
    big = small = torch.ones(n, dtype=torch.float64, device=Ls.device)
    for _ in range(POWER_STEPS):
        x = Ls @ (Ls.transpose(-1, -2) @ x)  # G_s x: (n, r, r) @ (n, r, 1)
        big = x.norm(dim=(-2, -1))
        x = x / big[:, None, None]
        y = torch.linalg.solve_triangular(Ls, y, upper=False)  # L_s^-1 y: (n, r, 1)
        y = torch.linalg.solve_triangular(Ls.transpose(-1, -2), y, upper=True)  # G_s^-1 y
        small = y.norm(dim=(-2, -1))
        y = y / small[:, None, None]
    kappa = big * small
    return torch.where(torch.isfinite(kappa) & (kappa > 0), kappa, torch.full_like(kappa, float("inf")))


def side_factors(
    factors: list[torch.Tensor], side: Side, tol: float, device: torch.device, *, always_float64: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cholesky factors of one side of a group of equal-shape modules, float32 where that is accurate enough.

    The first module's float32 Gram picks the group's precision (float64 if its error estimate exceeds
    `tol`); all Grams are then formed in that precision and factored in one batch, and float32 ones whose
    estimate exceeds `tol` are redone in float64. A side that is consistently ill-conditioned (B of a
    trained adapter) thus costs one float64 Gram per module, not a float32 one thrown away and a float64 one.

    Args:
        factors: B (out, r) or A (r, in) of each module (same shape), on any device.
        side: which factor they are.
        tol: relative error allowed for this side's contribution to the singular values.
        device: where to compute (float64 is done on the cpu for mps, which has none).
        always_float64: skip float32 (the CUDA route, where float64 is cheap and host syncs are not).

    Returns:
        (L (n, r, r) float64, error estimate (n,) float64 (inf where even float64 Cholesky failed), whether
        each module's Gram is float64 (n,) bool), on the compute device (the cpu for mps).
    """
    dev64 = torch.device("cpu") if device.type == "mps" else device

    def grams(indices: list[int], dtype: torch.dtype) -> torch.Tensor:
        where = dev64 if dtype == torch.float64 else device
        return torch.stack([side_gram(factors[i].to(where), side, dtype).to(dev64) for i in indices])  # (n, r, r)

    use64 = always_float64
    if not use64:
        _, _, kappa = cholesky_factors(grams([0], torch.float32))
        use64 = bool(EPS32 * kappa[0] > tol)
    everyone = list(range(len(factors)))
    L, d, kappa = cholesky_factors(grams(everyone, torch.float64 if use64 else torch.float32))
    is_float64 = torch.full((len(factors),), use64, device=dev64)
    redo = (~is_float64 & (EPS32 * kappa > tol)).nonzero().flatten().tolist()
    if redo:
        L[redo], d[redo], kappa[redo] = cholesky_factors(grams(redo, torch.float64))
        is_float64[redo] = True
    eps = torch.where(is_float64, EPS64, EPS32).to(kappa.dtype)
    return L, eps * kappa, is_float64


def core_singular_values(L_B: torch.Tensor, L_A: torch.Tensor) -> torch.Tensor:
    """Singular values of the cores L_B^T L_A (n, r, r) in float64, descending: those of each B @ A."""
    return torch.linalg.svdvals(L_B.double().transpose(-1, -2) @ L_A.double())  # (n, r, r) @ (n, r, r) -> (n, r)
