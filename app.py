"""LoRA Rank Lab: `streamlit run app.py`.

The entry point only sets up what every page shares and routes to pages/: Home (pick or upload an adapter),
Spectra, PARA (drag the global cut and export), Compare (PARA against adaptive-rank runs) and Train.
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
