"""The PARA page's live part: one `st.fragment` that a slider move reruns alone.

A move reruns only `live_cut`: the cut (a binary search), its metrics, the rank heat map (SVG, cached per cut
position) and the sweep (SVG: a plotly chart costs the browser 0.5 s or more per move on this machine); the
page above it and the adapter's spectra are not touched. Everything per module (the table of changed ranks,
the export's rank_pattern) is drawn on request only, so a move does not send it again. Evaluations (accuracy
of the bundled runs, perplexity of the SmolLM2 sample) run only when asked, with a progress bar, through
`cache.cut_metric`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.adapters import LoraAdapter
from analysis.para import ParaIndex, RankAllocation, allocate_at, cut_position
from analysis.para_svg import evaluated_cuts, metric_axis_range, sweep_svg
from analysis.recommend import CutEvaluator, CutSearch, bisection_steps, smallest_cut_within
from pages.shared import cache
from pages.shared.export_widgets import export_ui
from pages.shared.own_data_widgets import own_evaluator
from pages.shared.scope_widgets import scoped_cut_ui
from pages.shared.state import (
    KEY_EVAL_REQUESTED,
    KEY_PARA_EVAL_SPLIT,
    KEY_PARA_SEARCHES,
    KEY_PARA_TABLE,
    KEY_PARA_TOLERANCE,
)
from pages.shared.widgets import cut_ui, initial, remember_cut, set_cut, show_cut_metrics, within

SEARCH_STEPS = 200  # the bisection stops at 1/SEARCH_STEPS of the pooled components (about 8 evaluations)


@st.fragment
def live_cut(adapter: LoraAdapter, index: ParaIndex) -> None:
    """The cut controls and everything that follows the cut; reruns alone when a control in it changes."""
    base = cache.cached_para_base(adapter.fingerprint, index)
    value, unit, min_rank = cut_ui(index)
    position = cut_position(index, value, unit, min_rank=min_rank)  # a budget counts the minimum rank too
    allocation = allocate_at(index, position, min_rank=min_rank)
    remember_cut(allocation)
    show_cut_metrics(allocation, adapter.modules[0].A.element_size() if adapter.modules else 4)
    evaluator = _evaluator(adapter, index)
    knee = allocate_at(index, base.knee, min_rank=min_rank)
    left, right = st.columns([1, 1])
    left.markdown(
        cache.cached_rank_map(adapter.fingerprint, position, min_rank, base, allocation), unsafe_allow_html=True
    )
    right.markdown(_sweep(base, index, allocation, knee, evaluator), unsafe_allow_html=True)
    recommended_cut_ui(index, base.knee, knee, evaluator)
    if evaluator is not None:
        evaluation_ui(evaluator, allocation, position)
    changed_modules_ui(allocation)
    export_ui(adapter, scoped_cut_ui(index, value, unit, allocation))  # one threshold, or one per component


def _evaluator(adapter: LoraAdapter, index: ParaIndex) -> CutEvaluator | None:
    """The evaluation on the user's own data when set, else of the adapter's run (bundled samples and training
    runs), None for any other adapter."""
    if (own := own_evaluator(adapter)) is not None:
        return own
    run = cache.cached_run_of(adapter.source, adapter.fingerprint)
    if run is None:
        return None
    split = "held_out" if run.is_causal_lm else st.session_state.get(KEY_PARA_EVAL_SPLIT, "test")  # radio: below
    return cache.cached_cut_evaluator(adapter.fingerprint, str(run.path), split, adapter, index, run)


def _sweep(base, index: ParaIndex, allocation: RankAllocation, knee: RankAllocation, evaluator: CutEvaluator | None):
    if evaluator is None:
        return sweep_svg(base.sweep, allocation, knee=knee)
    known = cache.known_metrics(evaluator, allocation.min_rank)
    fractions = {allocate_at(index, p, min_rank=allocation.min_rank).params_fraction: v for p, v in known.items()}
    scale = 100 if evaluator.percent else 1
    shown = {f: scale * v for f, v in fractions.items()}
    unit = " (%)" if evaluator.percent else ""
    reference = None if evaluator.reference is None else scale * evaluator.reference
    return sweep_svg(
        base.sweep,
        allocation,
        knee=knee,
        evaluated=evaluated_cuts(shown, evaluator.name, "{:.2f}"),
        metric_name=f"{evaluator.name}{unit}",
        metric_range=metric_axis_range(list(shown.values()), reference) if shown else None,
    )


def recommended_cut_ui(index: ParaIndex, knee_position: int, knee: RankAllocation, evaluator: CutEvaluator | None):
    """The data-free knee with a button to apply it; with an evaluator, the smallest cut within a tolerance."""
    st.subheader("Recommended cut")
    knee_col, search_col = st.columns(2)
    knee_col.markdown(
        f"**Knee of the sweep** (no data needed): keep **{100 * knee.params_fraction:.1f}%** of the LoRA "
        f"parameters ({knee.n_params_after:,}) for **{100 * knee.energy_kept:.2f}%** of the energy, mean rank "
        f"{knee.mean_rank:.2f}."
    )
    knee_col.caption(
        "The cut farthest above the diagonal of energy kept against parameters kept (both as fractions): beyond "
        "it, a parameter buys less energy than the adapter's average. Energy is not accuracy: check with an "
        "evaluation where you can."
    )
    knee_col.button("Apply the knee", on_click=set_cut, args=(index, knee_position), key="para-apply-knee")
    if evaluator is None:
        search_col.caption(
            "The smallest cut within a tolerance of the uncompressed adapter needs an evaluation: it is offered for "
            "the bundled runs, for runs trained on the Train page, and on your own data (Evaluate on your own "
            "data, below)."
        )
        return
    _search_ui(search_col, index, evaluator, knee.min_rank)


def _search_ui(box, index: ParaIndex, evaluator: CutEvaluator, min_rank: int) -> None:
    """ "The smallest cut within X of the uncompressed adapter", by bisection over evaluations."""
    points = evaluator.percent
    what = "accuracy points" if points else evaluator.name
    key = initial(KEY_PARA_TOLERANCE, 0.5 if points else 1.0, within(0.0, 100.0))
    tolerance = box.number_input(
        f"Smallest cut within this many {what} of the uncompressed adapter",
        min_value=0.0, max_value=100.0, step=0.1, key=key,
    )  # fmt: skip
    tol = tolerance / 100 if points else tolerance
    reference = evaluator.reference
    searches: dict = st.session_state.setdefault(KEY_PARA_SEARCHES, {})
    search_key = (evaluator.key, tol, min_rank)
    resolution = max(1, index.n_components // SEARCH_STEPS)
    steps = bisection_steps(0, index.n_components, resolution)
    if search_key not in searches:
        box.caption(
            f"{evaluator.description} Bisection over cut positions: at most {steps} evaluations, each drawn on the "
            "sweep; it assumes that keeping more never scores worse."
        )
        if not box.button(f"Find it ({steps} evaluations at most)", key="para-search"):
            return
        bar = box.progress(0.0, text="Evaluating the uncompressed adapter…")

        def metric(position: int) -> float:
            cut = allocate_at(index, position, min_rank=min_rank)
            return cache.cut_metric(evaluator, cut, position, lambda s, n, _: bar.progress(
                min((len(done) + s / max(n, 1)) / steps, 1.0), text=f"evaluation {len(done) + 1} of ≤{steps}: "
                f"{100 * cut.params_fraction:.1f}% params, batch {s} of {n}"))  # fmt: skip

        done: list[int] = []
        if reference is None:
            reference = metric(index.n_components)
        searches[search_key] = smallest_cut_within(
            metric, reference=reference, tolerance=tol, low=0, high=index.n_components,
            higher_is_better=evaluator.higher_is_better, resolution=resolution,
            on_step=lambda i, n, p, v: done.append(p),
        )  # fmt: skip
        bar.empty()
        st.rerun(scope="fragment")  # draw the new points on the sweep
    _show_search(box, index, evaluator, searches[search_key], min_rank)


def _show_search(box, index: ParaIndex, evaluator: CutEvaluator, search: CutSearch, min_rank: int) -> None:
    if search.position is None:
        box.warning(
            f"Even the uncompressed adapter is not within the tolerance of {evaluator.show(search.reference)} here; "
            "raise the tolerance."
        )
        return
    cut = allocate_at(index, search.position, min_rank=min_rank)
    value = search.evaluated[search.position]
    box.markdown(
        f"**Smallest cut found**: {100 * cut.params_fraction:.1f}% of the LoRA parameters ({cut.n_params_after:,}), "
        f"{evaluator.name} {evaluator.show(value)} against {evaluator.show(search.reference)} uncompressed "
        f"({len(search.evaluated)} evaluations)."
    )
    box.button("Apply this cut", on_click=set_cut, args=(index, search.position), key="para-apply-search")


def evaluation_ui(evaluator: CutEvaluator, allocation: RankAllocation, position: int) -> None:
    """ "Evaluate this compression": the current cut's metric beside the uncompressed adapter's, on request."""
    st.subheader(f"{evaluator.name.capitalize()} of this compression")
    if evaluator.key[0] == "accuracy":  # a classification run: its test or validation split
        st.radio("Evaluation split", ["test", "validation"], horizontal=True, key=KEY_PARA_EVAL_SPLIT)
    key = (evaluator.key, position, allocation.min_rank)
    requested: set = st.session_state.setdefault(KEY_EVAL_REQUESTED, set())
    known = (position, allocation.min_rank) in evaluator.recorded
    if key not in requested and not known:
        note = f" The uncompressed adapter: {evaluator.show(evaluator.reference)}." if evaluator.reference else ""
        st.caption(f"{evaluator.description}{note}")
        if not st.button("Evaluate this compression", type="primary", key="para-evaluate"):
            return
        requested.add(key)
    bar = st.progress(0.0, text="Evaluating…")
    value = cache.cut_metric(
        evaluator, allocation, position, lambda s, n, _: bar.progress(min(s / max(n, 1), 1.0), f"batch {s} of {n}")
    )
    bar.empty()
    cols = st.columns(3)
    delta = None
    if evaluator.reference is not None:
        gap = value - evaluator.reference
        delta = f"{100 * gap:+.2f} points" if evaluator.percent else f"{gap:+.3f}"
    color = "normal" if evaluator.higher_is_better else "inverse"
    cols[0].metric(f"{evaluator.name.capitalize()} at this cut", evaluator.show(value), delta, delta_color=color)
    reference = "–" if evaluator.reference is None else evaluator.show(evaluator.reference)
    cols[1].metric("Uncompressed", reference)
    cols[2].metric("LoRA params at this cut", f"{allocation.n_params_after:,}")


def changed_modules_ui(allocation: RankAllocation) -> None:
    """The modules whose rank the cut lowered, as a table, on request (it would be sent again on every move)."""
    a = allocation
    n_changed = sum(k < r for k, r in zip(a.ranks, a.original_ranks, strict=True))
    if not st.toggle(f"List the modules whose rank changed ({n_changed} of {len(a.names)})", key=KEY_PARA_TABLE):
        return
    table = pd.DataFrame(
        {"module": a.names, "rank": a.ranks, "of": a.original_ranks, "energy kept": a.module_energy_kept,
         "relative error": a.module_rel_error}
    )  # fmt: skip
    st.dataframe(
        table[table["rank"] < table["of"]],
        hide_index=True,
        width="stretch",
        column_config={"energy kept": st.column_config.NumberColumn(format="percent")},
    )
