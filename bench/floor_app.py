"""The floor for bench/app_browser.py: the least a Streamlit slider can do (a fragment with a slider and one metric).

`streamlit run bench/floor_app.py` is timed exactly as the PARA page is, in the same run, so the page's figure
reads as a multiple of what any Streamlit slider costs on the machine at that moment.
"""

import streamlit as st


@st.fragment
def cut() -> None:
    value = st.slider("Energy kept (%)", 1.0, 100.0, 90.0, step=0.1)
    st.metric("LoRA params", f"{round(value * 1000):,}")


cut()
