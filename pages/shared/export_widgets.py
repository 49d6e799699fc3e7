"""The PARA page's export: a download built on request for the current cut, or a folder on the server."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from analysis.adapters import AdapterError, LoraAdapter
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
from analysis.para import RankAllocation
from pages.shared.state import KEY_EXPORT_DIR, KEY_EXPORT_RESULT, KEY_EXPORT_ZIP

FORMAT_LABELS = {
    "peft": "PEFT folder",
    "kohya": "one .safetensors, kohya's layout",
    "diffusers": "one .safetensors, diffusers' layout",
}


def export_ui(adapter: LoraAdapter, allocation: RankAllocation) -> None:
    """Format, build + download, save to a folder with the round-trip check, and the rank_pattern."""
    st.subheader("Export")
    if allocation.held:  # what the cut alone would drop, kept: peft holds no DoRA module at rank 0
        st.caption(f"{len(allocation.held)} DoRA module(s) the cut drops are kept at rank 1, with their magnitudes.")
    export_format = st.radio("Format", export_formats(adapter), format_func=FORMAT_LABELS.get, horizontal=True)
    download, save = st.columns(2)
    # Built on request for the cut this run shows, kept for it, and offered as bytes: the same bytes get the same
    # file id on every rerun. (A deferred download gets a new id each run, and a run cut short by the slider's next
    # one can drop the id the browser still shows, so a click right after dragging failed.)
    download_key = (adapter.fingerprint, allocation.ranks, export_format)
    if (built := st.session_state.get(KEY_EXPORT_ZIP)) is not None and built[0] != download_key:
        del st.session_state[KEY_EXPORT_ZIP]  # another cut: free the old download
        built = None
    single = export_format != "peft"  # one .safetensors, the way kohya / diffusers users load a LoRA
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
        "Replace an earlier export",
        help="Replaces only the file named, or a folder that holds an earlier export alone.",
    )
    if save.button("Save", disabled=not target):
        try:
            folder = save_adapter(
                compress_adapter(adapter, allocation, format=export_format), target, overwrite=overwrite
            )
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
    # Drawn on request only: a slider move would otherwise send every module's rank again.
    if export_format == "peft" and st.toggle(
        "Show the rank_pattern of this export (alpha_pattern is the same: scale 1)"
    ):
        config = peft_config(adapter, allocation)
        st.code(json.dumps(config.get("rank_pattern", {}), indent=1), language="json")
