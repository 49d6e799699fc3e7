"""r x r Gram matrices of LoRA factors and their Cholesky factors, each side at the precision it needs.

The singular values of B @ A are those of the r x r core L_B^T L_A, where B^T B = L_B L_B^T and
A A^T = L_A L_A^T. A Gram squares its factor's condition number, so a float32 Gram of an ill-conditioned
factor loses the small singular values. Each side (B or A) is formed in float32 and redone in float64 only
where its error estimate says float32 is not enough. Trained adapters have a well-conditioned A (its random
init) and a B about as ill-conditioned as the update, so B is usually the side in float64. No streamlit here.
"""

from __future__ import annotations

from typing import Literal

import torch

Side = Literal["B", "A"]
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
POWER_STEPS = 6


def side_gram(X: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """B^T B for side "B" (X is (out, r)) or A A^T for side "A" (X is (r, in)), in `dtype`."""
    X = X.to(dtype)  # no copy when X already has this dtype
    if side == "B":
        return X.T @ X  # (r, out) @ (out, r) -> (r, r)
    return X @ X.T  # (r, in) @ (in, r) -> (r, r)


def _cholesky(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, sqrt(diag G), quick squared-condition guess 1 / min diag(L_s)^2; inf where Cholesky failed).

    L_s = diag(G)^-1/2 L is the Cholesky factor of the Gram scaled to unit diagonal; column scaling does not
    hurt a Cholesky route, only directions do. The guess can be low by 100x or more on steep spectra, so it
    only picks the precision to try first; `condition_estimate` decides what is accepted.
    """
    L, info = torch.linalg.cholesky_ex(G)
    d = G.diagonal(dim1=-2, dim2=-1).sqrt()  # (..., r)
    guess = (L.diagonal(dim1=-2, dim2=-1) / d).amin(-1).double() ** -2
    failed = (info != 0) | ~torch.isfinite(guess)
    return L, d, torch.where(failed, torch.full_like(guess, float("inf")), guess)


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

    Each Gram is first formed in the precision the previous module of the group ended up needing (float32
    at the start), judged by the quick guess; then every module's condition is estimated in one batch, and
    float32 ones whose error estimate exceeds `tol` are redone in float64. A side that is consistently
    ill-conditioned (B of a trained adapter) thus costs one float64 Gram per module, not two Grams.

    Args:
        factors: B (out, r) or A (r, in) of each module (same shape), on any device.
        side: which factor they are.
        tol: relative error allowed for this side's contribution to the singular values.
        device: where to compute (float64 is done on the cpu for mps, which has none).
        always_float64: skip float32 (the CUDA route, where float64 is cheap and host syncs are not).

    Returns:
        (L (n, r, r) float64 on the compute device, error estimate (n,) float64 (inf where even float64
        Cholesky failed), whether each module's Gram is float64 (n,) bool).
    """
    dev64 = torch.device("cpu") if device.type == "mps" else device
    use64 = always_float64
    Ls, ds, is64, failed = [], [], [], []
    for X in factors:
        dtype = torch.float64 if use64 else torch.float32
        L, d, guess = _cholesky(side_gram(X.to(dev64 if use64 else device), side, dtype))
        if not use64 and EPS32 * float(guess) > tol:
            L, d, guess = _cholesky(side_gram(X.to(dev64), side, torch.float64))
            dtype = torch.float64
        use64 = always_float64 or (dtype == torch.float64 and EPS32 * float(guess) > tol)
        Ls.append(L.to(dev64, torch.float64))
        ds.append(d.to(dev64, torch.float64))
        is64.append(dtype == torch.float64)
        failed.append(not torch.isfinite(guess))
    L, d = torch.stack(Ls), torch.stack(ds)  # (n, r, r), (n, r)
    is_float64 = torch.tensor(is64, device=dev64)
    kappa = condition_estimate(L, d)
    kappa[torch.tensor(failed, device=dev64)] = float("inf")
    redo = (~is_float64 & (EPS32 * kappa > tol)).nonzero().flatten().tolist()
    for i in redo:
        L[i], d[i], guess = _cholesky(side_gram(factors[i].to(dev64), side, torch.float64))
        is_float64[i] = True
        failed[i] = not torch.isfinite(guess)
    if redo:
        kappa[redo] = condition_estimate(L[redo], d[redo])
        kappa[torch.tensor(failed, device=dev64)] = float("inf")
    eps = torch.where(is_float64, EPS64, EPS32).to(kappa.dtype)
    return L, eps * kappa, is_float64


def core_singular_values(L_B: torch.Tensor, L_A: torch.Tensor) -> torch.Tensor:
    """Singular values of the cores L_B^T L_A (n, r, r) in float64, descending: those of each B @ A."""
    return torch.linalg.svdvals(L_B.double().transpose(-1, -2) @ L_A.double())  # (n, r, r) @ (n, r, r) -> (n, r)
