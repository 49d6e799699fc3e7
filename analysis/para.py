"""PARA: one global cut over the pooled effective singular values of all modules -> per-module ranks.

The pooled values are sorted once per adapter (`para_index`) with their cumulative energy and parameter
cost; every unit of the cut (tau, relative tau, energy, params, mean rank) maps to one position in that
sorted list by binary search. No per-layer normalisation: that is what makes ranks non-uniform.
Kept singular values are not rescaled (PARA paper, section 3; methods.md 1.3).
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
    """Pooled spectrum of one adapter, sorted once; arrays are read-only.

    With n pooled components, position p means "keep the p largest".
    """

    spectra: AdapterSpectra
    values: np.ndarray
    """(n,) pooled effective sigma, descending."""
    owner: np.ndarray
    """(n,) module index of each pooled value."""
    cum_energy: np.ndarray
    """(n + 1,) sum of sigma^2 of the first p values."""
    cum_params: np.ndarray
    """(n + 1,) parameter cost of the first p values (each costs in + out of its module)."""
    cum_module_energy: np.ndarray
    """(n_modules, r_max + 1) per-module sum of its k largest sigma^2."""
    module_energy: np.ndarray
    """(n_modules,) sigma^2 summed per module."""
    cost: np.ndarray
    """(n_modules,) in + out per module."""
    original_ranks: np.ndarray
    """(n_modules,) r per module."""
    floor: np.ndarray
    """(n_modules,) rank every cut keeps at least (1 for DoRA modules, see `Spectrum.min_rank`), <= r."""

    @property
    def n_components(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_modules(self) -> int:
        return int(self.cost.shape[0])

    @property
    def sigma_max(self) -> float:
        return float(self.values[0]) if self.n_components else 0.0

    @property
    def total_energy(self) -> float:
        return float(self.cum_energy[-1])

    @property
    def n_params_before(self) -> int:
        return int(np.dot(self.original_ranks, self.cost))


@dataclass(frozen=True, eq=False)
class RankAllocation:
    """One cut, reported in every unit, with per-module ranks and errors (module order of the spectra)."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]
    """Kept rank per module (0 = module dropped)."""
    original_ranks: tuple[int, ...]
    n_kept: int
    """Number of kept components (after min_rank)."""
    tau: float
    """Absolute threshold of the global cut: components with sigma >= tau are kept (the smallest kept sigma)."""
    relative_tau: float
    """tau / global sigma_max."""
    energy_kept: float
    """Sum of kept sigma^2 over total, in [0, 1]."""
    n_params_before: int
    n_params_after: int
    mean_rank: float
    module_energy_kept: tuple[float, ...]
    """Per module: kept sigma^2 / module's sigma^2 (1 for a zero update)."""
    module_rel_error: tuple[float, ...]
    """Per module: ||dW - dW_k||_F / ||dW||_F = sqrt(dropped sigma^2 / all sigma^2)."""
    rel_error: float
    """Whole adapter: sqrt(dropped energy / total energy)."""
    min_rank: int
    held: tuple[str, ...] = ()
    """DoRA modules the cut alone would drop, kept at rank 1 (peft cannot hold a DoRA module at rank 0)."""

    @property
    def params_fraction(self) -> float:
        return self.n_params_after / self.n_params_before if self.n_params_before else 0.0

    @property
    def rank_map(self) -> Mapping[str, int]:
        return dict(zip(self.names, self.ranks, strict=True))


@dataclass(frozen=True, eq=False)
class ParaSweep:
    """The nested family of cuts as curves (min_rank 0), one point per sampled cut position."""

    n_kept: np.ndarray
    params_fraction: np.ndarray
    energy_kept: np.ndarray
    rel_error: np.ndarray
    tau: np.ndarray
    mean_rank: np.ndarray


