"""Spectra page glue: what each per-module number means, and the PARA page's current cut for the τ line."""

from __future__ import annotations

import streamlit as st

from analysis.para import ParaIndex, RankAllocation, allocate_at, cut_position
from pages.shared.state import KEY_CUT_UNIT, KEY_CUT_VALUE, KEY_MIN_RANK
from pages.shared.widgets import CUT_LABELS, _cut_sliders, slider_value

# label -> (table column, scale for the heat map, what it says about a module)
METRICS = {
    "σ_max": (
        "sigma_max",
        1,
        "the largest effective singular value s·σ₁: how strongly the module's strongest direction changes the "
        "layer's output. PARA keeps a module's components while their s·σ is above τ, so a high σ_max keeps rank.",
    ),
    "Energy share (%)": (
        "energy_share",
        100,
        "Σ(s·σᵢ)² of the module over the same sum for every module: its share of the adapter's squared Frobenius "
        "norm ‖ΔW‖²_F. The modules with the largest shares hold most of what the adapter learned.",
    ),
    "Effective rank": (
        "effective_rank",
        1,
        "exp of the entropy of σᵢ/Σσ (Roy & Vetterli): the number of directions the update really uses, between 1 "
        "(one dominant direction) and r (all equal). A low effective rank cuts with little loss.",
    ),
    "Stable rank": (
        "stable_rank",
        1,
        "‖ΔW‖²_F / ‖ΔW‖²₂ = Σσᵢ² / σ₁²: like the effective rank, but weighted towards the large values; 1 when "
        "one direction holds all the energy.",
    ),
}


def show_metric_help() -> None:
    """One line per heat-map metric, in an expander."""
    with st.expander("What the numbers mean"):
        st.markdown("\n".join(f"- **{label}**: {text}" for label, (_, _, text) in METRICS.items()))


def para_page_cut(index: ParaIndex) -> tuple[RankAllocation, str]:
    """The cut the PARA page shows for this adapter (its slider's kept unit and value; its default before a
    visit), and a label that says which.

    Returns:
        (allocation, label), e.g. "PARA cut: τ = 0.0312 (Energy kept (%) at 90.0 on the PARA page)".
    """
    label = st.session_state.get(KEY_CUT_UNIT, next(iter(CUT_LABELS)))
    unit = CUT_LABELS.get(label, "energy")
    low, high, start, _, _ = _cut_sliders(index)[unit]
    kept = st.session_state.get(f"{KEY_CUT_VALUE}-{unit}")
    is_kept = isinstance(kept, int | float) and low <= kept <= high  # as the PARA page checks a kept value
    shown = kept if is_kept else start
    min_rank = st.session_state.get(KEY_MIN_RANK, 0)
    position = cut_position(index, slider_value(unit, shown), unit)
    allocation = allocate_at(index, position, min_rank=1 if min_rank == 1 else 0)
    where = "on the PARA page" if is_kept else "the PARA page's default"
    return allocation, f"PARA τ = {allocation.tau:.4g} ({label} at {shown:g}, {where})"
