"""Cut scope: one PARA threshold over every module (the paper's method, the default) or one per component of a
diffusion LoRA (each text encoder, the UNet, the transformer), detected from the module names.

Energy is not output fidelity across sub-models: a text encoder's updates are small next to a UNet's, so one
global threshold can leave it too little rank. Per component, the same cut value (energy kept, parameter
fraction, relative tau, mean rank) is applied to each component's own pooled spectrum; an absolute parameter
budget is split in proportion to each component's size. This is our addition, not PARA's. No streamlit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from analysis.para import CutUnit, ParaIndex, RankAllocation, allocate_ranks, para_index
from analysis.spectra import AdapterSpectra

CutScope = Literal["global", "component"]
CUT_SCOPES: tuple[CutScope, ...] = ("global", "component")
# name prefix -> component: kohya's (lora_te1_ ...) and diffusers' (text_encoder_2. ...), most specific first
COMPONENT_PREFIXES = (
    (re.compile(r"^(lora_te1_|text_encoder\.)"), "text encoder"),
    (re.compile(r"^(lora_te2_|text_encoder_2\.)"), "text encoder 2"),
    (re.compile(r"^(lora_te3_|text_encoder_3\.)"), "text encoder 3"),
    (re.compile(r"^lora_te_"), "text encoder"),
    (re.compile(r"^(lora_unet_|unet\.)"), "UNet"),
    (re.compile(r"^(lora_transformer_|transformer\.)"), "transformer"),
)
WHOLE = "model"  # the one component of an adapter whose names name no sub-model (a PEFT LLM adapter)


def component_of(name: str) -> str:
    """The sub-model a module belongs to, from its name: "text encoder", "text encoder 2", "UNet", ...

    Example: `lora_te2_text_model_encoder_layers_0_mlp_fc1` -> "text encoder 2"; `unet.mid_block...` -> "UNet".
    """
    return next((c for pattern, c in COMPONENT_PREFIXES if pattern.match(name)), WHOLE)


@dataclass(frozen=True)
class ComponentBudget:
    """What one component keeps under a cut."""

    name: str
    n_modules: int
    n_params_before: int
    n_params_after: int
    energy_kept: float
    mean_rank: float

    @property
    def params_fraction(self) -> float:
        return self.n_params_after / self.n_params_before if self.n_params_before else 0.0


@dataclass(frozen=True, eq=False)
class ScopedCut:
    """A cut over the whole adapter (module order of the spectra) and each component's share of it."""

    scope: CutScope
    allocation: RankAllocation
    budgets: tuple[ComponentBudget, ...]


def component_budgets(index: ParaIndex, allocation: RankAllocation) -> tuple[ComponentBudget, ...]:
    """Each component's parameters, energy and mean rank under `allocation` (any scope)."""
    owners = np.array([component_of(n) for n in allocation.names])
    ranks = np.array(allocation.ranks, dtype=np.int64)
    kept = index.cum_module_energy[np.arange(index.n_modules), ranks] if index.n_modules else np.zeros(0)
    budgets = []
    for name in dict.fromkeys(owners):  # in module order
        m = owners == name
        total = float(index.module_energy[m].sum())
        budgets.append(ComponentBudget(
            name=name,
            n_modules=int(m.sum()),
            n_params_before=int(np.dot(index.original_ranks[m], index.cost[m])),
            n_params_after=int(np.dot(ranks[m], index.cost[m])),
            energy_kept=float(kept[m].sum() / total) if total > 0 else 1.0,
            mean_rank=float(ranks[m].mean()),
        ))  # fmt: skip
    return tuple(budgets)


def allocate_scoped(
    spectra: AdapterSpectra, value: float, unit: CutUnit = "energy", *, scope: CutScope = "global", min_rank: int = 0
) -> ScopedCut:
    """PARA's cut over the whole adapter, or the same cut value within each component.

    Args:
        spectra: the adapter's spectra.
        value, unit, min_rank: as in `allocate_ranks`; with scope "component", "tau" is the same absolute
            threshold everywhere (so the same as global), "relative" is relative to each component's sigma_max,
            and "params" is split in proportion to the components' parameter counts.
        scope: "global" (one threshold, PARA) or "component" (one per component).

    Returns:
        The whole adapter's allocation (for `compress_adapter`) and every component's budget.

    Raises:
        ValueError: an unknown scope, or what `allocate_ranks` raises.
    """
    if scope not in CUT_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(CUT_SCOPES)}, got {scope!r}")
    index = para_index(spectra)
    names = [component_of(s.name) for s in spectra.spectra]
    if scope == "global" or len(set(names)) < 2:
        allocation = allocate_ranks(index, value, unit, min_rank=min_rank)
        return ScopedCut(scope, allocation, component_budgets(index, allocation))
    ranks, held = np.zeros(index.n_modules, dtype=np.int64), []
    for name in dict.fromkeys(names):
        members = [i for i, n in enumerate(names) if n == name]
        part = replace(spectra, spectra=tuple(spectra.spectra[i] for i in members))
        part_index = para_index(part)
        share = value * part_index.n_params_before / max(index.n_params_before, 1) if unit == "params" else value
        part_cut = allocate_ranks(part_index, share, unit, min_rank=min_rank)
        ranks[members], held = part_cut.ranks, held + list(part_cut.held)
    allocation = allocation_of(index, ranks, min_rank, tuple(held))
    return ScopedCut(scope, allocation, component_budgets(index, allocation))


def allocation_of(index: ParaIndex, ranks: np.ndarray, min_rank: int, held: tuple[str, ...] = ()) -> RankAllocation:
    """The RankAllocation of given per-module ranks: every unit read off them (tau: the smallest kept sigma)."""
    m = np.arange(index.n_modules)
    kept = index.cum_module_energy[m, ranks]
    total = float(index.module_energy.sum())
    dropped = float(np.clip((index.module_energy - kept).sum() / total, 0.0, 1.0)) if total > 0 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        module_kept = np.where(index.module_energy > 0, kept / index.module_energy, 1.0)
        module_error = np.where(index.module_energy > 0, np.sqrt(np.clip(1 - module_kept, 0.0, 1.0)), 0.0)
    sigmas = [s.sigma[k - 1] for s, k in zip(index.spectra.spectra, ranks, strict=True) if k > 0]
    tau = float(min(sigmas)) if sigmas else float(np.nextafter(index.sigma_max, np.inf))
    return RankAllocation(
        names=index.spectra.names,
        ranks=tuple(int(k) for k in ranks),
        original_ranks=tuple(int(r) for r in index.original_ranks),
        n_kept=int(ranks.sum()),
        tau=tau,
        relative_tau=tau / index.sigma_max if index.sigma_max > 0 else 0.0,
        energy_kept=1.0 - dropped,
        n_params_before=index.n_params_before,
        n_params_after=int(np.dot(ranks, index.cost)),
        mean_rank=float(ranks.mean()) if index.n_modules else 0.0,
        module_energy_kept=tuple(float(x) for x in module_kept),
        module_rel_error=tuple(float(x) for x in module_error),
        rel_error=float(np.sqrt(dropped)),
        min_rank=min_rank,
        held=held,
    )
