"""Compare page: the over-seeds summary from comparison.json (mean ± sd, paired intervals, McNemar p)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.seed_figures import seed_accuracy_figure
from analysis.training.results import ComparisonReport
from analysis.training.summary import source_line, summarize


def show_seed_summary(report: ComparisonReport, task: str, split: str) -> None:
    """Per method over its seeds: accuracy with error bars, PARA − method with its 95% interval, and whether
    the gap is shown (the interval excludes 0). Nothing when the report holds no run of the task with two or
    more seeds (a one-seed report has no spread to show)."""
    if split != "test":
        return
    rows = [r for r in summarize(report) if r.task == task]
    if not any(len(r.seeds) > 1 for r in rows):
        return
    st.subheader("Over seeds: which gaps are real")
    st.caption(source_line(report, task))
    table = []
    for r in rows:
        g = r.gap
        table.append({
            "row": r.group if r.kind == "matched" else f"PARA applied to {r.group} (50% of it)",
            "seeds": ", ".join(map(str, r.seeds)), "lr": r.lr, "steps": r.n_steps, "wall time (s)": r.wall_time_s,
            "LoRA params": r.n_params, "accuracy": f"{100 * r.accuracy[0]:.2f} ± {100 * r.accuracy[1]:.2f}",
            "PARA": f"{100 * r.para_accuracy[0]:.2f} ± {100 * r.para_accuracy[1]:.2f}",
            "PARA − method (points)": None if g is None else 100 * g.difference,
            "95% interval": "–" if g is None else f"[{100 * g.low:+.2f}, {100 * g.high:+.2f}]",
            "McNemar p (exact)": None if g is None else g.mcnemar.p_exact,
            "gap": "no predictions" if g is None else ("shown" if r.significant else "no difference shown"),
        })  # fmt: skip
    st.dataframe(
        pd.DataFrame(table), hide_index=True, width="stretch",
        column_config={"PARA − method (points)": st.column_config.NumberColumn(format="%+.2f"),
                       "McNemar p (exact)": st.column_config.NumberColumn(format="%.3g"),
                       "wall time (s)": st.column_config.NumberColumn(format="%.0f"),
                       "steps": st.column_config.NumberColumn(format="%.0f")},
    )  # fmt: skip
    st.plotly_chart(seed_accuracy_figure(rows), width="stretch")
    st.caption(
        "Mean ± sd over training seeds (one data split). PARA − method: paired over the same test examples and "
        "seeds, 95% bootstrap interval over examples; a gap is shown only when the interval excludes 0. "
        '"PARA applied to" rows cut the adaptive run\'s own adapter to half its parameters.'
    )
