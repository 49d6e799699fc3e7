"""The PARA page's cut scope: PARA's one threshold over every module, or the same cut within each component
(text encoders, UNet, transformer) of a diffusion LoRA; each component's budget shown. Thin: the library's
`analysis.scope` does the work."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.para import CutUnit, ParaIndex, RankAllocation
from analysis.scope import allocate_scoped, component_budgets, component_of
from pages.shared.state import KEY_CUT_SCOPE

SCOPE_LABELS = {
    "One threshold over everything (PARA)": "global",
    "The same cut within each component": "component",
}


def scoped_cut_ui(index: ParaIndex, value: float, unit: CutUnit, allocation: RankAllocation) -> RankAllocation:
    """For an adapter of several components, the scope picker and each component's budget; returns the cut the
    export writes (`allocation` itself under the global scope, and for an adapter of one component)."""
    if len({component_of(name) for name in index.spectra.names}) < 2:
        return allocation
    st.subheader("Cut scope")
    label = st.selectbox(
        "Cut scope",
        list(SCOPE_LABELS),
        key=KEY_CUT_SCOPE,
        help="One threshold keeps the largest components wherever they are, so a text encoder with small updates "
        "can keep little rank. Per component, the cut's value is applied within each text encoder, the UNet and "
        "the transformer on its own (not PARA's method; the export below writes this cut).",
    )
    if SCOPE_LABELS[label] == "component":
        try:
            allocation = allocate_scoped(
                index.spectra, value, unit, scope="component", min_rank=allocation.min_rank
            ).allocation
        except ValueError as err:
            st.error(str(err))
    budgets = component_budgets(index, allocation)
    st.dataframe(
        pd.DataFrame(
            {
                "component": [b.name for b in budgets],
                "modules": [b.n_modules for b in budgets],
                "LoRA params kept": [f"{b.n_params_after:,} of {b.n_params_before:,}" for b in budgets],
                "params kept": [b.params_fraction for b in budgets],
                "energy kept": [b.energy_kept for b in budgets],
                "mean rank": [round(b.mean_rank, 2) for b in budgets],
            }
        ),
        hide_index=True,
        column_config={
            "params kept": st.column_config.NumberColumn(format="percent"),
            "energy kept": st.column_config.NumberColumn(format="percent"),
        },
    )
    return allocation
