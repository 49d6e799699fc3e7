"""Compare page glue: run pickers (`*_ui`), live evaluation of what comparison.json lacks, renderers (`show_*`).

Also the PARA page's "Evaluate this compression". Nothing here trains or imports torch; evaluations run
through `cache.cached_evaluation`, with a progress bar, only when the user asks for them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.adapters import LoraAdapter
from analysis.compare_figures import (
    AccuracyPoint,
    RankPair,
    accuracy_budget_figure,
    group_totals,
    method_color,
    rank_maps_figure,
    rank_scatter_figure,
    totals_figure,
)
from analysis.figures import module_heatmap_figure
from analysis.para import RankAllocation
from analysis.training.catalog import fixed_rank, para_source
from analysis.training.comparison import PendingEvaluation
from analysis.training.evaluate import evaluate_cut
from analysis.training.records import RunRecord
from analysis.training.results import EvalKey, Evaluation, RunResult, TaskComparison
from pages.shared import cache
from pages.shared.state import (
    KEY_COMPARE_FOLDER,
    KEY_COMPARE_RUNS,
    KEY_COMPARE_SOURCE,
    KEY_COMPARE_SPLIT,
    KEY_COMPARE_TASK,
    KEY_EVAL_REQUESTED,
    KEY_PARA_EVAL_SPLIT,
)
from pages.shared.widgets import SAMPLES_DIR, initial, runs_dir, subset_of

METHOD_NAMES = {
    "para": "PARA",
    "lora": "LoRA (fixed rank)",
    "alora": "ALoRA",
    "lr_lora": "LR-LoRA",
    "adalora": "AdaLoRA",
    "masked_rank": "masked rank (ours)",
}
METHOD_MEANINGS = (
    "- **PARA** (post-hoc, data-free): rank follows *weight magnitude*. After training, the fixed-rank adapter's "
    "singular values are pooled over all modules and cut at one threshold; a module keeps the components whose "
    "`s·σ` clear it. No data is used.\n"
    "- **ALoRA** (Allocating LoRA, during training): rank follows *loss ablation*. Each rank's contribution is "
    "scored by switching it off and on alone on a validation batch; the lowest are pruned and their budget is "
    "given to other modules.\n"
    "- **LR-LoRA** (during training): rank follows a *learned nonlinearity*. Each module learns its own sinc-basis "
    "function φ applied elementwise to B·A, so its update (α/r)·φ(B·A) is dense; its learned rank is the "
    "**stable rank** ‖dW‖²_F / ‖dW‖²_2 (continuous; rounded in its rank map). It is matched at its trained "
    "parameters, r·(d_in + d_out) + 2K per module.\n"
    "- **masked rank** (ours, an ablation, not from a paper): rank follows a *learned gate*, a continuous rank per "
    "module traded against a parameter penalty.\n"
    "- **AdaLoRA** (peft, during training): rank follows *gradient sensitivity* scores of each singular triplet, "
    "pruned to a budget on a schedule.\n\n"
    "Budgets are matched in **LoRA parameters** (each rank of a module costs d_in + d_out): every run is set "
    "against the PARA cut of the fixed-rank adapter whose parameter count is nearest its own. The methods mean "
    "different things by rank, so a mismatch in *where* rank goes is informative, not a bug."
)


def runs_folder_ui() -> Path:
    """Where to look for run records: the bundled runs or the Train page's runs folder."""
    folders = {"bundled": SAMPLES_DIR, "grid": SAMPLES_DIR / "grid", "yours": runs_dir()}
    titles = {"bundled": "Bundled runs (sample_adapters/)", "grid": "Grid, 3 seeds (sample_adapters/grid/)",
              "yours": f"Your runs ({folders['yours'].name}/)"}  # fmt: skip
    choice = st.radio(
        "Runs",
        list(folders),
        format_func=lambda key: (
            f"{titles[key]} ({folders[key].relative_to(SAMPLES_DIR.parent) if key != 'yours' else folders[key].name}/)"
        ),
        horizontal=True,
        key=KEY_COMPARE_FOLDER,
    )
    return folders[choice]


def _run_label(run: RunRecord) -> str:
    rank = fixed_rank(run)
    method = METHOD_NAMES.get(run.metrics.get("method", ""), run.metrics.get("method", "?"))
    return f"{run.name} · {method}" + (f" r={rank}" if rank else "")