def para_index(spectra: AdapterSpectra) -> ParaIndex:
    """Sort the pooled effective singular values once and precompute cumulative sums.

    Args:
        spectra: per-module spectra of one adapter.

    Returns:
        The index every `allocate_ranks` call searches.

    Example:
        Two modules with sigma [4, 1] and [2] (cost 10 and 20 per rank) pool to [4, 2, 1] owned by
        [0, 1, 0]; cum_energy = [0, 16, 20, 21], cum_params = [0, 10, 30, 40].
    """
    sigmas = [s.sigma for s in spectra.spectra]
    n_modules = len(sigmas)
    original_ranks = np.array([s.shape[0] for s in sigmas], dtype=np.int64)
    cost = np.array([s.cost_per_rank for s in spectra.spectra], dtype=np.int64)
    values = np.concatenate(sigmas) if n_modules else np.zeros(0)
    owner = np.repeat(np.arange(n_modules), original_ranks)
    order = np.argsort(-values, kind="stable")  # descending; ties keep module order
    values, owner = values[order], owner[order]
    r_max = int(original_ranks.max()) if n_modules else 0
    cum_module_energy = np.zeros((n_modules, r_max + 1))
    for m, s in enumerate(sigmas):
        cum_module_energy[m, 1 : s.shape[0] + 1] = np.cumsum(s**2)
        cum_module_energy[m, s.shape[0] + 1 :] = cum_module_energy[m, s.shape[0]]
    arrays = {
        "values": values,
        "owner": owner,
        "cum_energy": np.concatenate([[0.0], np.cumsum(values**2)]),
        "cum_params": np.concatenate([[0], np.cumsum(cost[owner])]),
        "cum_module_energy": cum_module_energy,
        "module_energy": cum_module_energy[:, -1].copy() if n_modules else np.zeros(0),
        "cost": cost,
        "original_ranks": original_ranks,
        "floor": np.minimum(original_ranks, [s.min_rank for s in spectra.spectra]).astype(np.int64),
    }
    for a in arrays.values():
        a.setflags(write=False)  # shared across sessions through the app's cache
    return ParaIndex(spectra=spectra, **arrays)


def cut_position(index: ParaIndex, value: float, unit: CutUnit = "energy", *, min_rank: int = 0) -> int:
    """Number of pooled components (largest first) that the cut `value` in `unit` keeps.

    Args:
        index: from `para_index`.
        value: tau >= 0 ("tau"); tau / sigma_max in [0, 1] ("relative"); energy fraction in [0, 1]
            ("energy": the smallest cut keeping at least that much); params fraction in [0, 1]
            ("params_fraction") or count >= 0 ("params": the largest cut within that budget); mean
            rank >= 0 ("mean_rank": the largest cut whose mean rank over modules is within it).
        min_rank: the allocation's minimum rank (see `allocate_at`): a parameter budget counts what it and
            the DoRA floors add, so the cut stays within the budget (0 when even no component exceeds it).

    Returns:
        p in [0, n_components].

    Raises:
        ValueError: for an unknown unit or a value out of range; the message names the fix.
    """
    n = index.n_components
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"threshold must be a finite number for unit={unit!r}, got {value}")
    if unit in ("relative", "energy", "params_fraction") and not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] for unit={unit!r}, got {value}")
    if value < 0:
        raise ValueError(f"threshold must be >= 0 for unit={unit!r}, got {value}")
    if unit in ("tau", "relative"):
        tau = value if unit == "tau" else value * index.sigma_max
        if tau <= 0:
            return n
        # values are descending: count of values >= tau (ties at tau are kept together); the 1e-12 relative
        # slack keeps tau = relative_tau * sigma_max from dropping the value it was computed from.
        return int(np.searchsorted(-index.values, -tau * (1 - 1e-12), side="right"))
    if unit == "energy":
        p = int(np.searchsorted(index.cum_energy, value * index.total_energy * (1 - 1e-12), side="left"))
        return min(p, n)
    if unit in ("params_fraction", "params"):
        # (1 + 1e-12): a fraction read off an allocation must give that allocation back despite rounding
        budget = value * index.n_params_before * (1 + 1e-12) if unit == "params_fraction" else value
        high = int(np.searchsorted(index.cum_params, budget, side="right")) - 1
        floor = _floor(index, min_rank)
        if not floor.any():
            return high
        low = 0  # params at a position only grow with it: the largest within the budget, by bisection
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if _params_at(index, mid, floor) <= budget else (low, mid - 1)
        return low
    if unit == "mean_rank":
        return min(int(np.floor(value * index.n_modules + 1e-9)), n)
    raise ValueError(f"unit must be one of {', '.join(CUT_UNITS)}, got {unit!r}")


def _floor(index: ParaIndex, min_rank: int) -> np.ndarray:
    """(n_modules,) the least rank of each module: the DoRA floor, and min_rank where the module has a rank."""
    if min_rank not in (0, 1):
        raise ValueError(f"min_rank must be 0 or 1, got {min_rank}")
    return np.maximum(index.floor, np.minimum(index.original_ranks, min_rank))


def _params_at(index: ParaIndex, position: int, floor: np.ndarray) -> int:
    ranks = np.maximum(np.bincount(index.owner[:position], minlength=index.n_modules), floor)
    return int(np.dot(ranks, index.cost))


