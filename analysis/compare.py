"""Compare rank allocations of different methods at matched parameter budgets (pure; no streamlit).

An allocation here is a mapping module name -> rank (from PARA, or a training run's allocation.json).
Budget matching picks the PARA cut whose LoRA parameter count is nearest to another method's; every
module's rank costs d_in + d_out parameters, read off the fixed-rank adapter's PARA index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analysis.naming import split_module_name
from analysis.para import ParaIndex, RankAllocation, allocate_at


@dataclass(frozen=True)
class AllocationComparison:
    """Two allocations over the same modules, aligned by name."""

    names: tuple[str, ...]
    ranks_a: tuple[int, ...]
    ranks_b: tuple[int, ...]
    spearman: float
    """Spearman rank correlation of per-module ranks (nan if either is constant)."""
    l1_distance: float
    """sum |a - b| / sum (a + b), in [0, 1]: 0 identical, 1 disjoint support."""
    by_type: Mapping[str, tuple[int, int]]
    """Module type -> (total rank a, total rank b)."""
    by_layer: Mapping[int | None, tuple[int, int]]
    """Layer index -> (total rank a, total rank b)."""


def _nearest_cut(index: ParaIndex, n_params: int, min_rank: int) -> tuple[int, RankAllocation]:
    """(position, allocation) of the PARA cut whose parameter count is nearest `n_params` (ties: smaller)."""
    if n_params < 0:
        raise ValueError(f"n_params must be >= 0, got {n_params}")
    p = int(np.searchsorted(index.cum_params, n_params, side="right")) - 1  # largest cut within the budget
    cuts = {q: allocate_at(index, q, min_rank=min_rank) for q in {p, min(p + 1, index.n_components)}}
    return min(cuts.items(), key=lambda qa: (abs(qa[1].n_params_after - n_params), qa[1].n_params_after))


def match_budget(index: ParaIndex, n_params: int, *, min_rank: int = 0) -> RankAllocation:
    """The PARA cut whose parameter count is nearest to `n_params` (ties: the smaller count).

    Args:
        index: the fixed-rank adapter's PARA index.
        n_params: the other method's LoRA parameter count.
        min_rank: as in `allocate_ranks`.

    Returns:
        The allocation; |n_params_after - n_params| <= one component's cost when min_rank = 0.

    Example: components costing 10 and 20 give achievable counts 0, 10, 30; a target of 18 picks 10.
    """
    return _nearest_cut(index, n_params, min_rank)[1]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x with ties given their average rank (for Spearman)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation with average ranks for ties; nan when either side is constant.

    Example: spearman([1, 2, 3], [10, 20, 30]) = 1.0; spearman([1, 2, 3], [3, 2, 1]) = -1.0.
    """
    ra, rb = _average_ranks(np.asarray(a, float)), _average_ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_allocations(a: Mapping[str, int], b: Mapping[str, int]) -> AllocationComparison:
    """Align two allocations by module name (a module missing on one side has rank 0 there).

    Example: a = {x: 4, y: 0}, b = {x: 2, y: 2}: L1 = (|4 - 2| + |0 - 2|) / 8 = 0.5.
    """
    names = tuple(dict.fromkeys([*a, *b]))
    ra = np.array([int(a.get(n, 0)) for n in names])
    rb = np.array([int(b.get(n, 0)) for n in names])
    total = ra.sum() + rb.sum()
    by_type: dict[str, list[int]] = {}
    by_layer: dict[int | None, list[int]] = {}
    for name, x, y in zip(names, ra, rb, strict=True):
        layer, kind = split_module_name(name)
        for table, key in ((by_type, kind), (by_layer, layer)):
            sums = table.setdefault(key, [0, 0])
            sums[0] += int(x)
            sums[1] += int(y)
    return AllocationComparison(
        names=names,
        ranks_a=tuple(int(x) for x in ra),
        ranks_b=tuple(int(x) for x in rb),
        spearman=spearman(ra, rb),
        l1_distance=float(np.abs(ra - rb).sum() / total) if total else 0.0,
        by_type={k: (v[0], v[1]) for k, v in by_type.items()},
        by_layer={k: (v[0], v[1]) for k, v in by_layer.items()},
    )


@dataclass(frozen=True)
class MatchedAllocation:
    """A run's allocation beside the PARA cut of the fixed-rank adapter at the same LoRA parameter count."""

    name: str
    """The run (or any label of the other allocation)."""
    ranks: Mapping[str, int]
    """The run's rank per module (0 = dropped)."""
    n_params: int
    """The run's LoRA parameter count: sum over modules of rank * (d_in + d_out)."""
    position: int
    """PARA's cut position (pooled components kept before min_rank)."""
    para: RankAllocation
    """PARA's cut whose parameter count is nearest `n_params`."""
    comparison: AllocationComparison
    """a = PARA's ranks, b = the run's."""

    @property
    def params_gap(self) -> int:
        """PARA's parameter count minus the run's (|gap| <= the largest module's cost of one rank)."""
        return self.para.n_params_after - self.n_params


def allocation_params(index: ParaIndex, ranks: Mapping[str, int]) -> int:
    """LoRA parameters of `ranks` on the modules of `index` (each rank costs d_in + d_out).

    Raises:
        ValueError: if `ranks` names a module the fixed-rank adapter does not have.

    Example: a module with d_in = d_out = 384 at rank 8 costs 8 * 768 = 6,144 parameters.
    """
    cost = dict(zip(index.spectra.names, index.cost.tolist(), strict=True))
    unknown = sorted(set(ranks) - set(cost))
    if unknown:
        raise ValueError(
            f"allocation has modules the fixed-rank adapter lacks ({', '.join(unknown[:3])}); "
            "compare runs of the same base model and target modules"
        )
    return int(sum(int(r) * cost[name] for name, r in ranks.items()))


def match_allocation(
    index: ParaIndex, name: str, ranks: Mapping[str, int], *, min_rank: int = 0, n_params: int | None = None
) -> MatchedAllocation:
    """PARA on the fixed-rank adapter at the parameter count of `ranks`, aligned with it module by module.

    Args:
        index: the fixed-rank adapter's PARA index.
        name: a label for the other allocation (its run name).
        ranks: the other allocation, module name -> rank.
        min_rank: as in `allocate_ranks`.
        n_params: the run's trained parameter count where its ranks do not give it (LR-LoRA: r (in + out) + 2K
            per module, its rank being a stable rank of a dense update); default: the LoRA parameters of `ranks`.

    Returns:
        The matched pair with Spearman, normalised L1 and per-type / per-depth totals (a = PARA).
    """
    counted = allocation_params(index, ranks)  # also checks the modules
    n_params = counted if n_params is None else n_params
    position, para = _nearest_cut(index, n_params, min_rank)
    return MatchedAllocation(name, dict(ranks), n_params, position, para, compare_allocations(para.rank_map, ranks))
