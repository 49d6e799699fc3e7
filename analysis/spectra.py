"""Exact singular spectra of every module's update `scaling * B @ A`, computed in factor space.

Never forms the dense (out, in) update: QR of B and A^T, then the SVD (or Gram eigenvalues) of the
small r x r core. Batched over modules of equal shape, on cuda / mps / cpu. No streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from analysis.adapters import LoraAdapter, LoraModule

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """Effective singular values of one module's update, descending, float64."""

    name: str
    sigma: np.ndarray
    """(r,) effective singular values `scaling * sigma_i`, descending."""
    in_features: int
    out_features: int
    kind: str = "linear"

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
        """exp of the entropy of sigma / sum(sigma) (Roy & Vetterli 2007)."""
        raise NotImplementedError

    @property
    def stable_rank(self) -> float:
        """||dW||_F^2 / ||dW||_2^2 = sum sigma^2 / sigma_max^2."""
        raise NotImplementedError

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

    @property
    def total_energy(self) -> float:
        return float(sum(s.energy for s in self.spectra))


def adapter_spectra(
    adapter: LoraAdapter, *, device: DeviceName = "auto", dtype: torch.dtype = torch.float32
) -> AdapterSpectra:
    """Exact effective singular values of every module, batched by shape."""
    raise NotImplementedError


def truncated_factors(module: LoraModule, k: int, *, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-k factors of `scaling * B @ A` with the scale folded in.

    Returns:
        (B_k, A_k) with shapes (out, k) and (k, in), so B_k @ A_k is the best rank-k approximation
        (Eckart-Young). B_k = Q_B U_k sqrt(S_k), A_k = sqrt(S_k) V_k^T Q_A^T.
    """
    raise NotImplementedError