def comparison_picker_ui(
    folder: Path, runs_by_task: dict[str, list[RunRecord]]
) -> tuple[str, RunRecord, list[RunRecord], str]:
    """Task, PARA's fixed-rank source, the runs to set against it (default all) and the split."""
    cols = st.columns([1, 2, 1])
    task = cols[0].selectbox("Task", list(runs_by_task), key=KEY_COMPARE_TASK)
    runs = {r.name: r for r in runs_by_task[task]}
    fixed = [name for name, r in runs.items() if fixed_rank(r) is not None]
    default = para_source(list(runs.values()))
    source_key = initial(
        f"{KEY_COMPARE_SOURCE}-{folder}-{task}", default.name if default else fixed[0], fixed.__contains__
    )
    source = cols[1].selectbox(
        "Fixed-rank run to cut with PARA", fixed, format_func=lambda name: _run_label(runs[name]), key=source_key
    )
    split = cols[2].radio("Split", ["test", "validation"], horizontal=True, key=KEY_COMPARE_SPLIT)
    others = [name for name in runs if name != source]
    chosen = st.multiselect(
        "Runs to compare with PARA at their budgets", others, format_func=lambda name: _run_label(runs[name]),
        key=initial(f"{KEY_COMPARE_RUNS}-{folder}-{task}-{source}", others, subset_of(others)),
    )  # fmt: skip
    return task, runs[source], [runs[name] for name in chosen], split


def evaluate_pending_ui(pending: Sequence[PendingEvaluation], *, has_report: bool) -> dict[EvalKey, Evaluation]:
    """Evaluations missing from comparison.json: a button, then a progress bar; {} until asked for.

    Once asked for, the keys are remembered for the session and later reruns read them from the cache.
    """
    if not pending:
        return {}
    requested: set[EvalKey] = st.session_state.setdefault(KEY_EVAL_REQUESTED, set())
    if not all(p.key in requested for p in pending):
        n = len(pending)
        why = "not in comparison.json (for this split and these adapters)" if has_report else "not measured yet"
        box = st.empty()
        with box.container():
            st.info(f"{n} evaluation{'s are' if n != 1 else ' is'} {why}; accuracies show as – until evaluated.")
            if not st.button(f"Evaluate {n} adapter{'s' * (n != 1)} on this split", type="primary"):
                return {}
        box.empty()
        requested |= {p.key for p in pending}
    return _evaluate_with_progress(pending)


def _evaluate_with_progress(pending: Sequence[PendingEvaluation]) -> dict[EvalKey, Evaluation]:
    """Each pending evaluation through the shared cache, with one progress bar over all of them."""
    bar = st.progress(0.0, text="Evaluating…")
    results = {}
    for i, p in enumerate(pending):

        def on_step(step: int, total: int, loss: float, i: int = i, label: str = p.label) -> None:
            bar.progress(min((i + step / max(total, 1)) / len(pending), 1.0), text=f"{label}: batch {step} of {total}")

        results[p.key] = cache.cached_evaluation(p.key, p.compute, on_step)
    bar.empty()
    return results


def _acc(e: Evaluation | None) -> float | None:
    return None if e is None else e.accuracy


TABLE_FORMATS = {
    "LoRA params": "{:,}", "PARA params (matched)": "{:,}", "accuracy": "{:.2%}", "PARA accuracy": "{:.2%}",
    "PARA − run (points)": "{:+.2f}", "Spearman": "{:.2f}", "L1 distance": "{:.2f}",
}  # fmt: skip


