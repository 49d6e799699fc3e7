"""The over-seeds figure of the Compare page: each method's accuracy and PARA's at its budget, mean ± sd.

Pure: summary rows in, go.Figure out. No streamlit here.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from analysis.compare_figures import method_color
from analysis.figures import _layout
from analysis.training.summary import GapSummary


def seed_accuracy_figure(rows: Sequence[GapSummary]) -> go.Figure:
    """Per row, two points with sd error bars: the method (its color) and PARA at the same budget (red).

    A row whose paired interval excludes 0 is marked "gap shown" in its label; the rest "no difference shown".
    """
    labels = [
        f"{r.group if r.kind == 'matched' else 'PARA on ' + r.group}<br>"
        f"{'gap shown' if r.significant else 'no difference shown'} (n={len(r.seeds)})"
        for r in rows
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[100 * r.accuracy[0] for r in rows], y=labels, mode="markers", name="method (as trained)",
            marker={"color": [method_color(r.method) for r in rows], "size": 11},
            error_x={"type": "data", "array": [100 * r.accuracy[1] for r in rows], "visible": True},
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[100 * r.para_accuracy[0] for r in rows], y=labels, mode="markers", name="PARA at that budget",
            marker={"color": method_color("para"), "size": 11, "symbol": "diamond"},
            error_x={"type": "data", "array": [100 * r.para_accuracy[1] for r in rows], "visible": True},
        )
    )  # fmt: skip
    fig.update_layout(xaxis_title="accuracy (%)", legend={"orientation": "h", "y": -0.15})
    return _layout(fig, "Accuracy over seeds (mean ± sd)", height=140 + 60 * max(len(rows), 1))
