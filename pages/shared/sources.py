"""Home's adapter sources: one `*_source_ui` per source draws its widgets and loads what the user picks.

`SOURCES` maps each label of Home's one source radio to its function, so a new source is a function and a
row. A load goes through `widgets.set_adapter` (errors kept in KEY_LOAD_ERROR); `loaded_note` says what a
folder load found and where.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from analysis.hub import HubError, hub_cache_dir, is_offline, resolve_hub
from analysis.locate import SEARCH_DEPTH, Search, describe, find_adapters
from pages.shared import cache
from pages.shared.state import (
    KEY_ADAPTER,
    KEY_FOLDER,
    KEY_FOLDER_PICK,
    KEY_FOLDER_SEARCH,
    KEY_HUB_DOWNLOAD,
    KEY_HUB_ID,
    KEY_LOAD_ERROR,
    KEY_LOAD_NOTE,
    KEY_RUN_CHOICE,
    KEY_SAMPLE,
    KEY_UPLOAD,
    KEY_UPLOAD_DIR,
    KEY_UPLOAD_KIND,
)
from pages.shared.widgets import (
    UPLOAD_LIMIT_MB,
    adapters_in,
    bundled_samples,
    current_adapter,
    is_loaded_from,
    load_path,
    runs_dir,
    set_adapter,
)


def _load(path: Path, note: str | None = None) -> None:
    """Load `path` as the session's adapter; `note` is shown while that adapter stays loaded."""
    if set_adapter(lambda: load_path(path)) and note:
        st.session_state[KEY_LOAD_NOTE] = (st.session_state[KEY_ADAPTER].fingerprint, note)


def loaded_note() -> str | None:
    """What the last folder load found and where, while its adapter is still the session's."""
    note = st.session_state.get(KEY_LOAD_NOTE)
    adapter = current_adapter()
    return note[1] if note and adapter is not None and note[0] == adapter.fingerprint else None


def clear_messages() -> None:
    """A new source: the last error, note and folder search belong to the old one."""
    for key in (KEY_LOAD_ERROR, KEY_LOAD_NOTE, KEY_FOLDER_SEARCH):
        st.session_state.pop(key, None)


def _named_pick_ui(label: str, options: dict[str, Path], key: str, placeholder: str) -> None:
    """A select of named adapters that loads the one picked; shows the loaded one (or none) as chosen."""
    adapter = current_adapter()
    names = list(options)
    st.session_state[key] = next((n for n in names if adapter and is_loaded_from(adapter, options[n])), None)

    def load_pick() -> None:
        if (name := st.session_state[key]) is not None:  # None: the select was cleared; keep the adapter
            _load(options[name])

    st.selectbox(label, names, index=None, placeholder=placeholder, key=key, on_change=load_pick)


def sample_source_ui() -> None:
    samples = bundled_samples()
    if not samples:
        st.warning("No bundled samples found in sample_adapters/.")
        return
    _named_pick_ui("Sample", samples, KEY_SAMPLE, "Pick a sample to load")


def runs_source_ui() -> None:
    folder = runs_dir()
    runs = adapters_in(folder)
    if not runs:
        st.info(f"No finished training runs in `{folder}` yet. Start one on the Train page.")
        return
    _named_pick_ui(f"Run in `{folder}`", runs, KEY_RUN_CHOICE, "Pick a run to load its adapter")


def folder_source_ui() -> None:
    """A path and one Load (the button or Enter); a folder is searched and what it holds is named."""
    with st.form("folder_load", border=False):
        text = st.text_input(
            "Path to a PEFT folder, a kohya .safetensors or a .zip",
            key=KEY_FOLDER,
            help=f"`~` is your home folder. A folder is searched {SEARCH_DEPTH} levels down, hidden folders "
            "(`.cache`, `.git`) left out; where it holds several adapters you pick one.",
        )
        submitted = st.form_submit_button("Load", type="primary")
    if submitted:
        st.session_state.pop(KEY_FOLDER_SEARCH, None)
        _load_folder(text.strip())
    if (search := st.session_state.get(KEY_FOLDER_SEARCH)) is not None:
        _found_pick_ui(search)


