"""The only place with st.cache_*: loaded adapters, spectra and PARA indexes, keyed by fingerprint.

Cached objects are shared by every session, so they are treated as read-only (ParaIndex arrays are
write-protected). Spectra are cached per adapter fingerprint; a slider move never recomputes them.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import streamlit as st

from analysis.adapters import LoraAdapter, load_adapter
from analysis.para import ParaIndex, ParaSweep, para_index, para_sweep
from analysis.spectra import AdapterSpectra, adapter_spectra


@st.cache_resource(max_entries=16, show_spinner="Loading adapter…")
def cached_adapter(path: str, mtime_ns: int) -> LoraAdapter:
    """Adapter at `path`; `mtime_ns` is part of the key so an edited folder is read again."""
    return load_adapter(path)


@st.cache_resource(max_entries=8, show_spinner="Reading upload…")
def cached_upload(name: str, digest: str, _data: bytes) -> LoraAdapter:
    """Adapter from uploaded bytes (a zip or a single .safetensors), keyed by content hash."""
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="lora-rank-lab-upload-") as tmp:
        file = Path(tmp) / f"upload{suffix}"
        file.write_bytes(_data)
        adapter = load_adapter(file)
    return adapter


def upload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.cache_data(max_entries=32, show_spinner="Computing spectra…")
def cached_spectra(fingerprint: str, _adapter: LoraAdapter) -> AdapterSpectra:
    return adapter_spectra(_adapter)


@st.cache_resource(max_entries=32)
def cached_para_index(fingerprint: str, _spectra: AdapterSpectra) -> ParaIndex:
    return para_index(_spectra)


@st.cache_resource(max_entries=32)
def cached_sweep(fingerprint: str, _index: ParaIndex) -> ParaSweep:
    return para_sweep(_index, n_points=201)
