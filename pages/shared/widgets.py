"""Widgets (`*_ui`, return values) and renderers (`show_*`) shared by the pages."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from analysis.adapters import AdapterError, LoraAdapter
from analysis.para import CutUnit, ParaIndex, RankAllocation, allocate_at, cut_position
from analysis.safe_io import one_line
from analysis.spectra import AdapterSpectra
from pages.shared import cache
from pages.shared.state import (
    KEPT_PREFIXES,
    KEY_ADAPTER,
    KEY_CUT_LAST,
    KEY_CUT_UNIT,
    KEY_CUT_VALUE,
    KEY_LOAD_ERROR,
    KEY_MIN_RANK,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = ROOT / "sample_adapters"


def runs_dir() -> Path:
    """Where app-started training runs go: runs/, or $LORA_LAB_RUNS_DIR (read on every rerun)."""
    return Path(os.environ.get("LORA_LAB_RUNS_DIR", ROOT / "runs"))


DEFAULT_SAMPLE = "minilm-bbc-topic-lora-r32"
UPLOAD_LIMIT_MB = 1024

# Slider unit label -> (cut unit, how the slider value maps to the library's value).
CUT_LABELS: dict[str, CutUnit] = {
    "Energy kept (%)": "energy",
    "Parameter budget (%)": "params_fraction",
    "Threshold τ (log scale)": "tau",
    "Relative threshold τ / σ_max": "relative",
    "Mean rank": "mean_rank",
}


def adapters_in(folder: Path) -> dict[str, Path]:
    """Every adapter directly in `folder` (a PEFT folder, a run record's adapter/, or a .safetensors), by name."""
    found = {}
    if not folder.is_dir():
        return found
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if (entry / "adapter_config.json").is_file() or (entry / "adapter" / "adapter_config.json").is_file():
            found[entry.name] = entry
        elif entry.suffix == ".safetensors":
            found[entry.stem] = entry
    return found


def bundled_samples() -> dict[str, Path]:
    """Every adapter under sample_adapters/."""
    return adapters_in(SAMPLES_DIR)


def is_loaded_from(adapter: LoraAdapter, entry: Path) -> bool:
    """Whether `adapter` was loaded from `entry` (a folder or a run record's adapter/ in it)."""
    source = Path(adapter.source).resolve()
    return source in (entry.resolve(), (entry / "adapter").resolve())


def load_path(path: str | Path) -> LoraAdapter:
    """Load through the cache; raises AdapterError with the loader's one-line message."""
    path = Path(path).expanduser()
    try:
        if not path.exists():
            raise AdapterError(f"{path}: no such file or folder on the server; check the path")
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:  # a folder that cannot be entered; a symlink loop
        raise AdapterError(
            f"{path}: cannot be opened ({getattr(err, 'strerror', None) or err}); check the path"
        ) from None
    return cache.cached_adapter(str(resolved), _last_change_ns(path))


def _last_change_ns(path: Path) -> int:
    """Latest mtime of `path` and what lies up to two levels in it (a run's adapter/ folder): a file rewritten
    in place changes its own mtime, not its folder's, and the cache must read it again."""
    entries = itertools.chain([path], path.glob("*"), path.glob("*/*")) if path.is_dir() else [path]
    latest = 0
    for entry in itertools.islice(entries, MAX_WATCHED):  # `/proc` or `/` is a path too: look at a bounded few
        with contextlib.suppress(OSError):  # an entry that vanished or cannot be read (`/proc/<pid>/...`)
            latest = max(latest, entry.stat().st_mtime_ns)
    return latest


MAX_WATCHED = 2_000  # entries `_last_change_ns` looks at; an adapter folder or run record has a few dozen


def set_adapter(load) -> bool:
    """Run `load()`; on success make it the session's adapter, on AdapterError keep the previous one."""
    try:
        adapter = load()
    except AdapterError as err:
        st.session_state[KEY_LOAD_ERROR] = str(err)
        return False
    st.session_state[KEY_ADAPTER] = adapter
    st.session_state.pop(KEY_LOAD_ERROR, None)
    return True


def current_adapter() -> LoraAdapter | None:
    """The session's adapter; on a first visit the default bundled sample."""
    if KEY_ADAPTER not in st.session_state:
        samples = bundled_samples()
        if samples:
            first = samples.get(DEFAULT_SAMPLE, next(iter(samples.values())))
            set_adapter(lambda: load_path(first))
    return st.session_state.get(KEY_ADAPTER)


def adapter_or_stop() -> tuple[LoraAdapter, AdapterSpectra]:
    """The current adapter and its cached spectra; stops the page with a hint when there is none."""
    adapter = current_adapter()
    if adapter is None:
        st.info("No adapter loaded. Pick one on the Home page.")
        st.stop()
    return adapter, cache.cached_spectra(adapter.fingerprint, adapter)


def show_adapter_banner(adapter: LoraAdapter) -> None:
    st.caption(f"Adapter: {code(adapter.source)} · {adapter.format} · {len(adapter.modules)} modules")


_MARKUP = re.compile(r"([\\`*\[\]<>!$~|])")  # what makes images, links, code, emphasis, LaTeX, tables


def plain(text: object) -> str:
    """`text` from a file (a base model name, a module or file name, an error naming them) for st.markdown,
    st.error and the like: shown as written, never as markup (no image fetched, no link, no LaTeX)."""
    return _MARKUP.sub(r"\\\1", one_line(str(text)))


def code(text: object) -> str:
    """`text` from a file as inline code: a fence longer than any run of backticks in it, so it cannot close early."""
    text = one_line(str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if fence != "`" else f"`{text}`"


def keep_settings() -> None:
    """Keep the session's widget values across pages: call first on every page (in the page's own run: a call
    in app.py, before `st.navigation` runs the page, does not keep them).

    Streamlit forgets a widget's value at the end of a run that does not draw it; a value written through
    the Session State API is kept. Widgets with kept keys take no `value`/`index`/`default` argument (that
    would clash with a value set this way): `initial` sets their first value instead.
    """
    for key in list(st.session_state):
        if isinstance(key, str) and key.startswith(KEPT_PREFIXES):
            st.session_state[key] = st.session_state[key]


def initial(key: str, value: object, valid: Callable[[object], bool] = lambda _: True) -> str:
    """Set the widget at `key` to `value` unless it holds a valid value already; returns `key`."""
    if key not in st.session_state or not valid(st.session_state[key]):
        st.session_state[key] = value
    return key


def subset_of(options: list) -> Callable[[object], bool]:
    """For `initial`: a list of some of `options` (a kept value may belong to another adapter or task)."""
    allowed = set(options)
    return lambda chosen: isinstance(chosen, list) and set(chosen) <= allowed


def within(low: float, high: float) -> Callable[[object], bool]:
    """For `initial`: a number, or a (low, high) pair, inside [low, high]."""

    def check(value: object) -> bool:
        values = value if isinstance(value, tuple | list) else (value,)
        return bool(values) and all(isinstance(x, int | float) and low <= x <= high for x in values)

    return check


def cut_ui(index: ParaIndex, *, key: str = "") -> tuple[float, CutUnit, int]:
    """One slider in the chosen unit, the unit picker and the min-rank option on one row; returns
    (value, unit, min_rank). The slider's label is its unit's title (stable: other tools find it by it)."""
    slider_col, unit_col, rank_col = st.columns([5, 3, 2], vertical_alignment="bottom")
    sliders = _cut_sliders(index)
    slider_key = f"{KEY_CUT_VALUE}{key}-{{}}"

    def same_cut_in_new_unit() -> None:  # a new unit starts where the cut is, not at its own default
        unit = CUT_LABELS[st.session_state[KEY_CUT_UNIT + key]]
        last = st.session_state.get(KEY_CUT_LAST + key, {})  # read now: the cut of the latest run
        if unit in last:
            low, high, _, step, _ = sliders[unit]
            # a cut that keeps everything has τ = 0, log10 τ = -inf: the slider's end, not round(-inf)
            at = last[unit] if math.isfinite(last[unit]) else (low if last[unit] < 0 else high)
            st.session_state[slider_key.format(unit)] = min(max(round(at / step) * step, low), high)

    label = unit_col.selectbox("Cut unit", list(CUT_LABELS), key=KEY_CUT_UNIT + key, on_change=same_cut_in_new_unit)
    min_rank = rank_col.radio("Minimum rank", [0, 1], horizontal=True, key=KEY_MIN_RANK + key)
    unit = CUT_LABELS[label]
    low, high, start, step, title = sliders[unit]
    fmt = "%.3f" if unit == "relative" else "%.2f" if unit == "tau" else None
    key_now = initial(slider_key.format(unit), start, within(low, high))  # a kept value may be another adapter's
    value = slider_col.slider(title, low, high, step=step, format=fmt, key=key_now)
    return slider_value(unit, value), unit, int(min_rank)


def slider_value(unit: CutUnit, value: float) -> float:
    """The library's value of the cut for a slider at `value` (percent -> fraction, log10 τ -> τ)."""
    return value / 100 if unit in ("energy", "params_fraction") else 10**value if unit == "tau" else value


def set_cut(index: ParaIndex, position: int, *, key: str = "") -> None:
    """Move the current unit's slider to the step whose cut is `position` (or the nearest the steps allow).

    For an `on_click` callback: a slider's value can only be set before it is drawn.
    """
    unit = CUT_LABELS[st.session_state.get(KEY_CUT_UNIT + key, next(iter(CUT_LABELS)))]
    low, high, _, step, _ = _cut_sliders(index)[unit]
    target = allocate_at(index, position)
    now = {"energy": 100 * target.energy_kept, "params_fraction": 100 * target.params_fraction,
           "relative": target.relative_tau, "mean_rank": target.mean_rank,
           "tau": math.log10(target.tau) if target.tau > 0 else low}[unit]  # fmt: skip
    base = math.floor(now / step)
    candidates = [min(max(round((base + k) * step, 6), low), high) for k in range(-3, 5)]
    best = min(
        candidates, key=lambda v: (abs(cut_position(index, slider_value(unit, v), unit) - position), abs(v - now))
    )
    st.session_state[f"{KEY_CUT_VALUE}{key}-{unit}"] = best


def _cut_sliders(index: ParaIndex) -> dict[str, tuple[float, float, float, float, str]]:
    """Per unit: (low, high, first value, step, title) of its slider; τ runs on a log10 scale."""
    r_max = float(max(index.original_ranks, default=1))
    positive = index.values[index.values > 0]
    low = math.floor(math.log10(positive[-1]) * 20) / 20 if positive.size else -3.0
    high = math.ceil(math.log10(index.sigma_max) * 20) / 20 if positive.size else 0.0
    start = min(max(math.log10(index.sigma_max * 0.1) if positive.size else low, low), high)
    return {
        "energy": (1.0, 100.0, 90.0, 0.1, "Energy kept (%)"),
        "params_fraction": (0.0, 100.0, 25.0, 0.5, "LoRA parameters kept (%)"),
        "relative": (0.0, 1.0, 0.1, 0.001, "τ / σ_max"),
        "mean_rank": (0.0, r_max, min(8.0, r_max), 0.25, "Mean rank over modules"),
        "tau": (low, high, round(start, 2), 0.01, "log10 τ"),
    }


def remember_cut(allocation: RankAllocation, *, key: str = "") -> None:
    """The cut in every slider unit, for `cut_ui` to start a newly picked unit at the same cut."""
    a = allocation
    st.session_state[KEY_CUT_LAST + key] = {
        "energy": 100 * a.energy_kept,
        "params_fraction": 100 * a.params_fraction,
        "relative": a.relative_tau,
        "mean_rank": a.mean_rank,
        "tau": math.log10(a.tau) if a.tau > 0 else -math.inf,
    }


def show_cut_metrics(allocation: RankAllocation, bytes_per_param: int) -> None:
    """The cut in every unit plus parameter and size savings: four metrics and one line (compact, so the rank map
    and the sweep stay on screen below them)."""
    a = allocation
    row = st.columns(4)
    total = f"of {a.n_params_before:,}"
    row[0].metric("LoRA params", f"{a.n_params_after:,}", total, delta_color="off", delta_arrow="off")  # no rise
    row[1].metric("Params saved", f"{1 - a.params_fraction:.1%}")
    row[2].metric("Energy kept", f"{a.energy_kept:.2%}")
    row[3].metric("Relative error", f"{a.rel_error:.4f}", help="‖ΔW − ΔWₖ‖ / ‖ΔW‖ over the whole adapter")
    above = "> " if a.relative_tau > 1 else ""  # a cut above σ_max: no pooled component is kept
    relative = "> 1" if above else f"{a.relative_tau:.4f}"
    size = (a.n_params_before - a.n_params_after) * bytes_per_param / 1e6
    st.markdown(
        f"τ = **{above}{a.tau:.4g}** · τ / σ_max = **{relative}** · mean rank **{a.mean_rank:.2f}** · "
        f"{a.n_kept:,} of {sum(a.original_ranks):,} rank components kept · **{size:.2f} MB** saved"
    )
