"""Compare: PARA's post-hoc allocation against ranks learned during training (ALoRA, LR-LoRA, AdaLoRA).

Accuracies come from the folder's comparison.json (written by `python -m analysis.training compare`) when
its fingerprints match the adapters on disk; anything missing is evaluated live on request.
"""

from __future__ import annotations

import streamlit as st

from analysis.adapters import AdapterError
from analysis.training.catalog import classification_runs, fixed_rank
from analysis.training.comparison import Evaluations, compare_task
from pages.shared import cache
from pages.shared import compare_widgets as cw
from pages.shared.seed_widgets import show_seed_summary
from pages.shared.widgets import keep_settings, load_path

st.set_page_config(page_title="Compare · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("Compare allocations")
with st.expander("What each method's rank means", expanded=True):
    st.markdown(cw.METHOD_MEANINGS)

folder = cw.runs_folder_ui()
runs_by_task = classification_runs(folder)
if not runs_by_task or not any(fixed_rank(r) for runs in runs_by_task.values() for r in runs):
    st.info(f"No finished classification runs with a fixed-rank run in `{folder}`. Train some on the Train page.")
    st.stop()
task, source, others, split = cw.comparison_picker_ui(folder, runs_by_task)

report_file = folder / "comparison.json"
try:
    report = cache.cached_report(str(report_file), report_file.stat().st_mtime_ns) if report_file.is_file() else None
except ValueError as err:  # a comparison.json this version cannot read: evaluate live instead
    st.error(str(err))
    report = None
known = report.evaluations() if report else {}


def compare(known):
    """The one library call: match, align and look up (or list as pending) every evaluation."""
    evaluations = Evaluations(known, compute=False)
    result = compare_task(
        task, [source, *others], evaluations, source=source, split=split, load=load_path,
        index_of=lambda a: cache.cached_para_index(a.fingerprint, cache.cached_spectra(a.fingerprint, a)),
        digest_of=cache.split_digest_of,
    )  # fmt: skip
    return result, evaluations.pending


try:
    result, pending = compare(known)
except (ValueError, AdapterError) as err:  # an incomplete run record, or runs of another base model
    st.error(str(err))
    st.stop()
n_missing = len(pending)
if pending and (live := cw.evaluate_pending_ui(pending, has_report=report is not None)):
    result, pending = compare(known | live)
if report and not pending:
    live_note = f"; {n_missing} evaluated here" if n_missing else ", current for these adapters"
    st.caption(f"Accuracies from `{report_file.name}` (measured by `{report.command}`){live_note}.")

st.subheader(f"{source.name} cut by PARA, against {len(others)} run{'s' * (len(others) != 1)}")
src = result.source_evaluation
st.caption(
    f"PARA source: {result.source_n_params:,} LoRA params, {split} accuracy "
    f"{'–' if src is None else f'{src.accuracy:.2%} on {src.n_examples:,} examples'}."
)
if result.runs:
    cw.show_accuracy_table(result)
    if any(r.split_digest != result.split_digest for r in result.runs):
        st.warning(
            "Some runs were trained with a different split (another seed): their accuracies are on other examples."
        )
if report is not None:
    show_seed_summary(report, task, split)
baseline = source.metrics.get("baselines", {}).get("majority_test_accuracy") if split == "test" else None
cw.show_accuracy_curve(result, baseline)
if result.runs:
    st.subheader("Where the rank goes, at matched budget")
    cw.show_run_pairs(result, cw.stable_ranks_of(others))
    st.subheader("Rank correlation")
    cw.show_rank_correlation(result)
