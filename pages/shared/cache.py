"""The only place with st.cache_*: loaded adapters, spectra and PARA indexes, keyed by fingerprint.

Cached objects are shared by every session, so they are treated as read-only (ParaIndex arrays are
write-protected). Spectra are cached per adapter fingerprint; a slider move never recomputes them.
Task evaluations are cached per (fingerprint, task, split, split digest[, cut position, min rank]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from analysis.adapters import AdapterError, LoraAdapter, load_adapter
from analysis.evaluation import BaseModel, EvalData, EvalSettings, prepare_data
from analysis.evaluation.base_model import inspect_base_model, load_base_model
from analysis.evaluation.evaluator import own_data_evaluator
from analysis.para import ParaIndex, ParaSweep, RankAllocation, para_index, para_sweep
from analysis.para_svg import RankGrid, rank_grid, rank_map_svg
from analysis.recommend import CutEvaluator, knee_position
from analysis.safe_zip import private_temp_dir
from analysis.side_by_side import cut_adapter
from analysis.spectra import AdapterSpectra, adapter_spectra
from analysis.subspaces import ModuleSimilarity, adapter_similarity
from analysis.training.catalog import run_of_adapter, split_digest
from analysis.training.cut_evaluators import evaluator_for_run, run_of
from analysis.training.records import RunRecord
from analysis.training.results import ComparisonReport, EvalKey, Evaluation, read_report

# Heavy work (a load, an upload, spectra) runs for one session at a time: the engine already keeps both cores
# busy, and a second job would only halve its speed while taking the GIL from every session's reruns (a slider
# move is a few ms of work). The others wait for their turn; a cached result never waits.
HEAVY_AT_ONCE = 1
_heavy = threading.BoundedSemaphore(HEAVY_AT_ONCE)
# What the caches hold at most (README, "A shared server"): adapters and uploads are dropped an hour after their
# last use, oldest first beyond their counts; spectra, indexes and sweeps are small (kilobytes per adapter).
ADAPTERS_MAX, UPLOADS_MAX, ADAPTER_TTL_S = 16, 8, 3600


@contextlib.contextmanager
def heavy_work() -> Iterator[None]:
    """Wait for the one slot of heavy work, then hold it."""
    with _heavy:
        yield


@st.cache_resource(max_entries=ADAPTERS_MAX, ttl=ADAPTER_TTL_S, show_spinner="Loading adapter…")
def cached_adapter(path: str, mtime_ns: int) -> LoraAdapter:
    """Adapter at `path`; `mtime_ns` is part of the key so an edited folder is read again."""
    with heavy_work():
        return load_adapter(path)


@st.cache_resource(max_entries=UPLOADS_MAX, ttl=ADAPTER_TTL_S, show_spinner="Reading upload…")
def cached_upload(digest: str, _files: tuple[tuple[str, bytes], ...]) -> LoraAdapter:
    """Adapter from uploaded files, keyed by their content hash.

    One file: a zip or a single .safetensors. Several: the files of one adapter folder (by base name).
    The temp copy is removed at once (a killed server's, by the next upload); the tensors do not depend on it.
    """
    with heavy_work(), _temp_folder("upload") as tmp:
        if len(_files) == 1:
            name, data = _files[0]
            target = Path(tmp) / f"upload{Path(name).suffix.lower()}"
            target.write_bytes(data)
            shown = Path(name).name
        else:
            target = Path(tmp) / "adapter"
            target.mkdir()
            for name, data in _files:
                (target / Path(name).name).write_bytes(data)  # base names only: no paths from the client
            shown = "upload"
        try:
            adapter = load_adapter(target)
        except AdapterError as err:  # name what the user uploaded, not the temporary copy
            raise AdapterError(str(err).replace(str(target), shown)) from None
        return dataclasses.replace(adapter, source=f"{shown} (uploaded)")  # the copy is gone after this


def upload_digest(files: tuple[tuple[str, bytes], ...]) -> str:
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(Path(name).name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


@contextlib.contextmanager
def _temp_folder(kind: str) -> Iterator[str]:
    tmp = private_temp_dir(kind)
    try:
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@st.cache_data(max_entries=32, show_spinner="Computing spectra…")
def cached_spectra(fingerprint: str, _adapter: LoraAdapter) -> AdapterSpectra:
    with heavy_work():
        return adapter_spectra(_adapter)


@st.cache_resource(max_entries=32)
def cached_para_index(fingerprint: str, _spectra: AdapterSpectra) -> ParaIndex:
    return para_index(_spectra)


@st.cache_resource(max_entries=32)
def cached_sweep(fingerprint: str, _index: ParaIndex) -> ParaSweep:
    return para_sweep(_index, n_points=201)


@dataclass(frozen=True)
class ParaPageBase:
    """What the PARA page draws every cut from, made once per adapter: the module grid, the sweep and the knee
    (the data-free recommended cut)."""

    grid: RankGrid
    max_rank: int
    sweep: ParaSweep
    knee: int


@st.cache_resource(max_entries=16, show_spinner=False)
def cached_para_base(fingerprint: str, _index: ParaIndex) -> ParaPageBase:
    max_rank = int(_index.original_ranks.max()) if _index.n_modules else 1
    return ParaPageBase(
        rank_grid(_index.spectra.names), max_rank, cached_sweep(fingerprint, _index), knee_position(_index)
    )


@st.cache_resource(max_entries=512, show_spinner=False)
def cached_rank_map(fingerprint: str, position: int, min_rank: int, _base: ParaPageBase, _cut: RankAllocation) -> str:
    """The rank heat map (SVG) of one cut, by position and min rank: a revisited cut costs nothing."""
    return rank_map_svg(_base.grid, _cut.ranks, _cut.original_ranks, _base.max_rank)


@st.cache_data(max_entries=8, show_spinner=False)
def cached_report(path: str, mtime_ns: int) -> ComparisonReport | None:
    """The comparison.json at `path` (None if absent); `mtime_ns` is in the key so a rewrite is read again."""
    return read_report(path)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_run_of_adapter(source: str, fingerprint: str) -> RunRecord | None:
    """The classification run an adapter folder belongs to (None for uploads and plain folders)."""
    return run_of_adapter(source)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_run_of(source: str, fingerprint: str) -> RunRecord | None:
    """The run (classification or causal LM) an adapter folder belongs to, None for uploads and plain folders."""
    return run_of(source)


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_cut_evaluator(
    fingerprint: str, run_path: str, split: str, _adapter: LoraAdapter, _index: ParaIndex, _run: RunRecord
) -> CutEvaluator:
    """The evaluator of a run's cuts on `split`, with the cuts its comparison.json holds on record."""
    report_file = Path(run_path).parent / "comparison.json"
    report = cached_report(str(report_file), report_file.stat().st_mtime_ns) if report_file.is_file() else None
    return evaluator_for_run(_adapter, _run, _index, split=split, report=report)


@st.cache_data(max_entries=256, show_spinner=False)
def cached_split_digest(run_path: str, split: str, mtime_ns: int) -> str:
    """`catalog.split_digest`, read once per splits.json version (`mtime_ns`; 0 when the run saved none)."""
    return split_digest(run_path, split)


def split_digest_of(run_path: str | Path, split: str) -> str:
    """The digest of a run's split, from the cache unless its splits.json changed."""
    file = Path(run_path) / "splits.json"
    return cached_split_digest(str(run_path), split, file.stat().st_mtime_ns if file.is_file() else 0)


EVALUATIONS_MAX = 512
_EVALUATIONS_LOCK = threading.Lock()


@st.cache_resource
def _evaluation_store() -> OrderedDict[EvalKey | tuple, Evaluation | float]:
    """Evaluations shared by every session, oldest dropped first beyond EVALUATIONS_MAX."""
    return OrderedDict()


def cached_evaluation(
    key: EvalKey | tuple,
    compute: Callable[..., Evaluation | float],
    on_step: Callable[[int, int, float], None] | None = None,
) -> Evaluation | float:
    """Accuracy and loss of an adapter (key.position None) or of a PARA cut of it, on a task's split; or, keyed
    by (CutEvaluator.key, position, min_rank), a `CutEvaluator`'s metric of a cut (the PARA page's).

    `compute(on_step)` runs the evaluation on a miss. The store is a cache_resource rather than a cached
    function so that `on_step` can move a progress bar drawn outside it (st.cache_data would try to replay
    those updates).
    """
    store = _evaluation_store()
    with _EVALUATIONS_LOCK:
        if key in store:
            store.move_to_end(key)
            return store[key]
    result = compute(on_step)
    with _EVALUATIONS_LOCK:
        store[key] = result
        while len(store) > EVALUATIONS_MAX:
            store.popitem(last=False)
    return result


def cut_metric(
    evaluator: CutEvaluator,
    cut: RankAllocation,
    position: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> float:
    """`evaluator`'s metric of a cut, from its record, the shared store, or evaluated now (then stored)."""
    recorded = evaluator.recorded.get((position, cut.min_rank))
    if recorded is not None:
        return recorded
    return cached_evaluation(
        (evaluator.key, position, cut.min_rank), lambda step: evaluator.evaluate(cut, step), on_step
    )


def known_metrics(evaluator: CutEvaluator, min_rank: int) -> dict[int, float]:
    """Every cut of `evaluator` measured so far at `min_rank` (on record or in the store): position -> metric."""
    known = {p: v for (p, m), v in evaluator.recorded.items() if m == min_rank}
    with _EVALUATIONS_LOCK:
        known |= {
            k[1]: v
            for k, v in _evaluation_store().items()
            if isinstance(k, tuple) and k[0] == evaluator.key and k[2] == min_rank
        }
    return known


@st.cache_resource(max_entries=2, show_spinner=False)
def cached_base_model(folder: str, task: str, n_labels: int | None, mtime_ns: int) -> BaseModel:
    """A checked base model loaded once for every session (the largest object the app holds: two at most).

    Evaluations attach adapters to it under its lock and detach them after (analysis.evaluation.cut.attached).
    """
    return load_base_model(inspect_base_model(folder), task, n_labels=n_labels)


@st.cache_resource(max_entries=16, show_spinner=False)
def cached_eval_data(path: str, digest: str, settings: EvalSettings, _base: BaseModel, base_key: str) -> EvalData:
    """The user's data file read and tokenized for one base model, keyed by its content digest."""
    return prepare_data(_base, path, settings)


@st.cache_resource(max_entries=16, show_spinner=False)
def cached_own_evaluator(
    fingerprint: str, base_key: str, data_digest: str, settings: EvalSettings, reference: float,
    _adapter: LoraAdapter, _base: BaseModel, _data: EvalData,
) -> CutEvaluator:  # fmt: skip
    """The PARA page's evaluator on the user's data (analysis.evaluation.evaluator), with the uncompressed figure."""
    return own_data_evaluator(_adapter, _base, _data, reference=reference)


@st.cache_resource(max_entries=8, show_spinner="Cutting the adapter at the PARA cut…")
def cached_cut_adapter(
    fingerprint: str, ranks: tuple[int, ...], _adapter: LoraAdapter, _allocation: RankAllocation
) -> LoraAdapter:
    """`side_by_side.cut_adapter` of the adapter `fingerprint` at `ranks` (its allocation), shared read-only."""
    return cut_adapter(_adapter, _allocation)


@st.cache_data(max_entries=32, show_spinner="Comparing singular subspaces…")
def cached_similarity(
    fingerprints: tuple[str, str], k: int, _a: LoraAdapter, _b: LoraAdapter, _spectra: tuple[AdapterSpectra, ...]
) -> list[ModuleSimilarity]:
    """`subspaces.adapter_similarity` of two adapters (by fingerprint) at k directions per module."""
    sigmas = tuple({s.name: s.sigma for s in spectra.spectra} for spectra in _spectra)
    return adapter_similarity(_a, _b, k, sigmas=sigmas)
