"""r x r Gram matrices of LoRA factors and their Cholesky factors, each side at the precision it needs.

The singular values of B @ A are those of the r x r core L_B^T L_A, where B^T B = L_B L_B^T and
A A^T = L_A L_A^T. A Gram squares its factor's condition number, so a float32 Gram of an ill-conditioned
factor loses the small singular values. Each side (B or A) is formed in the precision a probe picks
(`needs_float64`) and a float32 one is redone in float64 where its error estimate says float32 is not
enough. Trained adapters have a well-conditioned A (its random init) and a B about as ill-conditioned as the
update, so B is usually the side in float64; the values then come from the eigenvalues of
L_A^T (B^T B) L_A, with no factor of B's Gram, where those are accurate enough (`values_from_float64_B`).
Error estimates come from condition numbers, certified by a cheap upper bound where it suffices
(`condition_bound`) and computed exactly where not.
On the CPU the products run on worker threads with one-thread BLAS (analysis/threads.py). No streamlit here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from analysis.threads import map_workers, numpy_blas_is_single_threaded, outer_threads

Side = Literal["B", "A"]
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
PARALLEL_MIN_ELEMENTS = 1 << 20  # below this much factor data (or 1/8 of it in r x r batches), one thread
CHUNK_BYTES = 4 * 1024 * 1024  # one upcast block (fewer, larger blocks: less Python per module)
SCRATCH_MAX_BYTES = 16 * 1024 * 1024  # larger scratch is allocated afresh, not kept by the (long-lived) workers
_local = threading.local()  # per-thread scratch buffers: .buffers {purpose: tensor}


def _buffer(shape: tuple[int, ...], dtype: torch.dtype, purpose: str = "upcast") -> torch.Tensor:
    """This thread's reusable scratch tensor for `purpose`, viewed as `shape`.

    Fresh pages cost a page fault each on VMs, dearer than the arithmetic done in them, and the allocator
    hands large tensors fresh pages every time. Contents are garbage; the view is valid until this thread
    asks for the same purpose again. Above SCRATCH_MAX_BYTES a fresh tensor is returned instead.
    """
    size = math.prod(shape)
    if size * dtype.itemsize > SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(purpose)
    if buf is None or buf.dtype != dtype or buf.numel() < size:
        buf = buffers[purpose] = torch.empty(max(size, CHUNK_BYTES // dtype.itemsize), dtype=dtype)
    return buf[:size].view(shape)


def _blocks(X: torch.Tensor, side: Side, dtype: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (range, block): X's blocks of about CHUNK_BYTES upcast to `dtype` in this thread's buffer.

    Side "B": X is (out, r), blocks are row ranges (count, r). Side "A": X is (r, in), blocks are column
    ranges (r, count). Either way a block copies contiguous runs of X.
    """
    r, n = (X.shape[1], X.shape[0]) if side == "B" else (X.shape[0], X.shape[1])
    step = max(1, CHUNK_BYTES // (r * torch.finfo(dtype).bits // 8))
    whole = _buffer((min(step, n), r) if side == "B" else (r, min(step, n)), dtype)
    for start in range(0, n, step):
        span = slice(start, min(start + step, n))
        block = whole[: span.stop - start] if side == "B" else whole[:, : span.stop - start]
        block.copy_(X[span] if side == "B" else X[:, span])  # upcast (count, r) or (r, count)
        yield span, block


def side_gram(X: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """B^T B for side "B" (X is (out, r)) or A A^T for side "A" (X is (r, in)), in `dtype`.

    On the CPU an upcast is done block by block into a reused buffer (`_blocks`), accumulating the Gram:
    converting whole factors into fresh memory costs page faults, dearer than the arithmetic on VMs. While
    numpy's BLAS is held at one thread (analysis/threads.py), the products go through numpy, which turns
    `a.T @ a` into one syrk call: half the flops of a general matmul, ~1.3x (float32) to 2x (float64)
    faster than torch's here.
    """
    on_cpu = X.device.type == "cpu"
    if on_cpu and dtype in (torch.float32, torch.float64) and numpy_blas_is_single_threaded():
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowed Gram is caught by `cholesky_factors`
            return _numpy_gram(X, side, dtype)
    if X.dtype == dtype or not on_cpu:
        X = X.to(dtype)  # no copy when X already has this dtype
        return X.T @ X if side == "B" else X @ X.T  # (r, out) @ (out, r) or (r, in) @ (in, r) -> (r, r)
    r = X.shape[1] if side == "B" else X.shape[0]
    G = torch.zeros(r, r, dtype=dtype)
    for _, block in _blocks(X, side, dtype):
        if side == "B":
            G.addmm_(block.T, block)  # G += (r, count) @ (count, r)
        else:
            G.addmm_(block, block.T)  # G += (r, count) @ (count, r)
    return G


def _numpy_gram(X: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """`side_gram` on the CPU through numpy's syrk, upcasting block by block where X is not in `dtype`."""
    if X.dtype == dtype:
        a = X.numpy()
        return torch.from_numpy(a.T @ a if side == "B" else a @ a.T)  # one syrk: (r, r)
    r = X.shape[1] if side == "B" else X.shape[0]
    G = torch.zeros(r, r, dtype=dtype).numpy() if 0 in X.shape else None
    for _, block in _blocks(X, side, dtype):
        a = block.numpy() if side == "B" else block.numpy().T  # (count, r) view
        if G is None:  # the first block's syrk writes the Gram: no zeroing and adding for one-block factors
            G = a.T @ a  # (r, count) @ (count, r) -> (r, r): one syrk
        else:
            G += a.T @ a
    return torch.from_numpy(G)


def upcast_matmul(X: torch.Tensor, M: torch.Tensor, side: Side, dtype: torch.dtype) -> torch.Tensor:
    """B @ M (side "B": X = B (out, r), M (r, k)) or M @ A (side "A": X = A (r, in), M (k, r)) in float64.

    X is upcast block by block (`_blocks`) and each block's product is written straight into the result,
    returned in `dtype`: (out, k) for "B", (k, in) for "A".
    """
    M = M.double()
    shape = (X.shape[0], M.shape[1]) if side == "B" else (M.shape[0], X.shape[1])
    out = torch.empty(shape, dtype=dtype, device=X.device)
    if X.device.type != "cpu":
        X = X.double()
        out.copy_(X @ M if side == "B" else M @ X)  # (out, r) @ (r, k) or (k, r) @ (r, in)
        return out
    for span, block in _blocks(X, side, torch.float64):
        if side == "B":
            out[span] = block @ M  # (count, r) @ (r, k) -> (count, k)
        else:
            out[:, span] = M @ block  # (k, r) @ (r, count) -> (k, count)
    return out


def cholesky_factors(G: torch.Tensor, certify_below: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Cholesky factors of Grams (n, r, r) with the condition number of each.

    The condition number is that of the Gram scaled to unit diagonal, G_s = D^-1 G D^-1 with
    D = diag(G)^1/2 (column scaling does not hurt a Cholesky route, only directions do), from its
    eigenvalues in float64: eps x it tracks
    the measured relative error of the singular values of B A within ~1.1x on graded, trained-like, steep
    and near-dependent factors (tests/test_spectra.py). The cheaper Cholesky-diagonal guess was up to ~280x
    low on steep spectra, and power iteration cost more than this on the CPU.

    The eigenvalues are the dearest part (an r x r eigensolver per module), so a cheap upper bound comes
    first (`condition_bound`, ~3x cheaper): where it is at most `certify_below` it is reported instead, as
    the caller only needs to know the module is accurate enough; elsewhere the exact value is computed.

    Returns:
        (L (n, r, r) float64, condition number (n,) float64 (the bound where that is <= certify_below); inf
        where the factorisation failed, G_s is numerically singular, or G overflowed or underflowed in its dtype).
    """
    lowest = torch.finfo(G.dtype).tiny / torch.finfo(G.dtype).eps  # below: the entries lost digits to underflow
    G = G.double()  # a float32 Gram's rounding is its error; factoring it in float64 adds none
    L, info = torch.linalg.cholesky_ex(G)
    diag = G.diagonal(dim1=-2, dim2=-1)  # (n, r)
    d = diag.sqrt()
    # overflowed, or so small in the Gram's own dtype that underflow ate its digits: unusable as it is
    usable = (info == 0) & torch.isfinite(G).all((-2, -1)) & (diag.amin(-1) >= lowest)
    kappa = condition_bound(G, L, d)
    uncertain = usable & ~(kappa <= certify_below)
    if uncertain.any():
        exact = uncertain.nonzero().flatten()
        kappa[exact] = _condition_numbers(G[exact] / (d[exact, :, None] * d[exact, None, :]))
    return L, torch.where(usable, kappa, torch.full_like(kappa, float("inf")))


def condition_bound(G: torch.Tensor, L: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """An upper bound on the condition numbers of the unit-diagonal Grams G_s (n,), from their Cholesky factors.

    With G = L L^T and d = sqrt(diag G), G_s = D^-1 G D^-1 = L_s L_s^T where L_s = D^-1 L, so
    cond(G_s) = ||G_s||_2 ||L_s^-1||_2^2 <= ||G_s||_1 ||L_s^-1||_1 ||L_s^-1||_inf (for symmetric G_s,
    ||G_s||_2 <= ||G_s||_1; for any X, ||X||_2^2 <= ||X||_1 ||X||_inf), and L_s^-1 = L^-1 D. One batched
    triangular solve and a few reductions, with two (n, r, r) temporaries (fresh pages are dear on VMs):
    on LoRA factors it is 2-30x above the exact value (tests/test_spectra.py).
    """
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    on_cpu = L.device.type == "cpu"
    X = _buffer(L.shape, L.dtype, "inverse").mT if on_cpu else None  # column-major, as LAPACK writes it
    X = torch.linalg.solve_triangular(L, eye, upper=False, out=X).abs_()  # |L^-1|: (n, r, r)
    x_1 = (X.sum(-2) * d).amax(-1)  # ||L^-1 D||_1: largest column sum
    x_inf = (X @ d[..., None]).amax((-2, -1))  # ||L^-1 D||_inf: largest row sum
    G_abs = torch.abs(G, out=_buffer(G.shape, G.dtype, "abs") if on_cpu else None)
    g_1 = ((G_abs @ (1 / d)[..., None]).squeeze(-1) / d).amax(-1)  # ||D^-1 G D^-1||_1
    bound = g_1 * x_1 * x_inf
    return torch.where(torch.isfinite(bound), bound, torch.full_like(bound, float("inf")))


def _condition_numbers(scaled: torch.Tensor) -> torch.Tensor:
    """Condition numbers of unit-diagonal Grams (n, r, r) from their eigenvalues; inf where not positive definite."""
    if scaled.device.type == "cpu" and scaled.numel() >= PARALLEL_MIN_ELEMENTS // 8:
        workers = outer_threads()
        eigen = torch.cat(map_workers(torch.linalg.eigvalsh, list(scaled.chunk(workers)), workers))  # (n, r)
    else:
        eigen = torch.linalg.eigvalsh(scaled)  # ascending: (n, r)
    kappa = eigen[:, -1] / eigen[:, 0]
    bad = ~(eigen[:, 0] > 0) | ~torch.isfinite(kappa)
    return torch.where(bad, torch.full_like(kappa, float("inf")), kappa)


def needs_float64(X: torch.Tensor, side: Side, tol: float, device: torch.device) -> bool:
    """Whether one factor's float32 Gram would miss `tol`: the precision probe for a group of equal-shape factors.

    A side that is consistently ill-conditioned (B of a trained adapter) then costs one float64 Gram per
    module, not a float32 one thrown away and a float64 one.
    """
    G = side_gram(X.to(device), side, torch.float32)[None]  # (1, r, r)
    _, kappa = cholesky_factors(G.cpu() if device.type == "mps" else G, tol / EPS32)
    return bool(EPS32 * kappa[0] > tol)


def side_grams(factors: list[torch.Tensor], side: Side, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Grams (n, r, r) of equal-shape factors of one side, in `dtype`, on `device` (the cpu for float64 on mps).

    On the CPU on worker threads when there is enough data (analysis/threads.py); elsewhere one at a time.
    """
    where = torch.device("cpu") if device.type == "mps" and dtype == torch.float64 else device
    if where.type == "cpu":
        size = sum(X.numel() for X in factors)
        workers = None if size >= PARALLEL_MIN_ELEMENTS else 1  # threads cost more than tiny Grams
        return torch.stack(map_workers(lambda X: side_gram(X, side, dtype), factors, workers))
    return torch.stack([side_gram(X.to(where), side, dtype) for X in factors])


def side_factors(
    factors: list[torch.Tensor], side: Side, tol: float, device: torch.device, *, use_float64: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cholesky factors of one side of a group of equal-shape modules, at the precision each needs.

    All Grams are formed in float64 if `use_float64` (see `needs_float64`), else in float32, and factored
    in one batch; float32 ones whose error estimate exceeds `tol` are redone in float64.

    Args:
        factors: B (out, r) or A (r, in) of each module (same shape), on any device.
        side: which factor they are.
        tol: relative error allowed for this side's contribution to the singular values.
        device: where to compute (float64 is done on the cpu for mps, which has none).
        use_float64: form every Gram in float64 from the start.

    Returns:
        (L (n, r, r) float64, error estimate (n,) float64 (inf where even float64 Cholesky failed), whether
        each module's Gram is float64 (n,) bool), on the compute device (the cpu for mps).
    """
    dev64 = torch.device("cpu") if device.type == "mps" else device

    def grams(indices: list[int], dtype: torch.dtype) -> torch.Tensor:
        return side_grams([factors[i] for i in indices], side, dtype, device).to(dev64)

    eps = EPS64 if use_float64 else EPS32
    everyone = list(range(len(factors)))
    L, kappa = cholesky_factors(grams(everyone, torch.float64 if use_float64 else torch.float32), tol / eps)
    is_float64 = torch.full((len(factors),), use_float64, device=dev64)
    redo = (~is_float64 & (EPS32 * kappa > tol)).nonzero().flatten().tolist()
    if redo:
        L[redo], kappa[redo] = cholesky_factors(grams(redo, torch.float64), tol / EPS64)
        is_float64[redo] = True
    eps = torch.where(is_float64, EPS64, EPS32).to(kappa.dtype)
    return L, eps * kappa, is_float64


def core_singular_values(L_B: torch.Tensor, L_A: torch.Tensor) -> torch.Tensor:
    """Singular values of the cores L_B^T L_A (n, r, r) in float64, descending: those of each B @ A."""
    C = L_B.double().transpose(-1, -2) @ L_A.double()  # (n, r, r) @ (n, r, r) -> (n, r, r)
    if C.device.type != "cpu" or C.numel() < PARALLEL_MIN_ELEMENTS // 8:
        return torch.linalg.svdvals(C)
    workers = outer_threads()
    parts = list(C.chunk(workers))  # LAPACK loops over the batch on one thread: split it
    return torch.cat(map_workers(torch.linalg.svdvals, parts, workers))  # (n, r)


def values_from_float64_B(
    factors_B: list[torch.Tensor], L_A: torch.Tensor, tol: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of B @ A for modules whose B side is float64, with no Cholesky factor of B's Gram.

    sigma_i(B A)^2 are the eigenvalues of M = L_A^T G_B L_A (the nonzero eigenvalues of A^T G_B A). Two r x r
    products and a symmetric eigensolver replace G_B's Cholesky factor, its condition bound, the core product
    and its SVD: about 40% less r x r work on the CPU. Eigenvalues carry absolute, not relative, errors: the
    Gram is rounded entrywise to ~eps of its columns' norms (D = diag(G_B)^1/2), so ||dM|| <= eps ||D L_A||_F^2,
    and the eigensolver adds ~r eps lambda_max; sigma_i is then off by about
    eps (||D L_A||_F^2 + r lambda_max) / (2 lambda_i), relative. Modules where that exceeds `tol` (small
    sigma_i far below the largest) take the Cholesky route (`cholesky_factors`, `core_singular_values`).

    Args:
        factors_B: B (out, r) of each module (same shape).
        L_A: Cholesky factors (n, r, r) float64 of the same modules' A A^T (`side_factors`).
        tol: relative error allowed for the B side's contribution.
        device: where to compute (the cpu for mps).

    Returns:
        (sigma (n, r) float64 descending, estimated relative error of the B side (n,) float64: inf where
        even the Cholesky route failed).
    """
    G_B = side_grams(factors_B, "B", torch.float64, device).to(L_A.device)  # (n, r, r)
    lam = torch.linalg.eigvalsh(L_A.mT @ G_B @ L_A)  # ascending: (n, r)
    d_L = (G_B.diagonal(dim1=-2, dim2=-1)[:, :, None] * L_A.square()).sum((-2, -1))  # ||D L_A||_F^2: (n,)
    spread = (d_L + L_A.shape[-1] * lam[:, -1]) / lam[:, 0]  # (||D L_A||_F^2 + r lambda_max) / lambda_min
    err = torch.where(lam[:, 0] > 0, EPS64 * spread / 2, torch.full_like(spread, float("inf")))
    sigma = lam.clamp_min(0).sqrt().flip(-1)  # descending
    redo = (~(err <= tol)).nonzero().flatten()
    if redo.numel():
        L_B, kappa = cholesky_factors(G_B[redo], tol / EPS64)
        sigma[redo], err[redo] = core_singular_values(L_B, L_A[redo]), EPS64 * kappa
    return sigma, err
