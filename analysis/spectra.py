"""Exact singular spectra of every module's update `scaling * B @ A`, computed in factor space.

Never forms the dense (out, in) update. Fast path: Gram matrices B^T B and A A^T (r x r), their
Cholesky factors L_B, L_A, and the singular values of the r x r core L_B^T L_A (the same core as the
QR route, R_B R_A^T, up to signs). Each Gram is float32 where its estimated error allows and float64
where not (analysis/grams.py). Where B's Gram is float64 (trained adapters: B is the ill-conditioned side),
the CPU takes the squared values as eigenvalues of L_A^T (B^T B) L_A instead, with no factor of B's Gram,
while its error estimate allows. Modules still too ill-conditioned fall back to QR (R only) in float64.
Batched over modules of equal shape, on cuda / mps / cpu; on the CPU on worker threads, each taking the
next part of a group when it is free and carrying it from Grams to singular values. Dense-update modules
(LR-LoRA's phi(B @ A), which no factor route covers) take one batched float64 SVD per shape. No streamlit here.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from analysis import grams, threads
from analysis.adapters import LoraAdapter, LoraModule

DeviceName = Literal["auto", "cpu", "cuda", "mps"]

# The Gram route squares condition numbers: when B's (or A's) columns are nearly dependent, small singular
# values of B A lose relative accuracy. A side whose estimated relative error exceeds half of this in float32
# is formed in float64; a module whose estimate still exceeds it is redone by QR in float64. The estimate
# is within ~1.1x of the measured error (tests/test_spectra.py), so 5e-6 keeps the float32 path >= 15x
# inside the 1e-4 agreement target of bench/.
GRAM_REL_TOL = 5e-6


@dataclass(frozen=True, eq=False)
class Spectrum:
    """Effective singular values of one module's update, descending, float64."""

    name: str
    sigma: np.ndarray
    """(r,) effective singular values `scaling * sigma_i`, descending (zero-padded to r)."""
    in_features: int
    out_features: int
    kind: str = "linear"
    min_rank: int = 0
    """Rank every cut keeps at least: 1 for a DoRA module (peft cannot hold one at rank 0), else 0."""

    @property
    def r(self) -> int:
        return int(self.sigma.shape[0])

    @property
    def energy(self) -> float:
        """Squared Frobenius norm of the update: sum of sigma^2."""
        return float(np.sum(self.sigma**2))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma[0]) if self.sigma.size else 0.0

    @property
    def effective_rank(self) -> float:
        """exp of the entropy of p = sigma / sum(sigma) (Roy & Vetterli 2007); 0 for a zero update.

        Example: sigma = [1, 1, 0, 0] -> p = [.5, .5] -> exp(ln 2) = 2.
        """
        total = float(np.sum(self.sigma))
        if total <= 0.0:
            return 0.0
        p = self.sigma[self.sigma > 0] / total
        return float(np.exp(-np.sum(p * np.log(p))))

    @property
    def stable_rank(self) -> float:
        """||dW||_F^2 / ||dW||_2^2 = sum sigma^2 / sigma_max^2; 0 for a zero update."""
        return self.energy / self.sigma_max**2 if self.sigma_max > 0 else 0.0

    @property
    def cost_per_rank(self) -> int:
        """Parameters one rank component costs: in_features + out_features."""
        return self.in_features + self.out_features


@dataclass(frozen=True, eq=False)
class AdapterSpectra:
    """All modules' spectra (same order as `adapter.modules`) and how they were computed."""

    fingerprint: str
    spectra: tuple[Spectrum, ...]
    device: str
    dtype: str
    seconds: float
    n_fallback: int = 0
    """Modules recomputed in float64 by QR because even their float64 Gram matrices were too ill-conditioned."""
    n_float64_gram: int = 0
    """Modules whose Gram of B or of A was formed in float64 because a float32 one was not accurate enough."""

    @property
    def total_energy(self) -> float:
        return float(sum(s.energy for s in self.spectra))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.spectra)


