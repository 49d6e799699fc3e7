"""Two adapters side by side: an adapter cut by PARA as an adapter of its own, and per-module differences.

`cut_adapter` is the in-memory form of what the PARA export writes (the best rank-k_m factors, scale folded
in, modules cut to rank 0 left out), so "before and after a cut" compares like any two adapters.
`module_rows` is one row per module of either adapter for the page's table. No streamlit here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

from analysis.adapters import LoraAdapter
from analysis.para import RankAllocation
from analysis.spectra import AdapterSpectra, Spectrum, truncated_factors
from analysis.subspaces import ModuleSimilarity


def cut_adapter(adapter: LoraAdapter, allocation: RankAllocation) -> LoraAdapter:
    """`adapter` with every module truncated to its rank in `allocation` (rank 0: left out).

    Args:
        adapter: the source adapter.
        allocation: a PARA cut of it (`allocation.names` are its modules).

    Returns:
        A LoraAdapter whose modules hold B_k, A_k with scaling 1 (so s·B·A's best rank-k approximation is
        B_k A_k), in the source's factor dtype; its fingerprint names the source and the ranks.

    Raises:
        ValueError: when the allocation belongs to another adapter.
    """
    ranks = dict(zip(allocation.names, allocation.ranks, strict=True))
    if set(ranks) != {m.name for m in adapter.modules}:
        raise ValueError("allocation does not belong to this adapter: its module names differ; cut the adapter shown")
    modules = []
    for m in adapter.modules:
        if (k := ranks[m.name]) == 0:
            continue
        B_k, A_k = truncated_factors(m, k, dtype=m.A.dtype)  # as the export: the source's dtype
        modules.append(dataclasses.replace(m, A=A_k, B=B_k, scaling=1.0, alpha=float(k)))  # (k, in), (out, k)
    digest = hashlib.sha256(f"{adapter.fingerprint}:{list(allocation.ranks)}".encode()).hexdigest()
    kept = f"{allocation.n_params_after:,} of {allocation.n_params_before:,} LoRA params"
    return dataclasses.replace(
        adapter,
        source=f"{adapter.source} cut by PARA (τ = {allocation.tau:.4g}, {kept})",
        fingerprint=digest,
        modules=tuple(modules),
        file_size=0,
    )


def module_rows(
    a: AdapterSpectra, b: AdapterSpectra, similarity: Sequence[ModuleSimilarity]
) -> list[dict[str, object]]:
    """One row per module of either adapter: ranks, σ_max and energy share in each, and the subspace angles.

    Missing values (a module in one adapter only, nothing to compare) are None.
    """
    total_a, total_b = a.total_energy or 1.0, b.total_energy or 1.0
    spectra_a = {s.name: s for s in a.spectra}
    spectra_b = {s.name: s for s in b.spectra}
    angles: Mapping[str, ModuleSimilarity] = {s.name: s for s in similarity}
    names = list(dict.fromkeys([*spectra_a, *spectra_b]))

    def value(s: Spectrum | None, attr: str, total: float = 1.0) -> float | None:
        return None if s is None else getattr(s, attr) / total

    rows = []
    for name in names:
        sa, sb, sim = spectra_a.get(name), spectra_b.get(name), angles.get(name)
        share_a, share_b = value(sa, "energy", total_a), value(sb, "energy", total_b)
        rows.append(
            {
                "module": name, "rank A": None if sa is None else sa.r, "rank B": None if sb is None else sb.r,
                "σ_max A": value(sa, "sigma_max"), "σ_max B": value(sb, "sigma_max"),
                "energy share A": share_a, "energy share B": share_b,
                "Δ energy share": None if share_a is None or share_b is None else share_b - share_a,
                "k": None if sim is None else sim.k,
                "mean angle out (°)": _finite(sim.out_mean) if sim else None,
                "mean angle in (°)": _finite(sim.in_mean) if sim else None,
                "overlap": _finite(sim.overlap) if sim else None,
            }
        )  # fmt: skip
    return rows


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x
