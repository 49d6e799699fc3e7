"""Side by side: any two adapters (two runs, two seeds, before and after a PARA cut): how alike their updates are
per module (principal angles between top-k singular subspaces), their spectra, rank maps and differences."""

from __future__ import annotations

from statistics import fmean

import streamlit as st

from analysis.figures import spectra_figure
from analysis.side_by_side import module_rows
from analysis.subspaces import match_modules
from pages.shared import cache
from pages.shared.side_widgets import (
    show_differences,
    show_module_table,
    show_rank_maps,
    show_similarity,
    side_adapter_ui,
)
from pages.shared.state import KEY_SIDE_K, KEY_SIDE_METRIC
from pages.shared.widgets import initial, keep_settings, within

st.set_page_config(page_title="Side by side · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("Two adapters side by side")
st.markdown(
    "Pick any two adapters of the same base model: two runs, two seeds, or one before and after a PARA cut. "
    "Modules are matched by name; for each, the top-k singular directions of the two updates are compared."
)

left, right = st.columns(2)
with left:
    a, label_a = side_adapter_ui("A", default="loaded")
with right:
    b, label_b = side_adapter_ui("B", default="cut")
if a is None or b is None:
    st.stop()

spectra_a = cache.cached_spectra(a.fingerprint, a)
spectra_b = cache.cached_spectra(b.fingerprint, b)
match = match_modules(a, b)
apart = {"only in A": match.only_a, "only in B": match.only_b, "of other shapes": match.shape_differs}
unmatched = [f"{len(names)} {what}" for what, names in apart.items() if names]
if not match.common:
    st.warning("The two adapters share no module of the same name and shape: nothing to compare per module.")
    st.stop()
if unmatched:
    st.caption(f"{len(match.common)} modules in both; {', '.join(unmatched)} (left out of the angles).")

r_max = max(m.r for m in (*a.modules, *b.modules) if m.name in set(match.common))
k = st.slider(
    "Top-k singular directions compared per module", 1, max(r_max, 2), disabled=r_max < 2,
    key=initial(KEY_SIDE_K, min(8, r_max), within(1, max(r_max, 2))),
)  # fmt: skip
similarity = cache.cached_similarity((a.fingerprint, b.fingerprint), k, a, b, (spectra_a, spectra_b))

compared = [s for s in similarity if s.k]
cols = st.columns(4)
cols[0].metric("Modules compared", f"{len(compared):,} of {len(match.common):,}")
cols[1].metric("LoRA params A → B", f"{a.n_params:,}", f"{b.n_params - a.n_params:+,} in B", delta_color="off")
if compared:
    out, inp = (fmean(getattr(s, attr) for s in compared) for attr in ("out_mean", "in_mean"))
    cols[2].metric("Mean angle, output / input", f"{out:.1f}° / {inp:.1f}°")
    overlap = fmean(s.overlap for s in compared)
    cols[3].metric("Mean overlap", f"{overlap:.3f}", help="mean cos² of the angles: 1 alike, 0 orthogonal")

angles, spectra_tab, ranks_tab, differences = st.tabs(["Subspace angles", "Spectra", "Rank maps", "Differences"])
with angles:
    show_similarity(similarity, k)
with spectra_tab:
    values = [s.sigma[s.sigma > 0] for sp in (spectra_a, spectra_b) for s in sp.spectra if (s.sigma > 0).any()]
    y_range = (min(float(v.min()) for v in values), max(float(v.max()) for v in values)) if values else None
    for column, spectra, label in zip(st.columns(2), (spectra_a, spectra_b), (label_a, label_b), strict=True):
        fig = spectra_figure(spectra, y_range=y_range, title=label, legend_on_top=True)
        column.plotly_chart(fig, width="stretch", key=f"spectra-{label[0]}")
    st.caption("Both on one y scale. Hover a curve for its module.")
with ranks_tab:
    show_rank_maps({label_a: a, label_b: b})
with differences:
    show_differences(spectra_a, spectra_b, match.common, key=KEY_SIDE_METRIC)
    show_module_table(module_rows(spectra_a, spectra_b, similarity))
