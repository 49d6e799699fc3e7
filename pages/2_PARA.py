"""PARA: drag one global threshold and see the rank map, savings and error at once; export the result.

The page above the cut is drawn once; the cut and everything that follows it is one fragment
(`para_widgets.live_cut`) that a slider move reruns alone.
"""

from __future__ import annotations

import streamlit as st

from pages.shared import cache
from pages.shared.own_data_widgets import own_data_ui
from pages.shared.para_widgets import live_cut
from pages.shared.widgets import adapter_or_stop, keep_settings, show_adapter_banner

st.set_page_config(page_title="PARA · LoRA Rank Lab", layout="wide")
keep_settings()
st.title(
    "PARA: one global cut",
    help="Every module's effective singular values are pooled and cut at one threshold τ: component *i* of module "
    "*m* is kept iff `s_m·σ_m,i ≥ τ`, so modules whose updates are weak lose more rank. Every slider unit is a "
    "position in the same sorted list.",
)
adapter, spectra = adapter_or_stop()
show_adapter_banner(adapter)
index = cache.cached_para_index(adapter.fingerprint, spectra)
live_cut(adapter, index)
own_data_ui(adapter, index)  # below the cut: a set data file makes the cut's evaluation and search use it