def allocate_at(index: ParaIndex, position: int, *, min_rank: int = 0) -> RankAllocation:
    """The allocation that keeps the `position` largest pooled components (plus min_rank per module)."""
    floor = _floor(index, min_rank)
    n = index.n_components
    if not 0 <= position <= n:
        raise ValueError(f"position must be in [0, {n}], got {position}")
    cut = np.bincount(index.owner[:position], minlength=index.n_modules)
    ranks = np.maximum(cut, floor)
    held = tuple(index.spectra.names[m] for m in np.flatnonzero((cut == 0) & (index.floor > 0)))
    m = np.arange(index.n_modules)
    kept = index.cum_module_energy[m, ranks]
    module_total = index.module_energy
    dropped = module_total - kept  # exactly 0 where nothing is dropped (same cumulative sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        module_kept = np.where(module_total > 0, kept / module_total, 1.0)
        module_error = np.where(module_total > 0, np.sqrt(np.clip(dropped / module_total, 0.0, 1.0)), 0.0)
    total = float(module_total.sum())
    dropped_fraction = float(np.clip(dropped.sum() / total, 0.0, 1.0)) if total > 0 else 0.0
    energy_kept = 1.0 - dropped_fraction
    tau = float(index.values[position - 1]) if position > 0 else float(np.nextafter(index.sigma_max, np.inf))
    return RankAllocation(
        names=index.spectra.names,
        ranks=tuple(int(k) for k in ranks),
        original_ranks=tuple(int(r) for r in index.original_ranks),
        n_kept=int(ranks.sum()),
        tau=tau,
        relative_tau=tau / index.sigma_max if index.sigma_max > 0 else 0.0,
        energy_kept=energy_kept,
        n_params_before=index.n_params_before,
        n_params_after=int(np.dot(ranks, index.cost)),
        mean_rank=float(ranks.mean()) if index.n_modules else 0.0,
        module_energy_kept=tuple(float(x) for x in module_kept),
        module_rel_error=tuple(float(x) for x in module_error),
        rel_error=float(np.sqrt(dropped_fraction)),
        min_rank=min_rank,
        held=held,
    )


def allocate_ranks(index: ParaIndex, value: float, unit: CutUnit = "energy", *, min_rank: int = 0) -> RankAllocation:
    """PARA's global cut: ranks per module from one threshold over all modules' singular values.

    Args:
        index: from `para_index` (computed once per adapter).
        value: the threshold in `unit` (see `cut_position`).
        unit: "energy" (default), "tau", "relative", "params_fraction", "params" or "mean_rank".
        min_rank: 1 keeps at least one component in every module; 0 lets modules drop out.

    Returns:
        The allocation with the cut reported in every unit.

    Raises:
        ValueError: for a value out of range for its unit, an unknown unit or a bad min_rank.

    Example:
        Pooled sigma [4, 2, 1] from modules [0, 1, 0]: energy 0.9 of 21 needs 18.9, so the cut keeps
        [4, 2] (20 >= 18.9): ranks [1, 1], tau 2, relative tau 0.5.
    """
    allocation = allocate_at(index, cut_position(index, value, unit, min_rank=min_rank), min_rank=min_rank)
    budget = value if unit == "params" else value * index.n_params_before * (1 + 1e-12)
    if unit in ("params", "params_fraction") and allocation.n_params_after > budget:
        raise ValueError(
            f"a budget of {int(budget):,} parameters is below the {allocation.n_params_after:,} that the minimum "
            "rank (and DoRA modules' rank 1) alone keep; raise the budget or set the minimum rank to 0"
        )
    return allocation


def para_sweep(index: ParaIndex, n_points: int = 201) -> ParaSweep:
    """The whole params / energy / error curve at `n_points` cut positions spread evenly over the pool."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    n = index.n_components
    p = np.unique(np.linspace(0, n, n_points).round().astype(np.int64))
    before = index.n_params_before or 1
    total = index.total_energy or 1.0
    energy = index.cum_energy[p] / total
    tau = np.full(p.shape, index.sigma_max, dtype=np.float64)  # keeping nothing: τ at σ_max
    tau[p > 0] = index.values[p[p > 0] - 1]  # an adapter whose every module has rank 0 has no values at all
    return ParaSweep(
        n_kept=p,
        params_fraction=index.cum_params[p] / before,
        energy_kept=energy,
        rel_error=np.sqrt(np.clip(1.0 - energy, 0.0, 1.0)),
        tau=tau,
        mean_rank=p / max(index.n_modules, 1),
    )
