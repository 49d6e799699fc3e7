"""Home: pick or upload an adapter and see what it holds (the default page of `streamlit run app.py`)."""

from __future__ import annotations

import streamlit as st

from pages.shared import cache
from pages.shared.sources import SOURCES, clear_messages, loaded_note
from pages.shared.state import KEY_LOAD_ERROR, KEY_SOURCE
from pages.shared.widgets import code, current_adapter, keep_settings, plain

st.set_page_config(page_title="LoRA Rank Lab", layout="wide")
keep_settings()
st.title("LoRA Rank Lab")
st.markdown(
    "Load a trained LoRA adapter, see the exact singular spectrum of every module's update `s·B·A`, and "
    "compress it with **PARA**: one global threshold over all singular values gives each module its own rank."
)

current_adapter()  # a first visit loads the default sample, so the pickers below show it as chosen
source = st.radio("Adapter source", list(SOURCES), horizontal=True, key=KEY_SOURCE, on_change=clear_messages)
SOURCES[source]()

if error := st.session_state.get(KEY_LOAD_ERROR):
    st.error(plain(error))
elif note := loaded_note():
    st.success(note)

adapter = current_adapter()
if adapter is None:
    st.stop()

spectra = cache.cached_spectra(adapter.fingerprint, adapter)
st.subheader("Loaded adapter")
ranks = sorted({m.factor_rank for m in adapter.modules})  # a dense update: its factors' rank
scalings = sorted({round(m.scaling, 6) for m in adapter.modules})
cols = st.columns(4)
cols[0].metric("Format", adapter.format.upper())
cols[1].metric("Modules", len(adapter.modules))
cols[2].metric("LoRA params", f"{adapter.n_params:,}")
cols[3].metric("File size", f"{adapter.file_size / 1e6:.2f} MB")
st.markdown(
    f"- **Source**: {code(adapter.source)}\n"
    f"- **Base model**: {plain(adapter.base_model) if adapter.base_model else 'not recorded'}\n"
    f"- **Ranks**: {', '.join(map(str, ranks))}\n"
    f"- **Scaling s** (alpha / r): {', '.join(f'{s:g}' for s in scalings[:6])}{' …' if len(scalings) > 6 else ''}\n"
    f"- **Spectra**: {len(spectra.spectra)} modules in {spectra.seconds * 1e3:.1f} ms on `{spectra.device}` "
    f"({spectra.dtype}{f', {spectra.n_fallback} modules recomputed by QR' if spectra.n_fallback else ''})\n"
    f"- **Fingerprint**: `{adapter.fingerprint[:16]}`"
)
for warning in adapter.warnings:
    st.warning(plain(warning))
st.info("Next: **Spectra** to explore every module, **PARA** to drag the global cut and export.")
