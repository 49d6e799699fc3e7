"""The PARA page's "your own data" box: a base model and a data file, checked, loaded once and scored.

Once set, the PARA page's evaluation and its "smallest cut within X" search use this data (`own_evaluator`)
instead of a bundled run's split. UI glue only: the checks and the scoring are in analysis.evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from analysis.adapters import LoraAdapter
from analysis.evaluation import BaseModelError, DataError, EvalSettings
from analysis.evaluation.cut import check_base, check_head
from analysis.evaluation.evaluator import file_digest, own_data_evaluator
from analysis.hub import HubError
from analysis.para import ParaIndex, allocate_at
from analysis.recommend import CutEvaluator
from pages.shared import cache
from pages.shared.state import (
    KEY_OWN_BASE,
    KEY_OWN_CHUNKS,
    KEY_OWN_DATA,
    KEY_OWN_ERROR,
    KEY_OWN_FILE,
    KEY_OWN_LABELS,
    KEY_OWN_SEQ_LEN,
    KEY_OWN_TASK,
)
from pages.shared.widgets import initial, within

TASK_CHOICES = {"from the adapter or model": None, "causal LM (perplexity)": "causal-lm",
                "classifier (accuracy)": "classification"}  # fmt: skip


@dataclass(frozen=True)
class OwnData:
    """What the session scores cuts on: enough to find the cached base model, data and evaluator again."""

    fingerprint: str
    folder: str
    task: str
    n_labels: int | None
    mtime_ns: int
    path: str
    digest: str
    settings: EvalSettings
    reference: float


def _weights_mtime(folder: Path) -> int:
    return max((f.stat().st_mtime_ns for f in folder.glob("*.safetensors")), default=folder.stat().st_mtime_ns)


def _parts(own: OwnData, adapter: LoraAdapter):
    base = cache.cached_base_model(own.folder, own.task, own.n_labels, own.mtime_ns)
    base_key = f"{own.folder}:{own.task}:{own.n_labels}:{own.mtime_ns}"
    data = cache.cached_eval_data(own.path, own.digest, own.settings, base, base_key)
    return base, base_key, data


def own_evaluator(adapter: LoraAdapter) -> CutEvaluator | None:
    """The evaluator on the user's data when this session set one for this adapter, else None."""
    own: OwnData | None = st.session_state.get(KEY_OWN_DATA)
    if own is None or own.fingerprint != adapter.fingerprint:
        return None
    base, base_key, data = _parts(own, adapter)
    return cache.cached_own_evaluator(
        adapter.fingerprint, base_key, own.digest, own.settings, own.reference, adapter, base, data
    )


def _use(adapter: LoraAdapter, index: ParaIndex, base_name: str, path: str, task, settings: EvalSettings) -> None:
    """Check and load the base, read the data, score the uncompressed adapter; remember it all, or the error."""
    st.session_state.pop(KEY_OWN_ERROR, None)
    try:
        if not path:
            raise DataError("no data file given; type the path of a .txt, .jsonl, .json or .csv file on the server")
        info, task, n_labels = check_base(adapter, base_name or None, task=task)
        data_file = Path(path).expanduser()
        if not data_file.is_file():
            raise DataError(f"{data_file}: no such file on the server; check the path")
        with st.spinner(f"Loading {info.folder.name} ({info.n_bytes / 2**20:,.0f} MiB) once for every session…"):
            base = cache.cached_base_model(str(info.folder), task, n_labels, _weights_mtime(info.folder))
        check_head(base, n_labels)
        own = OwnData(adapter.fingerprint, str(info.folder), task, n_labels, _weights_mtime(info.folder),
                      str(data_file), file_digest(data_file), settings, float("nan"))  # fmt: skip
        _, _, data = _parts(own, adapter)
        evaluator = own_data_evaluator(adapter, base, data)
        bar = st.progress(0.0, text="Scoring the uncompressed adapter…")
        whole = allocate_at(index, index.n_components, min_rank=0)

        def step(done: int, total: int, _loss: float) -> None:
            bar.progress(min(done / max(total, 1), 1.0), f"batch {done} of {total}")

        reference = cache.cut_metric(evaluator, whole, index.n_components, step)
        bar.empty()
        st.session_state[KEY_OWN_DATA] = OwnData(**{**own.__dict__, "reference": reference})
    except (BaseModelError, DataError, HubError, ValueError, OSError) as err:
        st.session_state[KEY_OWN_ERROR] = str(err)
        st.session_state.pop(KEY_OWN_DATA, None)


def own_data_ui(adapter: LoraAdapter, index: ParaIndex) -> None:
    """The box: base model, data file, task and how the data is cut; shows what is in use or the error."""
    own: OwnData | None = st.session_state.get(KEY_OWN_DATA)
    in_use = own is not None and own.fingerprint == adapter.fingerprint
    with st.expander("Evaluate on your own data", expanded=in_use or KEY_OWN_ERROR in st.session_state):
        initial(KEY_OWN_BASE, adapter.base_model or "")
        initial(KEY_OWN_SEQ_LEN, 64, within(2, 4096))
        initial(KEY_OWN_CHUNKS, 128, within(1, 100_000))
        with st.form("own-data", border=False):
            base_name = st.text_input("Base model: a folder on the server, or a Hugging Face Hub id in the cache",
                                      key=KEY_OWN_BASE)  # fmt: skip
            path = st.text_input(
                "Data file on the server", key=KEY_OWN_FILE, placeholder="e.g. sample_data/bbc-news-held-out.jsonl",
                help="Causal LM: .txt, or .jsonl / .json / .csv with a 'text' field (perplexity on a seeded sample of "
                "chunks). Classifier: .csv / .jsonl / .json with 'text' and 'label' (class ids or names).",
            )  # fmt: skip
            cols = st.columns([2, 1, 1, 2])
            task = cols[0].selectbox("Task", list(TASK_CHOICES), key=KEY_OWN_TASK)
            seq_len = cols[1].number_input("Tokens per chunk", 2, 4096, key=KEY_OWN_SEQ_LEN)
            chunks = cols[2].number_input("Chunks", 1, 100_000, key=KEY_OWN_CHUNKS)
            labels = cols[3].text_input("Class names in id order (if not in the model)", key=KEY_OWN_LABELS)
            submitted = st.form_submit_button("Use this data", type="primary")
        if submitted:
            names = tuple(n.strip() for n in labels.split(",") if n.strip()) or None
            settings = EvalSettings(seq_len=int(seq_len), max_chunks=int(chunks), label_names=names)
            _use(adapter, index, base_name.strip(), path.strip(), TASK_CHOICES[task], settings)
            if KEY_OWN_DATA in st.session_state:
                st.rerun()  # the cut above was drawn with the old evaluator
        if error := st.session_state.get(KEY_OWN_ERROR):
            st.error(error)
        elif in_use:
            evaluator = own_evaluator(adapter)
            st.success(
                f"Cuts are scored on `{Path(own.path).name}` with `{own.folder}`: {evaluator.description} "
                f"Uncompressed adapter: **{evaluator.name} {evaluator.show(own.reference)}**."
            )
            if st.button("Stop using this data", key="own-data-clear"):
                st.session_state.pop(KEY_OWN_DATA, None)
                st.rerun()
