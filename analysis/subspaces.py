"""How alike two adapters' updates are, per module: principal angles between their top-k singular subspaces.

Everything comes from the factors (never a dense ΔW or a dense SVD): `truncated_factors` gives the rank-k
factors B_k = Q_B U_k √S_k and A_k = √S_k V_kᵀ Q_Aᵀ of `s·B·A`, whose column and row spaces are the top-k
left (output) and right (input) singular subspaces; their columns (rows) are orthogonal, so scaling them to
unit length gives orthonormal bases, and the angles between two bases come from one k x k SVD.
No streamlit here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analysis import threads
from analysis.adapters import LoraAdapter, LoraModule
from analysis.spectra import truncated_factors

ZERO_SIGMA = 1e-12  # singular values below this fraction of a module's largest span no direction


@dataclass(frozen=True)
class ModuleSimilarity:
    """The top-k singular subspaces of one module in two adapters, compared."""

    name: str
    k: int
    """Directions compared: the k asked for, capped by each side's non-zero rank (0: nothing to compare)."""
    out_degrees: tuple[float, ...]
    """Principal angles between the output (left, column) subspaces, ascending, in degrees."""
    in_degrees: tuple[float, ...]
    """Principal angles between the input (right, row) subspaces, ascending, in degrees."""

    @property
    def out_mean(self) -> float:
        """Mean output-space angle in degrees (NaN when k is 0)."""
        return sum(self.out_degrees) / self.k if self.k else math.nan

    @property
    def in_mean(self) -> float:
        """Mean input-space angle in degrees (NaN when k is 0)."""
        return sum(self.in_degrees) / self.k if self.k else math.nan

    @property
    def overlap(self) -> float:
        """Mean cos² of the output- and input-space angles: 1 for the same subspaces, 0 for orthogonal ones."""
        if not self.k:
            return math.nan
        cos2 = [math.cos(math.radians(d)) ** 2 for d in (*self.out_degrees, *self.in_degrees)]
        return sum(cos2) / len(cos2)


def principal_angles(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Principal angles between span(X) and span(Y), ascending, in degrees.

    Args:
        X: (n, k) with orthonormal columns; Y: (n, k) with orthonormal columns.

    Returns:
        (k,) float64 tensor of angles in [0, 90]: the arccos of the singular values of XᵀY (Björck & Golub
        1973). Angles under about 1e-6 degrees read as 0 (float64 cosines).

    Example:
        X = e1, Y = cos(30°) e1 + sin(30°) e2 -> [30.0].
    """
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    M = X.double().T @ Y.double()  # (k, n) @ (n, k) -> (k, k)
    cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)  # descending: the smallest angles first
    return torch.rad2deg(torch.arccos(cos))


def _columns_normalised(X: torch.Tensor) -> torch.Tensor:
    """X with unit columns: for B_k = Q_B U_k √S_k (orthogonal columns of norms √s_i) an orthonormal basis
    of its span, without a QR of the tall matrix."""
    return X / X.norm(dim=0, keepdim=True)  # (n, k) / (1, k)


def _nonzero_rank(module: LoraModule, sigma: Sequence[float]) -> int:
    top = max(sigma, default=0.0)
    return sum(1 for s in sigma if s > ZERO_SIGMA * top) if top > 0 else 0


def module_similarity(a: LoraModule, b: LoraModule, k: int, *, sigma_a=None, sigma_b=None) -> ModuleSimilarity:
    """Principal angles between the top-k singular subspaces of `a` and `b` (same name and shape).

    Args:
        a, b: the module in each adapter.
        k: directions to compare; capped by each module's non-zero rank.
        sigma_a, sigma_b: the modules' singular values if known (they only set the non-zero rank).

    Raises:
        ValueError: when the shapes differ or k < 1.
    """
    if (a.out_features, a.in_features) != (b.out_features, b.in_features):
        raise ValueError(
            f"module {a.name}: shapes differ ({a.out_features}x{a.in_features} and {b.out_features}x{b.in_features})"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with threads.engine_threads():  # one-thread BLAS: small calls, and threaded ones stall on a busy machine
        ranks = [_nonzero_rank(m, s if s is not None else _sigma(m)) for m, s in ((a, sigma_a), (b, sigma_b))]
        k_eff = min(k, *ranks)
        if k_eff == 0:
            return ModuleSimilarity(a.name, 0, (), ())
        B_a, A_a = truncated_factors(a, k_eff)  # (out, k), (k, in)
        B_b, A_b = truncated_factors(b, k_eff)
        out = principal_angles(_columns_normalised(B_a), _columns_normalised(B_b)).tolist()
        inp = principal_angles(_columns_normalised(A_a.T), _columns_normalised(A_b.T)).tolist()  # (in, k) each
    return ModuleSimilarity(a.name, k_eff, tuple(out), tuple(inp))


def _sigma(module: LoraModule) -> list[float]:
    """Singular values of a module from its r x r core (for callers without its Spectrum)."""
    R_B = np.linalg.qr(module.B.double().numpy(), mode="r")  # (r, r)
    R_A = np.linalg.qr(module.A.double().numpy().T, mode="r")  # (r, r)
    return (module.scaling * np.linalg.svd(R_B @ R_A.T, compute_uv=False)).tolist()


@dataclass(frozen=True)
class AdapterMatch:
    """Which modules two adapters share (same name and shape), and which they do not."""

    common: tuple[str, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shape_differs: tuple[str, ...]


def match_modules(a: LoraAdapter, b: LoraAdapter) -> AdapterMatch:
    """Modules of `a` and `b` by name, in `a`'s order."""
    by_name = {m.name: m for m in b.modules}
    common, differs = [], []
    for m in a.modules:
        if (other := by_name.get(m.name)) is None:
            continue
        same = (m.out_features, m.in_features) == (other.out_features, other.in_features)
        (common if same else differs).append(m.name)
    names_a = {m.name for m in a.modules}
    return AdapterMatch(
        tuple(common),
        tuple(m.name for m in a.modules if m.name not in by_name),
        tuple(m.name for m in b.modules if m.name not in names_a),
        tuple(differs),
    )


def adapter_similarity(
    a: LoraAdapter,
    b: LoraAdapter,
    k: int,
    *,
    sigmas: tuple[dict[str, Sequence[float]], dict[str, Sequence[float]]] | None = None,
) -> list[ModuleSimilarity]:
    """`module_similarity` for every module the two adapters share (same name and shape), in `a`'s order.

    Args:
        a, b: the two adapters.
        k: directions compared per module.
        sigmas: per adapter, module name -> singular values (from their spectra), to skip recomputing them.
    """
    modules_b = {m.name: m for m in b.modules}
    common = set(match_modules(a, b).common)
    out = []
    with threads.engine_threads():
        for m in a.modules:
            if m.name in common:
                s_a, s_b = (sigmas[0].get(m.name), sigmas[1].get(m.name)) if sigmas else (None, None)
                out.append(module_similarity(m, modules_b[m.name], k, sigma_a=s_a, sigma_b=s_b))
    return out
