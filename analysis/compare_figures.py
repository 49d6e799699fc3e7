"""Plotly figures for comparing allocations and accuracy across methods (pure: data in, go.Figure out).

Rank maps of several allocations share one color scale so equal colors mean equal ranks; module types use
short labels (query, key, value, attention-out, intermediate, output) in that order. No streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures import _layout
from analysis.naming import TYPE_LABELS, layer_type_grid, split_module_name, type_label

METHOD_COLORS = {"para": "#d62728", "alora": "#1f77b4", "lr_lora": "#2ca02c", "adalora": "#9467bd", "lora": "#7f7f7f"}
_ORDER = list(TYPE_LABELS.values())


def _type_order(labels: Sequence[str]) -> list[str]:
    """Known labels in the canonical order, then the rest in the order given."""
    known = [t for t in _ORDER if t in labels]
    return known + [t for t in labels if t not in known]


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#8c564b")


def rank_maps_figure(
    maps: Mapping[str, Mapping[str, int]], title: str = "Rank per module at matched budget"
) -> go.Figure:
    """Side-by-side layer x module-type heat maps of several allocations on one shared color scale.

    Args:
        maps: panel title -> {module name: rank}; all panels use the union of their modules.
        title: the figure title.

    Returns:
        One heat map trace per panel, all on `coloraxis` from 0 to the largest rank shown.
    """
    names = list(dict.fromkeys(n for ranks in maps.values() for n in ranks))
    layers, kinds = layer_type_grid(names)
    labels = _type_order([type_label(k) for k in kinds])
    column = {kind: labels.index(type_label(kind)) for kind in kinds}
    y = ["—" if x is None else str(x) for x in layers]
    fig = make_subplots(rows=1, cols=max(len(maps), 1), subplot_titles=list(maps), shared_yaxes=True,
                        horizontal_spacing=0.04)  # fmt: skip
    z_max = max((max(r.values(), default=0) for r in maps.values()), default=0)
    for i, ranks in enumerate(maps.values(), start=1):
        grid = np.full((len(layers), len(labels)), np.nan)  # (n_layers, n_types)
        for name in names:
            layer, kind = split_module_name(name)
            grid[layers.index(layer), column[kind]] = ranks.get(name, 0)
        fig.add_trace(
            go.Heatmap(
                z=grid, x=labels, y=y, coloraxis="coloraxis", texttemplate="%{z:d}",
                hovertemplate="layer %{y}<br>%{x}<br>rank %{z}<extra></extra>",
            ),
            row=1, col=i,
        )  # fmt: skip
    fig.update_layout(
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": max(z_max, 1), "colorbar": {"title": "rank"}}
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_yaxes(title="layer", row=1, col=1)
    return _layout(fig, title, height=max(300, 90 + 36 * len(layers)))


def totals_figure(
    totals: Mapping[str, Mapping[str, int]], *, by: str, title: str, colors: Mapping[str, str] | None = None
) -> go.Figure:
    """Grouped bars: total rank per group (module type or layer) for each allocation.

    Args:
        totals: allocation label -> {group: total rank}.
        by: the x axis title, e.g. "module type" or "layer".
        title: the figure title.
        colors: allocation label -> bar color (plotly's defaults otherwise).
    """
    groups = list(dict.fromkeys(g for t in totals.values() for g in t))
    if by == "module type":
        groups = _type_order(groups)
    fig = go.Figure()
    for label, values in totals.items():
        color = (colors or {}).get(label)
        fig.add_trace(go.Bar(name=label, x=groups, y=[values.get(g, 0) for g in groups], marker_color=color))
    # the legend above the bars, clear of the rotated type labels and the axis title below them
    fig.update_layout(barmode="group", legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02,
                                               "yanchor": "bottom"})  # fmt: skip
    fig.update_xaxes(title=by, type="category")
    fig.update_yaxes(title="total rank")
    fig = _layout(fig, title, height=380)
    return fig.update_layout(margin={"t": 84}, title={"y": 0.98, "yanchor": "top"})  # the legend on a row below


def group_totals(ranks: Mapping[str, int], *, by: str) -> dict[str, int]:
    """Total rank per module type label (by="module type") or per layer (by="layer")."""
    out: dict[str, int] = {}
    for name, r in ranks.items():
        layer, kind = split_module_name(name)
        key = type_label(kind) if by == "module type" else ("—" if layer is None else str(layer))
        out[key] = out.get(key, 0) + int(r)
    return out


@dataclass(frozen=True)
class RankPair:
    """Per-module ranks of PARA and one run at the same budget (for the correlation scatter)."""

    label: str
    method: str
    names: tuple[str, ...]
    para: tuple[int, ...]
    other: tuple[int, ...]
    spearman: float


def rank_scatter_figure(pairs: Sequence[RankPair]) -> go.Figure:
    """Per-module rank: PARA (x) against each run (y), one trace per run, with the diagonal y = x."""
    fig = go.Figure()
    top = max((max((*p.para, *p.other), default=0) for p in pairs), default=1)
    fig.add_trace(
        go.Scatter(x=[0, top], y=[0, top], mode="lines", name="same rank", line={"dash": "dot", "color": "#999"})
    )
    for p in pairs:
        rho = "n/a" if np.isnan(p.spearman) else f"{p.spearman:.2f}"
        fig.add_trace(
            go.Scatter(
                x=p.para, y=p.other, mode="markers", name=f"{p.label} (Spearman {rho})", text=list(p.names),
                marker={"color": method_color(p.method), "size": 8, "opacity": 0.7},
                hovertemplate="%{text}<br>PARA %{x}, run %{y}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(title="PARA rank (matched budget)", rangemode="tozero")
    fig.update_yaxes(title="the run's rank", rangemode="tozero")
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})
    return _layout(fig, "Per-module ranks: PARA vs each run", height=420)


def accuracy_range(accuracies: Sequence[float], *, min_span: float = 2.0) -> tuple[float, float]:
    """The accuracy axis (percent) zoomed to the data, padded, at least `min_span` points wide.

    Example:
        accuracies 0.849 .. 0.899 -> (84.1, 90.7): the runs spread over the axis instead of piling at the top
        of 0-100%.
    """
    if not accuracies:
        return 0.0, 100.0
    low, high = 100 * min(accuracies), 100 * max(accuracies)
    pad = 0.15 * max(high - low, min_span) + 0.3
    return max(0.0, low - pad), min(100.0, high + pad)


@dataclass(frozen=True)
class AccuracyPoint:
    """One adapter on the accuracy-vs-budget axes."""

    label: str
    method: str
    params_fraction: float
    """LoRA parameters as a fraction of the PARA source's."""
    accuracy: float


def accuracy_budget_figure(
    curve: Sequence[AccuracyPoint], points: Sequence[AccuracyPoint], *, baseline: float | None = None
) -> go.Figure:
    """PARA's accuracy against the fraction of LoRA parameters kept, with other adapters as points.

    Args:
        curve: PARA cuts of the source adapter (a line, sorted by budget here).
        points: other adapters (adaptive runs, PARA at their matched budgets), one marker each.
        baseline: majority-class accuracy, drawn as a dotted line when given.
    """
    fig = go.Figure()
    curve = sorted(curve, key=lambda p: p.params_fraction)
    fig.add_trace(
        go.Scatter(
            x=[100 * p.params_fraction for p in curve], y=[100 * p.accuracy for p in curve], mode="lines+markers",
            name="PARA cuts of the source", line={"color": method_color("para")}, text=[p.label for p in curve],
            hovertemplate="%{text}<br>%{x:.1f}% params, %{y:.2f}%<extra></extra>",
        )
    )  # fmt: skip
    for p in points:
        fig.add_trace(
            go.Scatter(
                x=[100 * p.params_fraction], y=[100 * p.accuracy], mode="markers", name=p.label,
                marker={"color": method_color(p.method), "size": 12,
                        "symbol": "diamond-open" if p.method == "para" else "circle"},
                hovertemplate=f"{p.label}<br>%{{x:.1f}}% params, %{{y:.2f}}%<extra></extra>",
            )
        )  # fmt: skip
    low, high = accuracy_range([p.accuracy for p in (*curve, *points)])
    if baseline is not None and low <= 100 * baseline <= high:
        fig.add_hline(y=100 * baseline, line={"dash": "dot", "color": "#999"}, annotation_text="majority class")
    elif baseline is not None:  # far below the runs: say so rather than stretch the axis to it
        fig.add_annotation(
            text=f"majority class: {100 * baseline:.1f}% ({'below' if 100 * baseline < low else 'above'} this range)",
            xref="paper", yref="paper", x=0, y=0 if 100 * baseline < low else 1, xanchor="left",
            yanchor="bottom" if 100 * baseline < low else "top", showarrow=False, font={"color": "#777", "size": 11},
        )  # fmt: skip
    ticks = [1, 2, 5, 10, 15, 25, 50, 100]
    fig.update_xaxes(title="LoRA parameters (% of the PARA source, log scale)", type="log", tickvals=ticks,
                     ticktext=[f"{t}%" for t in ticks])  # fmt: skip
    fig.update_yaxes(title="accuracy (%)", range=[low, high])
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})
    return _layout(fig, "Accuracy against parameter budget", height=440)
