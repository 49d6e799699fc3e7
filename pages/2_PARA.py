"""PARA: drag one global threshold and see the rank map, savings and error at once; export the result."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.adapters import AdapterError
from analysis.export import (
    adapter_file_bytes,
    adapter_zip_bytes,
    check_round_trip,
    compress_adapter,
    export_formats,
    peft_config,
    save_adapter,
    single_file_name,
)
from analysis.figures import rank_heatmap_figure, sweep_figure
from analysis.para import allocate_at, cut_position
from pages.shared import cache
from pages.shared.compare_widgets import show_cut_evaluation
from pages.shared.state import KEY_EXPORT_DIR, KEY_EXPORT_RESULT, KEY_EXPORT_ZIP
from pages.shared.widgets import (
    adapter_or_stop,
    cut_ui,
    keep_settings,
    remember_cut,
    show_adapter_banner,
    show_cut_metrics,
)

st.set_page_config(page_title="PARA · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("PARA: one global cut")
adapter, spectra = adapter_or_stop()
show_adapter_banner(adapter)
st.markdown(
    "Every module's effective singular values are pooled and cut at one threshold τ: component *i* of module "
    "*m* is kept iff `s_m·σ_m,i ≥ τ`. Modules whose updates are weak lose more rank. The slider units are all "
    "positions in the same sorted list."
)

index = cache.cached_para_index(adapter.fingerprint, spectra)
value, unit, min_rank = cut_ui(index)
position = cut_position(index, value, unit)
allocation = allocate_at(index, position, min_rank=min_rank)
remember_cut(allocation)
bytes_per_param = adapter.modules[0].A.element_size() if adapter.modules else 4
show_cut_metrics(allocation, bytes_per_param)

left, right = st.columns([3, 2])
left.plotly_chart(rank_heatmap_figure(allocation), width="stretch")
right.plotly_chart(sweep_figure(cache.cached_sweep(adapter.fingerprint, index), allocation), width="stretch")
if run := cache.cached_run_of_adapter(adapter.source, adapter.fingerprint):  # a bundled sample or training run
    show_cut_evaluation(adapter, run, allocation, position)

changed = pd.DataFrame(
    {
        "module": allocation.names,
        "rank": allocation.ranks,
        "of": allocation.original_ranks,
        "energy kept": allocation.module_energy_kept,
        "relative error": allocation.module_rel_error,
    }
)
changed = changed[changed["rank"] < changed["of"]]
st.subheader(f"Modules whose rank changed ({len(changed)} of {len(allocation.names)})")
st.dataframe(
    changed,
    hide_index=True,
    width="stretch",
    column_config={"energy kept": st.column_config.NumberColumn(format="percent")},
)

st.subheader("Export")
FORMAT_LABELS = {"peft": "PEFT folder", "kohya": "the file's own layout (kohya / diffusers)"}
export_format = st.radio("Format", export_formats(adapter), format_func=FORMAT_LABELS.get, horizontal=True)
download, save = st.columns(2)
# Built on request for the cut this run shows, kept for it, and offered as bytes: the same bytes get the same
# file id on every rerun. (A deferred download gets a new id each run, and a run cut short by the slider's next
# one can drop the id the browser still shows, so a click right after dragging failed.)
download_key = (adapter.fingerprint, allocation.ranks, export_format)
if (built := st.session_state.get(KEY_EXPORT_ZIP)) is not None and built[0] != download_key:
    del st.session_state[KEY_EXPORT_ZIP]  # another cut: free the old download
    built = None
single = export_format == "kohya"  # one .safetensors, the way kohya / diffusers users load a LoRA
file_name = single_file_name(adapter.source) if single else "para-adapter.zip"
slot = download.empty()  # the build button, then the download in its place
if built is None and slot.button(f"Build the compressed adapter ({Path(file_name).suffix})", type="primary"):
    try:
        with st.spinner("Truncating every module..."):
            compressed = compress_adapter(adapter, allocation, format=export_format)
            built = (download_key, adapter_file_bytes(compressed) if single else adapter_zip_bytes(compressed))
        st.session_state[KEY_EXPORT_ZIP] = built
    except ValueError as err:
        st.error(str(err))
if built is not None:
    slot.download_button(
        f"Download {file_name} ({len(built[1]) / 1e6:.2f} MB)",
        data=built[1],
        file_name=file_name,
        mime="application/octet-stream" if single else "application/zip",
        on_click="ignore",
        type="primary",
    )
target = save.text_input(
    "Or save to a folder on the server",
    key=KEY_EXPORT_DIR,
    placeholder=f"/path/to/{file_name}" if single else "/path/to/new/folder",
    help=f"A relative path starts from the folder the app runs in, `{Path.cwd()}`."
    + (" A path ending in `.safetensors` is saved as that one file." if single else ""),
)
overwrite = save.checkbox(
    "Replace an earlier export", help="Replaces only the file named, or a folder that holds an earlier export alone."
)
if save.button("Save", disabled=not target):
    try:
        folder = save_adapter(compress_adapter(adapter, allocation, format=export_format), target, overwrite=overwrite)
        check = check_round_trip(adapter, allocation, folder)
        cut = (adapter.fingerprint, allocation.ranks)  # the result is shown for this cut only
        st.session_state[KEY_EXPORT_RESULT] = (cut, str(folder), check.max_rel_error, check.tolerance, check.is_ok)
    except (ValueError, FileExistsError, OSError, AdapterError) as err:
        st.session_state.pop(KEY_EXPORT_RESULT, None)
        st.error(str(err))
result = st.session_state.get(KEY_EXPORT_RESULT)
if result and result[0] == (adapter.fingerprint, allocation.ranks):
    _, folder, max_error, tolerance, is_ok = result
    if is_ok:
        st.success(
            f"Saved to `{folder}`. Round-trip check passed (max relative error {max_error:.2e}, "
            f"below {tolerance:.0e})."
        )
    else:
        st.error(
            f"Saved to `{folder}`, but the round-trip check failed (max relative error {max_error:.2e}, "
            f"above {tolerance:.0e})."
        )
if export_format == "peft":
    config = peft_config(adapter, allocation)
    with st.expander("rank_pattern of this export (alpha_pattern is the same: scale 1)"):
        st.code(json.dumps(config.get("rank_pattern", {}), indent=1), language="json")