def show_accuracy_table(result: TaskComparison) -> None:
    """One row per run: its parameters and accuracy beside PARA's at the matched budget."""
    rows = [
        {
            "run": r.run, "method": METHOD_NAMES.get(r.method, r.method), "LoRA params": r.n_params,
            "accuracy": _acc(r.evaluation), "PARA params (matched)": r.para.n_params,
            "PARA accuracy": _acc(r.para.evaluation),
            "PARA − run (points)": None if r.evaluation is None or r.para.evaluation is None
            else 100 * (r.para.evaluation.accuracy - r.evaluation.accuracy),
            "Spearman": None if math.isnan(r.spearman) else r.spearman, "L1 distance": r.l1_distance,
        }
        for r in result.runs
    ]  # fmt: skip
    # Thousands separators and percentages through a Styler (the data stays numeric, so sorting does too);
    # Streamlit draws a missing number as "None" whatever the Styler says, so a column with a missing value is
    # shown as text, "–" where it is missing. Widths and short labels so that every column fits at 1280 px.
    frame = pd.DataFrame(rows)
    for name, spec in TABLE_FORMATS.items():
        if frame[name].isna().any():
            frame[name] = [("–" if pd.isna(x) else spec.format(x)) for x in frame[name]]
    table = frame.style.format({k: v for k, v in TABLE_FORMATS.items() if pd.api.types.is_numeric_dtype(frame[k])})
    column = functools.partial(st.column_config.Column, alignment="right")  # numbers, also where shown as text
    st.dataframe(
        table, hide_index=True, width="stretch",
        column_config={
            "run": st.column_config.Column(width=175, pinned=True),
            "method": st.column_config.Column(width=110),
            "LoRA params": column(width=85),
            "accuracy": column(width=75),
            "PARA params (matched)": column("PARA params", width=85, help="PARA's LoRA parameters, matched"),
            "PARA accuracy": column("PARA acc.", width=75, help="PARA's accuracy at the matched budget"),
            "PARA − run (points)": column("PARA − run", width=75, help="in percentage points"),
            "Spearman": column("Spearman", width=75, help="Spearman ρ of the per-module ranks"),
            "L1 distance": column("L1", width=50),
        },
    )  # fmt: skip
    if short := [r for r in result.runs if r.para.n_params < 0.9 * r.n_params]:
        st.warning(
            "PARA's source cannot reach the budget of "
            + ", ".join(f"{r.run} ({r.n_params:,} LoRA parameters; PARA at most {r.para.n_params:,})" for r in short)
            + ": those rows are not at matched budgets. Pick a source run with more parameters to compare them."
        )
    st.caption(
        "Accuracy on the chosen split; PARA − run in percentage points; – where it is not evaluated yet. "
        "Spearman ρ of per-module ranks (– against a uniform allocation, where it is undefined); L1 distance = "
        "Σ|PARA − run| / Σ(PARA + run) over modules, 0 for the same ranks, 1 for disjoint ones."
    )


def show_accuracy_curve(result: TaskComparison, baseline: float | None) -> None:
    """PARA's accuracy-vs-budget curve with every run and every matched PARA cut as points."""
    total = result.source_n_params or 1
    curve = [
        AccuracyPoint(f"PARA {c.target_fraction:.0%}", "para", c.params_fraction, c.evaluation.accuracy)
        for c in result.curve
        if c.evaluation is not None
    ]
    points = [
        AccuracyPoint(
            f"{METHOD_NAMES.get(r.method, r.method)} · {r.run}", r.method, r.n_params / total, r.evaluation.accuracy
        )
        for r in result.runs
        if r.evaluation is not None
    ]
    points += [
        AccuracyPoint(f"PARA matched to {r.run}", "para", r.para.params_fraction, r.para.evaluation.accuracy)
        for r in result.runs
        if r.para.evaluation is not None
    ]
    if not curve and not points:
        st.caption("No accuracies yet for this selection.")
        return
    st.plotly_chart(accuracy_budget_figure(curve, points, baseline=baseline), width="stretch")