def _load_folder(text: str) -> None:
    if not text:
        st.session_state[KEY_LOAD_ERROR] = "No path entered; type the path of an adapter folder or file"
        return
    path = Path(text).expanduser()
    if not path.exists():
        st.session_state[KEY_LOAD_ERROR] = f"{path}: no such file or folder on the server; check the path"
        return
    if path.is_file() or (path / "adapter_config.json").is_file():
        _load(path, f"Loaded `{path}`.")
        return
    search = find_adapters(path)
    if not search.found:
        hidden = f" ({search.n_hidden_skipped} hidden folders not searched)" if search.n_hidden_skipped else ""
        st.session_state[KEY_LOAD_ERROR] = (
            f"{path}: no adapter found in it or {SEARCH_DEPTH} levels below{hidden}; point at a PEFT folder "
            "(adapter_config.json) or a .safetensors file"
        )
    elif len(search.found) == 1 and search.found[0].depth <= 1:  # the folder's own adapter, or its adapter/
        _load(search.found[0].path, f"Found one adapter in `{path}`: `{describe(search.found[0], path)}`. Loaded it.")
    else:  # several, or one far down: say where and let the user pick
        st.session_state[KEY_FOLDER_SEARCH] = search
        st.session_state.pop(KEY_LOAD_ERROR, None)


def _found_pick_ui(search: Search) -> None:
    found = search.found
    notes = [f"{search.n_hidden_skipped} hidden folders skipped"] if search.n_hidden_skipped else []
    if search.is_truncated:
        notes.append("search stopped early: a large folder")
    extra = f" ({'; '.join(notes)})" if notes else ""
    choice_key = f"{KEY_FOLDER_PICK}-{search.folder}"

    def load_pick() -> None:
        if (i := st.session_state[choice_key]) is not None:
            _load(found[i].path, f"Loaded `{describe(found[i], search.folder)}` from `{search.folder}`.")

    st.selectbox(
        f"Found {len(found)} adapter{'s' * (len(found) != 1)} in `{search.folder}`{extra}: pick one to load",
        range(len(found)),
        index=None,
        format_func=lambda i: describe(found[i], search.folder),
        placeholder="Pick an adapter",
        key=choice_key,
        on_change=load_pick,
    )


def upload_source_ui() -> None:
    """One uploader at a time: a file (zip or .safetensors) or a whole folder, never both holding files."""
    kind = st.radio("What to upload", ["One file", "A whole folder"], horizontal=True, key=KEY_UPLOAD_KIND)
    if kind == "One file":
        upload = st.file_uploader(
            f"A zip of a PEFT adapter folder, or a kohya / diffusers .safetensors (up to {UPLOAD_LIMIT_MB} MB)",
            type=["zip", "safetensors"],
            key=KEY_UPLOAD,
        )
        files = ((upload.name, upload.getvalue()),) if upload is not None else ()
    else:
        uploads = st.file_uploader(
            "An adapter folder (adapter_config.json + adapter_model.safetensors)",
            accept_multiple_files="directory",
            key=KEY_UPLOAD_DIR,
        )
        files = tuple((f.name, f.getvalue()) for f in uploads or ())
    if files:
        set_adapter(lambda: cache.cached_upload(cache.upload_digest(files), files))


def hub_source_ui() -> None:
    """A Hugging Face Hub id, read from huggingface_hub's cache; a download only when asked and allowed."""
    offline = is_offline()
    with st.form("hub_load", border=False):
        text = st.text_input("Hugging Face Hub id of an adapter (ORG/NAME, optionally @REVISION)", key=KEY_HUB_ID)
        download = st.checkbox(
            "Download it if it is not in the cache",
            key=KEY_HUB_DOWNLOAD,
            disabled=offline,
            help="HF_HUB_OFFLINE is set: only the cache is read" if offline else f"Into {hub_cache_dir()}",
        )
        submitted = st.form_submit_button("Load", type="primary")
    st.caption(f"Cache: `{hub_cache_dir()}`{' (offline: HF_HUB_OFFLINE is set)' if offline else ''}")
    if not submitted:
        return
    if not text.strip():
        st.session_state[KEY_LOAD_ERROR] = "No Hub id entered; type one as ORG/NAME"
        return
    try:
        with st.spinner(f"Looking up {text.strip()}…"):
            path = resolve_hub(text.strip(), kind="adapter", download=download and not offline)
    except HubError as err:
        st.session_state[KEY_LOAD_ERROR] = str(err)
        return
    _load(path, f"Loaded `{text.strip()}` from the Hugging Face cache (`{path}`).")


SOURCES: dict[str, Callable[[], None]] = {
    "Bundled sample": sample_source_ui,
    "Your training runs": runs_source_ui,
    "Folder on the server": folder_source_ui,
    "Upload": upload_source_ui,
    "Hugging Face Hub": hub_source_ui,
}
