"""LoRA Rank Lab: `streamlit run app.py`.

The entry point sets the page layout and routes to pages/ (paths relative to this file): Home (pick or
upload an adapter), Spectra, PARA (drag the global cut and export), Compare (PARA against adaptive-rank runs),
Side by side (any two adapters, module by module) and Train. Each page keeps its settings itself
(`keep_settings` must run in the page's own run). Page icons are emoji: Material icons are fetched from a
font host, which an offline machine cannot reach.
"""

from __future__ import annotations

import streamlit as st

PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon="⚓", default=True),
    st.Page("pages/1_Spectra.py", title="Spectra", icon="♒"),
    st.Page("pages/2_PARA.py", title="PARA", icon="✂️"),
    st.Page("pages/3_Compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/5_Side_by_side.py", title="Side by side", icon="🔀"),
    st.Page("pages/4_Train.py", title="Train", icon="⚙️"),
]

st.set_page_config(page_title="LoRA Rank Lab", layout="wide")
st.navigation(PAGES).run()
