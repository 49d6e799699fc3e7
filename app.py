"""LoRA Rank Lab: `streamlit run app.py`.

The entry point sets the page layout and routes to pages/ (paths relative to this file): Home (pick or
upload an adapter), Spectra, PARA (drag the global cut and export), Compare (PARA against adaptive-rank runs)
and Train. Each page keeps its settings itself (`keep_settings` must run in the page's own run).
"""

from __future__ import annotations

import streamlit as st

PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Spectra.py", title="Spectra", icon=":material/bar_chart:"),
    st.Page("pages/2_PARA.py", title="PARA", icon=":material/compress:"),
    st.Page("pages/3_Compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/4_Train.py", title="Train", icon=":material/model_training:"),
]

st.set_page_config(page_title="LoRA Rank Lab", layout="wide")
st.navigation(PAGES).run()
