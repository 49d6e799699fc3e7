"""Spectra: which modules matter. Singular value curves per module with the PARA cut's τ, a module type x
layer heat map of one number per module, and the module table."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.figures import module_heatmap_figure, spectra_figure, spectra_rows
from analysis.naming import forward_order, short_type_labels
from pages.shared import cache
from pages.shared.spectra_widgets import METRICS, para_page_cut, show_metric_help
from pages.shared.state import (
    KEY_SPECTRA_COLOR,
    KEY_SPECTRA_HIGHLIGHT,
    KEY_SPECTRA_LAYERS,
    KEY_SPECTRA_METRIC,
    KEY_SPECTRA_TYPES,
)
from pages.shared.widgets import adapter_or_stop, initial, keep_settings, show_adapter_banner, subset_of, within

st.set_page_config(page_title="Spectra · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("Spectra")
adapter, spectra = adapter_or_stop()
show_adapter_banner(adapter)
st.markdown(
    "Each curve is one module's effective singular values `s·σᵢ`, largest first. PARA keeps every component "
    "above the dashed line τ, so the modules whose curves stay above it keep the most rank."
)
show_metric_help()

table = pd.DataFrame(spectra_rows(spectra))
types = forward_order(list(dict.fromkeys(table["type"])))
layers = sorted(int(x) for x in table["layer"].dropna().unique())

left, right = st.columns(2)
chosen_types = left.multiselect(
    "Module types",
    types,
    format_func=short_type_labels(types).get,
    key=initial(KEY_SPECTRA_TYPES, types, subset_of(types)),
)
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
    st.stop()

names = list(shown["module"])
color_col, highlight_col = st.columns([1, 3])
color_by = color_col.radio(
    "Color lines by", ["type", "layer"], format_func={"type": "module type", "layer": "layer"}.get,
    horizontal=True, key=KEY_SPECTRA_COLOR,
)  # fmt: skip
highlight = highlight_col.multiselect(
    "Highlight modules", names, key=initial(KEY_SPECTRA_HIGHLIGHT, [], subset_of(names)),
    placeholder="Pick modules to draw on top (type to search)",
)  # fmt: skip
cut, cut_label = para_page_cut(cache.cached_para_index(adapter.fingerprint, spectra))
st.plotly_chart(
    spectra_figure(spectra, names, color_by=color_by, highlight=highlight, tau=cut.tau),
    width="stretch",
)
st.caption(f"{cut_label}: {cut.n_params_after:,} of {cut.n_params_before:,} LoRA parameters kept.")

metric = st.selectbox("Heat map metric (the modules shown above)", list(METRICS), key=KEY_SPECTRA_METRIC)
column, scale, meaning = METRICS[metric]
values = dict(zip(shown["module"], scale * shown[column], strict=True))
st.plotly_chart(module_heatmap_figure(values, f"{metric} per module", metric), width="stretch")
st.caption(f"**{metric}**: {meaning}")

st.subheader("Modules")
rows = shown.assign(type=shown["type"].map(short_type_labels(types)), shape=[f"{o:,} × {i:,}" for o, i in
                    zip(shown["out"], shown["in"], strict=True)]).drop(columns=["in", "out"])  # fmt: skip
number = st.column_config.NumberColumn
st.dataframe(
    rows[["module", "layer", "type", "r", "shape", *(c for c, _, _ in METRICS.values())]],
    hide_index=True,
    width="stretch",
    column_config={  # widths that fit the page at 1280 px: no column hides behind a scroll bar
        "module": st.column_config.TextColumn("module", width=250, pinned=True),
        "layer": number("layer", format="%d", width=50),
        "type": st.column_config.TextColumn("type", width=95),
        "r": number("r", width=40),
        "shape": st.column_config.TextColumn("out × in", width=95, help="the update's shape"),
        "sigma_max": number("σ_max", format="%.4g", width=70),
        "energy_share": number("energy", format="percent", width=70, help="energy share"),
        "effective_rank": number("eff. rank", format="%.2f", width=70, help="effective rank"),
        "stable_rank": number("stable rank", format="%.2f", width=80),
    },
)
st.download_button(
    "Download table (CSV)", shown.to_csv(index=False), file_name="spectra.csv", mime="text/csv", on_click="ignore"
)
