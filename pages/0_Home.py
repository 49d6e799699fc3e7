"""Home: pick or upload an adapter and see what it holds (the default page of `streamlit run app.py`)."""

from __future__ import annotations

import streamlit as st

from pages.shared import cache
from pages.shared.state import KEY_FOLDER, KEY_LOAD_ERROR, KEY_SAMPLE, KEY_SOURCE, KEY_UPLOAD, KEY_UPLOAD_DIR
from pages.shared.widgets import (
    UPLOAD_LIMIT_MB,
    bundled_samples,
    current_adapter,
    is_sample,
    keep_settings,
    load_path,
    set_adapter,
)

st.set_page_config(page_title="LoRA Rank Lab", layout="wide")
keep_settings()
st.title("LoRA Rank Lab")
st.markdown(
    "Load a trained LoRA adapter, see the exact singular spectrum of every module's update `s·B·A`, and "
    "compress it with **PARA**: one global threshold over all singular values gives each module its own rank."
)

adapter = current_adapter()
samples = bundled_samples()

source = st.radio(
    "Adapter source",
    ["Bundled sample", "Folder on the server", "Upload"],
    horizontal=True,
    key=KEY_SOURCE,
    on_change=lambda: st.session_state.pop(KEY_LOAD_ERROR, None),  # an error belongs to the source it came from
)
if source == "Bundled sample":
    if samples:
        names = list(samples)
        # The loaded sample, or none after a folder or an upload: picking any sample then loads it.
        st.session_state[KEY_SAMPLE] = next((n for n in names if adapter and is_sample(adapter, samples[n])), None)
        st.selectbox(
            "Sample",
            names,
            index=None,
            placeholder="Pick a sample to load",
            key=KEY_SAMPLE,
            on_change=lambda: set_adapter(lambda: load_path(samples[st.session_state[KEY_SAMPLE]])),
        )
    else:
        st.warning("No bundled samples found in sample_adapters/.")
elif source == "Folder on the server":
    folder = st.text_input("Path to a PEFT folder, a kohya .safetensors or a .zip", key=KEY_FOLDER)
    if st.button("Load", type="primary", disabled=not folder):
        set_adapter(lambda: load_path(folder))
else:
    single, folder_upload = st.columns(2)
    upload = single.file_uploader(
        f"A zip of a PEFT adapter folder, or a kohya / diffusers .safetensors (up to {UPLOAD_LIMIT_MB} MB)",
        type=["zip", "safetensors"],
        key=KEY_UPLOAD,
    )
    uploads = folder_upload.file_uploader(
        "Or a whole adapter folder (adapter_config.json + adapter_model.safetensors)",
        accept_multiple_files="directory",
        key=KEY_UPLOAD_DIR,
    )
    files = ((upload.name, upload.getvalue()),) if upload is not None else ()
    if uploads:
        files = tuple((f.name, f.getvalue()) for f in uploads)
    if files:
        set_adapter(lambda: cache.cached_upload(cache.upload_digest(files), files))

if error := st.session_state.get(KEY_LOAD_ERROR):
    st.error(error)

adapter = current_adapter()
if adapter is None:
    st.stop()

spectra = cache.cached_spectra(adapter.fingerprint, adapter)
st.subheader("Loaded adapter")
ranks = sorted({m.r for m in adapter.modules})
scalings = sorted({round(m.scaling, 6) for m in adapter.modules})
cols = st.columns(4)
cols[0].metric("Format", adapter.format.upper())
cols[1].metric("Modules", len(adapter.modules))
cols[2].metric("LoRA params", f"{adapter.n_params:,}")
cols[3].metric("File size", f"{adapter.file_size / 1e6:.2f} MB")
st.markdown(
    f"- **Source**: `{adapter.source}`\n"
    f"- **Base model**: {adapter.base_model or 'not recorded'}\n"
    f"- **Ranks**: {', '.join(map(str, ranks))}\n"
    f"- **Scaling s** (alpha / r): {', '.join(f'{s:g}' for s in scalings[:6])}{' …' if len(scalings) > 6 else ''}\n"
    f"- **Spectra**: {len(spectra.spectra)} modules in {spectra.seconds * 1e3:.1f} ms on `{spectra.device}` "
    f"({spectra.dtype}{f', {spectra.n_fallback} modules recomputed by QR' if spectra.n_fallback else ''})\n"
    f"- **Fingerprint**: `{adapter.fingerprint[:16]}`"
)
for warning in adapter.warnings:
    st.warning(warning)
st.info("Next: **Spectra** to explore every module, **PARA** to drag the global cut and export.")
