"""Spectra: per-module singular value curves, a layer x module-type heat map, and the module table."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.figures import module_heatmap_figure, spectra_figure, spectra_rows
from pages.shared.state import KEY_SPECTRA_LAYERS, KEY_SPECTRA_METRIC, KEY_SPECTRA_TYPES
from pages.shared.widgets import adapter_or_stop, initial, keep_settings, show_adapter_banner, subset_of, within

st.set_page_config(page_title="Spectra · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("Spectra")
adapter, spectra = adapter_or_stop()
show_adapter_banner(adapter)

table = pd.DataFrame(spectra_rows(spectra))
types = list(dict.fromkeys(table["type"]))
layers = sorted(int(x) for x in table["layer"].dropna().unique())

left, right = st.columns(2)
chosen_types = left.multiselect("Module types", types, key=initial(KEY_SPECTRA_TYPES, types, subset_of(types)))
bounds = (layers[0], layers[-1]) if layers else (0, 0)
layer_range = (
    right.slider("Layers", *bounds, key=initial(KEY_SPECTRA_LAYERS, bounds, within(*bounds)))
    if len(layers) > 1
    else (layers[0], layers[0])
    if layers
    else None
)
shown = table[table["type"].isin(chosen_types)]
if layer_range is not None:
    in_range = shown["layer"].between(*layer_range) | shown["layer"].isna()
    shown = shown[in_range]
if shown.empty:
    st.info("No module matches the filters: pick a module type or widen the layer range.")
else:
    st.plotly_chart(spectra_figure(spectra, list(shown["module"])), width="stretch")

METRICS = {  # label -> (column, scale for the heat map): the energy share in percent, as in the table
    "σ_max": ("sigma_max", 1),
    "Energy share (%)": ("energy_share", 100),
    "Effective rank": ("effective_rank", 1),
    "Stable rank": ("stable_rank", 1),
}
metric = st.selectbox("Heat map metric (the modules shown above)", list(METRICS), key=KEY_SPECTRA_METRIC)
column, scale = METRICS[metric]
values = dict(zip(shown["module"], scale * shown[column], strict=True))
if values:
    st.plotly_chart(module_heatmap_figure(values, f"{metric} per module", metric), width="stretch")

st.subheader("Modules")
st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    column_config={"energy_share": st.column_config.NumberColumn("energy share", format="percent")},
)
st.download_button(
    "Download table (CSV)", shown.to_csv(index=False), file_name="spectra.csv", mime="text/csv", on_click="ignore"
)
