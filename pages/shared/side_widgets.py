"""Side by side page glue: where each of the two adapters comes from (`side_adapter_ui`), and renderers of
their subspace angles and per-module differences (`show_*`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.adapters import AdapterError, LoraAdapter
from analysis.figures import module_heatmap_figure
from analysis.spectra import AdapterSpectra
from analysis.subspaces import ModuleSimilarity
from pages.shared import cache
from pages.shared.spectra_widgets import para_page_cut
from pages.shared.state import KEY_SIDE_FOLDER, KEY_SIDE_KIND, KEY_SIDE_PICK
from pages.shared.widgets import adapters_in, bundled_samples, current_adapter, initial, load_path, runs_dir

KINDS = {
    "loaded": "The loaded adapter",
    "cut": "The loaded adapter, cut at the PARA cut",
    "sample": "A bundled sample",
    "run": "One of your training runs",
    "folder": "A folder on the server",
}


def side_adapter_ui(side: str, default: str) -> tuple[LoraAdapter | None, str]:
    """Pickers for one side ("A" or "B"); returns its adapter (None until one is chosen) and a short label.

    Args:
        side: "A" or "B" (the widget keys and the label).
        default: the KINDS key picked on a first visit.
    """
    kind = st.selectbox(
        f"Adapter {side}", list(KINDS), format_func=KINDS.get,
        key=initial(f"{KEY_SIDE_KIND}-{side}", default, KINDS.__contains__),
    )  # fmt: skip
    loaded = current_adapter()
    if kind in ("loaded", "cut"):
        if loaded is None:
            st.info("No adapter is loaded: pick one on the Home page, or another source here.")
            return None, side
        if kind == "loaded":
            return loaded, f"{side}: {short_name(loaded)}"
        spectra = cache.cached_spectra(loaded.fingerprint, loaded)
        allocation, label = para_page_cut(cache.cached_para_index(loaded.fingerprint, spectra))
        st.caption(f"{label}: {allocation.n_params_after:,} of {allocation.n_params_before:,} LoRA params.")
        if allocation.n_params_after == 0:
            st.warning("The PARA cut keeps nothing: move it on the PARA page.")
            return None, side
        cut = cache.cached_cut_adapter(loaded.fingerprint, allocation.ranks, loaded, allocation)
        return cut, f"{side}: {short_name(loaded)} cut"
    if kind in ("sample", "run"):
        options = bundled_samples() if kind == "sample" else adapters_in(runs_dir())
        if not options:
            st.info(f"No finished training runs in `{runs_dir()}` yet." if kind == "run" else "No bundled samples.")
            return None, side
        name = st.selectbox(
            "Sample" if kind == "sample" else f"Run in `{runs_dir()}`", list(options), index=None,
            placeholder="Pick one", key=f"{KEY_SIDE_PICK}-{side}-{kind}",
        )  # fmt: skip
        return (None, side) if name is None else _load(options[name], side)
    folder = st.text_input(
        "Path to an adapter folder or file", key=f"{KEY_SIDE_FOLDER}-{side}", placeholder="/path/to/adapter",
        help="Press Enter to load. `~` is your home folder.",
    )  # fmt: skip
    return (None, side) if not folder.strip() else _load(Path(folder.strip()), side)


def _load(path: Path, side: str) -> tuple[LoraAdapter | None, str]:
    try:
        adapter = load_path(path)
    except AdapterError as err:
        st.error(str(err))
        return None, side
    return adapter, f"{side}: {short_name(adapter)}"


def short_name(adapter: LoraAdapter) -> str:
    """The adapter's folder or file name (a run's folder, not its `adapter/`)."""
    path = Path(adapter.source.split(" (uploaded)")[0].split(" cut by PARA")[0])
    return path.parent.name if path.name == "adapter" else path.name


DIFFERENCES = {  # label -> (Spectrum attribute, scale): B minus A per module
    "rank": ("r", 1),
    "σ_max": ("sigma_max", 1),
    "energy share (points)": ("energy_share", 100),
    "effective rank": ("effective_rank", 1),
    "stable rank": ("stable_rank", 1),
}


def module_values(spectra: AdapterSpectra, attr: str) -> dict[str, float]:
    """One number per module: a Spectrum attribute, or its share of the adapter's energy."""
    total = spectra.total_energy or 1.0
    return {s.name: s.energy / total if attr == "energy_share" else float(getattr(s, attr)) for s in spectra.spectra}


