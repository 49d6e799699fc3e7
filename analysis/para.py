"""PARA: one global cut over the pooled effective singular values of all modules -> per-module ranks.

The sorted pool and its cumulative sums are computed once per adapter (`para_index`); every
re-allocation is a binary search. No per-layer normalisation (that is what makes ranks non-uniform).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from analysis.spectra import AdapterSpectra

CutUnit = Literal["tau", "relative", "energy", "params_fraction", "params", "mean_rank"]
CUT_UNITS: tuple[CutUnit, ...] = ("energy", "tau", "relative", "params_fraction", "params", "mean_rank")


@dataclass(frozen=True, eq=False)
class ParaIndex:
    """Precomputed pooled spectrum of one adapter (sorted once)."""

    spectra: AdapterSpectra
    # implementation-defined arrays (sorted values, owners, cumulative energy and params, ...)


@dataclass(frozen=True, eq=False)
class RankAllocation:
    """One cut, reported in every unit, with per-module ranks and errors (module order of the spectra)."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]
    """Kept rank per module (0 = module dropped)."""
    original_ranks: tuple[int, ...]
    n_kept: int
    """Number of kept components (position of the cut in the globally sorted list)."""
    tau: float
    """Absolute threshold: components with sigma >= tau are kept (the smallest kept sigma)."""
    relative_tau: float
    """tau / global sigma_max."""
    energy_kept: float
    """Sum of kept sigma^2 over total, in [0, 1]."""
    n_params_before: int
    n_params_after: int
    mean_rank: float
    module_energy_kept: tuple[float, ...]
    """Per module: kept sigma^2 / module's sigma^2."""
    module_rel_error: tuple[float, ...]
    """Per module: ||dW - dW_k||_F / ||dW||_F = sqrt(dropped sigma^2 / all sigma^2)."""
    rel_error: float
    """Whole adapter: sqrt(dropped energy / total energy)."""
    min_rank: int

    @property
    def params_fraction(self) -> float:
        return self.n_params_after / self.n_params_before if self.n_params_before else 0.0

    @property
    def rank_map(self) -> Mapping[str, int]:
        return dict(zip(self.names, self.ranks))


def para_index(spectra: AdapterSpectra) -> ParaIndex:
    raise NotImplementedError


def allocate_ranks(index: ParaIndex, value: float, unit: CutUnit = "energy", *, min_rank: int = 0) -> RankAllocation:
    raise NotImplementedError