def _show_pair(r: RunResult, stable_rank: Mapping[str, float] | None) -> None:
    name = METHOD_NAMES.get(r.method, r.method)
    cols = st.columns(4)
    cols[0].metric(f"{name} LoRA params", f"{r.n_params:,}")
    cols[1].metric("PARA LoRA params", f"{r.para.n_params:,}", f"{r.params_gap:+,}", delta_color="off")
    cols[2].metric("Spearman ρ", "n/a (uniform)" if math.isnan(r.spearman) else f"{r.spearman:.2f}")
    cols[3].metric("L1 distance", f"{r.l1_distance:.2f}")
    maps = {"PARA (matched budget)": r.para_ranks, name: r.ranks}
    colors = {"PARA (matched budget)": method_color("para"), name: method_color(r.method)}
    st.plotly_chart(rank_maps_figure(maps), width="stretch", key=f"maps-{r.run}")
    left, right = st.columns(2)
    by_type = {label: group_totals(ranks, by="module type") for label, ranks in maps.items()}
    by_layer = {label: group_totals(ranks, by="layer") for label, ranks in maps.items()}
    left.plotly_chart(totals_figure(by_type, by="module type", title="Total rank per module type", colors=colors),
                      width="stretch", key=f"types-{r.run}")  # fmt: skip
    right.plotly_chart(totals_figure(by_layer, by="layer", title="Total rank per layer", colors=colors),
                       width="stretch", key=f"layers-{r.run}")  # fmt: skip
    if stable_rank:
        title = f"{name}: stable rank of each module's dense update (its learned rank, unrounded)"
        st.plotly_chart(module_heatmap_figure(stable_rank, title, "stable rank"), width="stretch",
                        key=f"stable-{r.run}")  # fmt: skip


def show_run_pairs(result: TaskComparison, stable_ranks: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Per run, a tab: rank maps side by side on one scale, totals per module type and per layer, and for a
    dense-update run (LR-LoRA) its stable-rank map (`stable_ranks`: run name -> module -> stable rank)."""
    tabs = st.tabs([f"{METHOD_NAMES.get(r.method, r.method)} · {r.run}" for r in result.runs])
    for tab, r in zip(tabs, result.runs, strict=True):
        with tab:
            _show_pair(r, (stable_ranks or {}).get(r.run))


def stable_ranks_of(runs: Sequence[RunRecord]) -> dict[str, dict[str, float]]:
    """Run name -> per-module stable rank, for the runs that record one (LR-LoRA)."""
    return {run.name: found for run in runs if (found := run.metrics.get("method_details", {}).get("stable_rank"))}


def show_rank_correlation(result: TaskComparison) -> None:
    """Per-module ranks of PARA against each run on one scatter."""
    pairs = []
    for r in result.runs:
        names = tuple(r.para_ranks)
        pairs.append(RankPair(r.run, r.method, names, tuple(r.para_ranks[n] for n in names),
                              tuple(r.ranks.get(n, 0) for n in names), r.spearman))  # fmt: skip
    st.plotly_chart(rank_scatter_figure(pairs), width="stretch")


def show_cut_evaluation(adapter: LoraAdapter, run: RunRecord, allocation: RankAllocation, position: int) -> None:
    """PARA page: "Evaluate this compression" on the run's task, beside the run's uncompressed accuracy.

    Args:
        adapter: the loaded adapter (the `adapter/` folder of `run`).
        run: the classification run it belongs to (its task, split and recorded accuracy).
        allocation: the current cut; position: its position in the pooled order.
    """
    task = run.task
    st.subheader(f"Task accuracy of this compression ({task})")
    split = st.radio("Split", ["test", "validation"], horizontal=True, key=KEY_PARA_EVAL_SPLIT)
    digest = cache.split_digest_of(run.path, split)
    key = EvalKey(adapter.fingerprint, task, split, digest, position, allocation.min_rank)
    uncompressed = run.metrics.get(split, {}).get("accuracy")
    requested: set[EvalKey] = st.session_state.setdefault(KEY_EVAL_REQUESTED, set())
    if key not in requested:
        note = f" The uncompressed adapter scored {uncompressed:.2%}." if uncompressed is not None else ""
        st.caption(f"Exports this cut, loads it with peft and evaluates it on the run's {split} split.{note}")
        if not st.button("Evaluate this compression", type="primary"):
            return
        requested.add(key)

    def compute(on_step):
        return evaluate_cut(adapter, allocation, task, run=run.path, split=split, on_step=on_step)

    result = _evaluate_with_progress([PendingEvaluation(key, "this cut", compute)])[key]
    cols = st.columns(4)
    delta = None if uncompressed is None else f"{100 * (result.accuracy - uncompressed):+.2f} points"
    cols[0].metric(f"Accuracy at this cut ({split})", f"{result.accuracy:.2%}", delta)
    cols[1].metric("Loss at this cut", f"{result.loss:.4f}")
    cols[2].metric("Uncompressed accuracy", "–" if uncompressed is None else f"{uncompressed:.2%}")
    cols[3].metric("Examples", f"{result.n_examples:,}")