def show_similarity(similarity: Sequence[ModuleSimilarity], k: int) -> None:
    """Mean principal angle per module as two heat maps (output and input space) on one 0-90 degree scale."""
    compared = [s for s in similarity if s.k]
    if not compared:
        st.info("No module has a non-zero update in both adapters: nothing to compare.")
        return
    capped = sum(s.k < k for s in compared)
    for space, attr in (("output", "out_mean"), ("input", "in_mean")):
        values = {s.name: getattr(s, attr) for s in compared}
        fig = module_heatmap_figure(
            values, f"Mean principal angle of the top-{k} {space} subspaces (degrees)", "degrees",
            text_format=".0f", colorscale="Viridis_r", z_range=(0, 90),
        )  # fmt: skip
        st.plotly_chart(fig, width="stretch", key=f"angles-{space}")
    note = (
        f" {capped} modules have fewer than {k} non-zero directions in one adapter: their angles cover those."
        if capped
        else ""
    )
    st.caption(
        "Per module, the principal angles between the spans of the top-k left (output) or right (input) singular "
        "vectors of the two updates, from the factors: 0° where both adapters use the same directions, 90° where "
        f"they share none. Yellow: alike; dark: unrelated.{note}"
    )


def show_rank_maps(adapters: dict[str, LoraAdapter]) -> None:
    """Each adapter's rank per module, one heat map under the other on one color scale."""
    top = max((m.r for adapter in adapters.values() for m in adapter.modules), default=1)
    for i, (label, adapter) in enumerate(adapters.items()):
        ranks = {m.name: float(m.r) for m in adapter.modules}
        fig = module_heatmap_figure(ranks, f"Rank per module · {label}", "rank", text_format="d", z_range=(0, top))
        st.plotly_chart(fig, width="stretch", key=f"ranks-{i}")
    st.caption("One color scale for both; a blank cell: the module is not in that adapter (a cut to rank 0).")


def show_differences(spectra_a: AdapterSpectra, spectra_b: AdapterSpectra, common: Sequence[str], key: str) -> None:
    """A heat map of B − A in one per-module number, picked here (first: rank where the ranks differ)."""
    ranks_a, ranks_b = ({s.name: s.r for s in sp.spectra} for sp in (spectra_a, spectra_b))
    ranks_differ = ranks_a != ranks_b
    initial(key, "rank" if ranks_differ else "energy share (points)", DIFFERENCES.__contains__)
    label = st.selectbox("Difference B − A in", list(DIFFERENCES), key=key)
    attr, scale = DIFFERENCES[label]
    a, b = module_values(spectra_a, attr), module_values(spectra_b, attr)
    values = {name: scale * (b[name] - a[name]) for name in common if name in a and name in b}
    if not values:
        st.info("The adapters share no module.")
        return
    fig = module_heatmap_figure(
        values, f"{label}: B − A per module", f"Δ {label}", text_format="~.3g", colorscale="RdBu", z_mid=0.0
    )
    st.plotly_chart(fig, width="stretch", key="differences")


def show_module_table(rows: Sequence[dict[str, object]]) -> None:
    """`side_by_side.module_rows` as a table that fits the page (missing values blank)."""
    number = st.column_config.NumberColumn
    st.dataframe(
        pd.DataFrame(rows).drop(columns=["Δ energy share"]), hide_index=True, width="stretch",
        column_config={
            "module": st.column_config.TextColumn(width=210, pinned=True),
            **{c: number(format="%d", width=55) for c in ("rank A", "rank B")},
            "k": number(format="%d", width=40, help="directions compared"),
            **{c: number(format="%.4g", width=65) for c in ("σ_max A", "σ_max B")},
            "energy share A": number("share A", format="percent", width=65, help="energy share in A"),
            "energy share B": number("share B", format="percent", width=65, help="energy share in B"),
            "mean angle out (°)": number("out °", format="%.1f", width=55, help="mean output-space angle"),
            "mean angle in (°)": number("in °", format="%.1f", width=55, help="mean input-space angle"),
            "overlap": number(format="%.3f", width=65, help="mean cos² of the angles"),
        },
    )  # fmt: skip