def pick_device(device: DeviceName = "auto") -> torch.device:
    """`auto` -> cuda if available, then mps, then cpu; otherwise the named device (checked)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='auto' or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but torch sees no Apple GPU; use device='auto' or 'cpu'")
    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be one of auto, cpu, cuda, mps, got {device!r}")
    return torch.device(device)


def _qr_svdvals(modules: list[LoraModule], device: torch.device) -> torch.Tensor:
    """Singular values of each B @ A in float64 from R factors only: R_B R_A^T is the r x r core."""
    device = torch.device("cpu") if device.type == "mps" else device  # mps has no float64
    out = []
    for m in modules:
        R_B = torch.linalg.qr(m.B.to(device, torch.float64), mode="r").R  # (min(out, r), r)
        R_A = torch.linalg.qr(m.A.T.to(device, torch.float64), mode="r").R  # (min(in, r), r)
        sigma = torch.linalg.svdvals(R_B @ R_A.T)  # (p, r) @ (r, q) -> (p, q)
        out.append(torch.nn.functional.pad(sigma, (0, m.r - sigma.shape[0])).cpu())  # zero-pad to r
    return torch.stack(out)


def _dense_svdvals(modules: list[LoraModule], device: torch.device) -> torch.Tensor:
    """Singular values of equal-shape dense updates by one batched float64 SVD (mps has no float64: cpu)."""
    device = torch.device("cpu") if device.type == "mps" else device
    deltas = torch.stack([m.delta for m in modules]).to(device, torch.float64)  # (n, out, in)
    return torch.linalg.svdvals(deltas).cpu()  # (n, min(out, in)), descending, scale included


def _gram_route(groups: list[list[LoraModule]], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Singular values of groups of equal-shape modules from Cholesky factors of their Grams.

    CPU (and mps): each side in float32 where its error estimate allows, float64 otherwise
    (`grams.side_factors`); a float64 B side by eigenvalues (`grams.values_from_float64_B`), which take
    the Cholesky route themselves where their error estimate is too large. On the CPU each group is split
    between worker threads with one-thread BLAS (analysis/threads.py), and every part of every group is one
    task taking its modules from Grams to singular values, handed to whichever worker is free: no step runs on
    one core, and no worker waits for the other between groups. CUDA: both sides in float64 (cheap there),
    with no per-module host syncs.

    Returns:
        Per group: (sigma (n, r) float64 on cpu, estimated relative error (n,) on cpu, modules with a
        float64 Gram).
    """
    is_cuda = device.type == "cuda"
    tol = GRAM_REL_TOL / 2  # each side gets half the error budget, so their sum stays within GRAM_REL_TOL

    precision: dict[grams.Side, bool] = {}  # side -> float64 Grams, probed by the first task(s) to get there

    def use_float64(part: list[LoraModule], side: grams.Side) -> bool:
        """The precision to start each side in: a trained adapter's B needs float64 and its A does not, in
        every layer, so one probe per side serves all groups (a module that then misses the tolerance in
        float32 is still redone in float64 by `grams.side_factors`)."""
        if side not in precision:
            precision[side] = is_cuda or grams.needs_float64(getattr(part[0], side), side, tol, device)
        return precision[side]

    def values(part: list[LoraModule]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L_A, err_A, is64_A = grams.side_factors(
            [m.A for m in part], "A", tol, device, use_float64=use_float64(part, "A")
        )
        if use_float64(part, "B") and not is_cuda:  # the usual case: from B's Gram without its Cholesky factor
            sigma, err_B = grams.values_from_float64_B([m.B for m in part], L_A, tol, device)
            is64_B = torch.ones_like(is64_A)
        else:
            L_B, err_B, is64_B = grams.side_factors(
                [m.B for m in part], "B", tol, device, use_float64=use_float64(part, "B")
            )
            sigma = grams.core_singular_values(L_B, L_A)
        return sigma.cpu(), (err_B + err_A).cpu(), (is64_B | is64_A).cpu()

    workers = threads.outer_threads() if device.type == "cpu" else 1
    sizes = [sum(m.A.numel() + m.B.numel() for m in group) for group in groups]
    # tiny groups: one task; never more parts than modules (an empty part has no Grams to stack: one lm_head
    # module of >= PARALLEL_MIN_ELEMENTS values is one task, whose Grams split their blocks between workers)
    splits = [
        min(workers, len(group)) if size >= grams.PARALLEL_MIN_ELEMENTS else 1
        for group, size in zip(groups, sizes, strict=True)
    ]
    tasks = [group[w::k] for group, k in zip(groups, splits, strict=True) for w in range(k)]
    with contextlib.nullcontext() if is_cuda else threads.engine_threads():
        done = iter(threads.map_workers(values, tasks, workers) if workers > 1 else [values(t) for t in tasks])
    out = []
    for group, k in zip(groups, splits, strict=True):
        sigma, err, is64 = (torch.cat(x) for x in zip(*(next(done) for _ in range(k)), strict=True))
        order = torch.tensor([i for w in range(k) for i in range(len(group))[w::k]]).argsort()  # undo the split
        out.append((sigma[order], err[order], int(is64.sum())))
    return out


def adapter_spectra(
    adapter: LoraAdapter, *, device: DeviceName = "auto", dtype: torch.dtype = torch.float32
) -> AdapterSpectra:
    """Exact effective singular values of every module, batched by shape.

    Args:
        adapter: the loaded adapter.
        device: where to compute; `auto` picks cuda, then mps, then cpu.
        dtype: float32 (default; Gram route, float64 Grams where needed, float64 QR as the last resort) or
            float64 (QR route throughout).

    Returns:
        Spectra in module order, with the device, dtype and wall time used.

    Raises:
        ValueError: for an unsupported dtype or an unavailable device.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = pick_device(device)
    start = time.perf_counter()
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    dense: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(adapter.modules):
        if m.is_dense:
            dense[(m.out_features, m.in_features)].append(i)
        else:
            groups[(m.out_features, m.in_features, m.r)].append(i)

    sigmas: list[np.ndarray | None] = [None] * len(adapter.modules)
    for idx in dense.values():  # dense updates (LR-LoRA): no factor route, a batched SVD per shape
        for row, values in zip(idx, _dense_svdvals([adapter.modules[i] for i in idx], dev).numpy(), strict=True):
            sigmas[row] = values
    n_fallback = n_float64_gram = 0
    by_gram = [key for key in groups if dtype == torch.float32 and 0 < key[2] <= min(key[:2])]
    gram_values = dict(zip(by_gram, _gram_route([[adapter.modules[i] for i in groups[k]] for k in by_gram], dev)))
    for (out_f, in_f, r), idx in groups.items():
        group = [adapter.modules[i] for i in idx]
        if (out_f, in_f, r) in gram_values:
            values, err, n64 = gram_values[out_f, in_f, r]
            n_float64_gram += n64
            bad = (err > GRAM_REL_TOL).nonzero().flatten().tolist()
            if bad:
                n_fallback += len(bad)
                values[bad] = _qr_svdvals([group[i] for i in bad], dev)
        elif r == 0:
            values = torch.zeros(len(idx), 0, dtype=torch.float64)
        else:
            values = _qr_svdvals(group, dev)
        scales = torch.tensor([abs(adapter.modules[i].scaling) for i in idx], dtype=torch.float64)
        values = values * scales[:, None]  # (n, k) effective sigma
        for row, i in enumerate(idx):
            sig = np.zeros(r)
            sig[: values.shape[1]] = values[row].numpy()
            sigmas[i] = sig

    spectra = tuple(
        Spectrum(m.name, s, m.in_features, m.out_features, m.kind, min_rank=int(m.is_dora and m.r > 0))
        for m, s in zip(adapter.modules, sigmas, strict=True)
    )
    seconds = time.perf_counter() - start
    dtype_name = str(dtype).removeprefix("torch.")
    return AdapterSpectra(adapter.fingerprint, spectra, str(dev), dtype_name, seconds, n_fallback, n_float64_gram)


# Relative error accepted from the float64 Cholesky route of `truncated_factors` before it falls back to QR.
FACTORS_REL_TOL = 1e-10


def truncated_factors(
    module: LoraModule, k: int, *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-k factors of `scaling * B @ A` with the scale folded in.

    Computed in float64. Fast route: with B^T B = L_B L_B^T and A A^T = L_A L_A^T (so R_B = L_B^T and
    R_A = L_A^T are the QR factors' R), the core is L_B^T L_A = U S V^T and
    B_k = B L_B^-T U_k sqrt(S_k), A_k = sqrt(S_k) V_k^T L_A^-1 A: only r x r solves and two thin products,
    never Q. Ill-conditioned factors (or r > min(out, in)) take the QR route.

    Args:
        module: the module to truncate.
        k: kept rank, 0 <= k <= module.r.
        dtype: dtype of the returned factors.

    Returns:
        (B_k, A_k) with shapes (out, k) and (k, in), so B_k @ A_k is the best rank-k approximation
        (Eckart-Young): B_k = Q_B U_k sqrt(S_k), A_k = sqrt(S_k) V_k^T Q_A^T.

    Raises:
        ValueError: if k is outside [0, module.r].
    """
    if not 0 <= k <= module.r:
        raise ValueError(f"k must be in [0, {module.r}] for module {module.name}, got {k}")
    if module.delta is not None:  # a dense update: its own SVD, B_k = U_k sqrt(S_k), A_k = sqrt(S_k) V_k^T
        U, S, Vh = torch.linalg.svd(module.delta.double(), full_matrices=False)  # (out, p), (p,), (p, in)
        root = S[:k].sqrt()
        return (U[:, :k] * root).to(dtype), (root[:, None] * Vh[:k]).to(dtype)  # (out, k), (k, in)
    if 0 < module.r <= min(module.out_features, module.in_features):
        with threads.engine_threads():
            factors = _cholesky_truncation(module, k, dtype)
        if factors is not None:
            return factors
    B, A = module.B.double(), module.A.double()
    return tuple(x.to(dtype) for x in _qr_truncation(B, A, module.scaling, k))  # type: ignore[return-value]


def _cholesky_truncation(module: LoraModule, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The Cholesky route of `truncated_factors` in float64 (None when the Grams are too ill-conditioned)."""
    G_B = grams.side_gram(module.B, "B", torch.float64)  # (r, r)
    G_A = grams.side_gram(module.A, "A", torch.float64)  # (r, r)
    L_B, info_B = torch.linalg.cholesky_ex(G_B)
    L_A, info_A = torch.linalg.cholesky_ex(G_A)
    if info_B or info_A:
        return None
    # quick guess of the squared condition numbers (Cholesky diagonal of the unit-diagonal Grams): it can be
    # ~300x low on steep spectra, which at FACTORS_REL_TOL still leaves errors far below float32 rounding
    s_B = L_B.diagonal() / G_B.diagonal().sqrt()
    s_A = L_A.diagonal() / G_A.diagonal().sqrt()
    if grams.EPS64 * float(s_B.min() ** -2 + s_A.min() ** -2) > FACTORS_REL_TOL:
        return None
    U, S, Vh = torch.linalg.svd(module.scaling * (L_B.T @ L_A))  # (r, r) core = R_B R_A^T
    root = S[:k].sqrt()
    M_B = torch.linalg.solve_triangular(L_B.T, U[:, :k] * root, upper=True)  # R_B^-1 U_k sqrt(S_k): (r, k)
    M_A = torch.linalg.solve_triangular(L_A, root[:, None] * Vh[:k], upper=False, left=False)  # (k, r) L_A^-1
    B_k = grams.upcast_matmul(module.B, M_B, "B", dtype)  # (out, r) @ (r, k) -> (out, k)
    A_k = grams.upcast_matmul(module.A, M_A, "A", dtype)  # (k, r) @ (r, in) -> (k, in)
    return B_k, A_k


def _qr_truncation(B: torch.Tensor, A: torch.Tensor, scaling: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    Q_B, R_B = torch.linalg.qr(B)  # (out, p), (p, r)
    Q_A, R_A = torch.linalg.qr(A.T)  # (in, q), (q, r)
    U, S, Vh = torch.linalg.svd(scaling * (R_B @ R_A.T), full_matrices=False)  # (p, m), (m,), (m, q)
    k_eff = min(k, S.shape[0])
    root = S[:k_eff].sqrt()
    B_k = torch.zeros(B.shape[0], k, dtype=torch.float64)
    A_k = torch.zeros(k, A.shape[1], dtype=torch.float64)
    B_k[:, :k_eff] = (Q_B @ U[:, :k_eff]) * root  # (out, p) @ (p, k) -> (out, k)
    A_k[:k_eff] = root[:, None] * (Vh[:k_eff] @ Q_A.T)  # (k, q) @ (q, in) -> (k, in)
    return B_k, A_k
