"""The PARA page's figures, built for a live slider: a validated base per adapter, cheap copies per cut.

Building a plotly figure validates every property (100-300 ms for a heat map on a busy 2-core machine), far
too slow for a slider. So each figure is built and validated once per adapter (`rank_map_base`,
`sweep_base`); a cut only swaps plain lists into a copy of that figure's dict, which is wrapped without
re-validation (`_from_spec`): the structure was validated in the base, and only numbers change. Pure (data in,
go.Figure out); no streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from analysis.figures import _layout
from analysis.naming import TYPE_LABELS, layer_type_grid, split_module_name, type_label
from analysis.para import ParaSweep, RankAllocation

CURRENT_COLOR = "#d62728"
KNEE_COLOR = "#ff7f0e"
EVAL_COLOR = "#2ca02c"
MAP_HEIGHT = 340  # fits beside the sweep above the fold at 1280x800


@dataclass(frozen=True)
class RankGrid:
    """Where each module sits in the layer x module-type grid (types as rows, layers as columns)."""

    layers: tuple[str, ...]
    """Column labels: layer indices, "—" for modules without one."""
    types: tuple[str, ...]
    """Row labels: short module types (`q_proj`, `query`, ...)."""
    rows: np.ndarray
    """(n_modules,) row of each module."""
    cols: np.ndarray
    """(n_modules,) column of each module."""


def _short_types(kinds: Sequence[str]) -> list[str]:
    """Short labels: MiniLM's known ones, else the last dotted part (`self_attn.q_proj` -> `q_proj`) if unique."""
    labels = [type_label(k) for k in kinds]
    short = [label.rsplit(".", 1)[-1] for label in labels]
    return short if len(set(short)) == len(short) else labels


def rank_grid(names: Sequence[str]) -> RankGrid:
    """The grid of `names` (module order of the spectra); MiniLM's types in their canonical order (query, key,
    value, attention-out, intermediate, output, as on the Compare page), others as first seen."""
    layers, kinds = layer_type_grid(names)
    known = list(TYPE_LABELS)
    kinds = [k for k in known if k in kinds] + [k for k in kinds if k not in known]
    parts = [split_module_name(n) for n in names]
    return RankGrid(
        layers=tuple("—" if x is None else str(x) for x in layers),
        types=tuple(_short_types(kinds)),
        rows=np.array([kinds.index(kind) for _, kind in parts], dtype=np.int64),
        cols=np.array([layers.index(layer) for layer, _ in parts], dtype=np.int64),
    )


def _cells(grid: RankGrid, values: Sequence[float]) -> list[list[float | None]]:
    """(n_types, n_layers) grid of `values` as plain lists; None where a layer lacks a type."""
    z = np.full((len(grid.types), len(grid.layers)), np.nan)
    z[grid.rows, grid.cols] = values
    return [[None if np.isnan(v) else float(v) for v in row] for row in z]


def rank_map_base(grid: RankGrid, max_rank: int) -> go.Figure:
    """The rank heat map of an adapter, every module at its full rank; color scale 0..max_rank."""
    n_layers = len(grid.layers)
    fig = go.Figure(
        go.Heatmap(
            z=_cells(grid, np.zeros(grid.rows.shape[0])), x=list(grid.layers), y=list(grid.types),
            zmin=0, zmax=max(max_rank, 1), colorscale="Viridis", colorbar={"title": "rank", "thickness": 12},
            texttemplate="%{z:d}" if n_layers <= 16 else "", xgap=1, ygap=1,
            hovertemplate="layer %{x} · %{y}<br>rank %{z} of %{customdata}<extra></extra>",
            customdata=_cells(grid, np.zeros(grid.rows.shape[0])),
        )
    )  # fmt: skip
    fig.update_xaxes(title="layer", type="category", tickangle=0)
    fig.update_yaxes(title=None, type="category", autorange="reversed")
    return _layout(fig, "Kept rank per module (layer × type)", height=MAP_HEIGHT)


def _from_spec(spec: dict) -> go.Figure:
    """A figure from the dict of a validated base with new numbers; skips plotly's per-property validation."""
    return go.Figure(spec, _validate=False)


def rank_map_figure(base: go.Figure, grid: RankGrid, allocation: RankAllocation) -> go.Figure:
    """The base heat map with the ranks of `allocation` (kept rank and original rank in the hover)."""
    spec = base.to_dict()
    spec["data"][0]["z"] = _cells(grid, allocation.ranks)
    spec["data"][0]["customdata"] = _cells(grid, allocation.original_ranks)
    return _from_spec(spec)


def sweep_base(sweep: ParaSweep) -> go.Figure:
    """Energy kept and relative error against the fraction of LoRA parameters kept (no markers yet)."""
    x = (100 * sweep.params_fraction).tolist()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=(100 * sweep.energy_kept).tolist(), name="energy kept (%)",
                             hovertemplate="params %{x:.1f}%<br>energy %{y:.2f}%<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=(100 * sweep.rel_error).tolist(), name="relative error (%)", line={"dash": "dot"},
                             hovertemplate="params %{x:.1f}%<br>error %{y:.2f}%<extra></extra>"))  # fmt: skip
    fig.update_xaxes(title="LoRA parameters kept (%)", range=[0, 100])
    fig.update_yaxes(title="%", range=[0, 100])
    # Inside the plot, right of the middle: the energy curve runs along the top, the error curve falls to the right.
    legend = {"x": 0.98, "y": 0.45, "xanchor": "right", "yanchor": "middle", "bgcolor": "rgba(255,255,255,0.8)",
              "font": {"size": 10}}  # fmt: skip
    fig.update_layout(legend=legend)
    return _layout(fig, "PARA sweep: parameters vs energy kept", height=MAP_HEIGHT)


@dataclass(frozen=True)
class EvaluatedCut:
    """A cut whose metric was measured, for the sweep: where it is and what it scored."""

    params_fraction: float
    value: float
    label: str
    """Hover text, e.g. "test accuracy 89.19%"."""


def _marker(name: str, x: float, y: float, color: str, symbol: str, text: str, size: int = 12) -> dict:
    return {"type": "scatter", "x": [x], "y": [y], "mode": "markers", "name": name, "text": [text],
            "marker": {"size": size, "color": color, "symbol": symbol, "line": {"width": 1, "color": "white"}},
            "hovertemplate": "%{text}<extra></extra>"}  # fmt: skip


def sweep_figure(
    base: go.Figure,
    current: RankAllocation,
    *,
    knee: RankAllocation | None = None,
    evaluated: Sequence[EvaluatedCut] = (),
    metric_name: str = "",
    metric_range: tuple[float, float] | None = None,
) -> go.Figure:
    """The base sweep with the current cut, the recommended (knee) cut and evaluated cuts on a second axis.

    Args:
        base: from `sweep_base`.
        current: the cut on the slider (a red diamond on the energy curve).
        knee: the data-free recommendation (an orange star on the energy curve), if shown.
        evaluated: measured cuts (green dots on the right axis, in the metric's unit).
        metric_name: the right axis title, e.g. "test accuracy (%)".
        metric_range: the right axis range (None: plotly's automatic range).
    """
    spec = base.to_dict()
    data = spec["data"]
    if knee is not None:
        text = f"recommended (knee): {100 * knee.params_fraction:.1f}% params, {100 * knee.energy_kept:.2f}% energy"
        data.append(_marker("recommended (knee)", 100 * knee.params_fraction, 100 * knee.energy_kept, KNEE_COLOR,
                            "star", text, size=14))  # fmt: skip
    text = f"current cut: {100 * current.params_fraction:.1f}% params, {100 * current.energy_kept:.2f}% energy"
    data.append(_marker("current cut", 100 * current.params_fraction, 100 * current.energy_kept, CURRENT_COLOR,
                        "diamond", text))  # fmt: skip
    if evaluated:
        points = sorted(evaluated, key=lambda e: e.params_fraction)
        data.append(
            {
                "type": "scatter",
                "x": [100 * e.params_fraction for e in points],
                "y": [e.value for e in points],
                "text": [e.label for e in points],
                "yaxis": "y2",
                "mode": "markers+lines",
                "name": metric_name or "evaluated",
                "marker": {"size": 9, "color": EVAL_COLOR},
                "line": {"width": 1, "dash": "dot", "color": EVAL_COLOR},
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
        axis = {"title": {"text": metric_name}, "overlaying": "y", "side": "right", "showgrid": False}
        if metric_range is not None:
            axis["range"] = list(metric_range)
        spec["layout"]["yaxis2"] = axis
    return _from_spec(spec)


def metric_axis_range(values: Sequence[float], reference: float | None, *, pad: float = 0.15) -> tuple[float, float]:
    """A right-axis range around the evaluated values and the reference, padded so points do not sit on edges."""
    points = [*values, *([reference] if reference is not None else [])]
    low, high = min(points), max(points)
    span = max(high - low, abs(high) * 0.01, 1e-9)
    return low - pad * span, high + pad * span


def evaluated_cuts(results: Mapping[float, float], label: str, fmt: str = "{:.2f}") -> list[EvaluatedCut]:
    """{params fraction: metric} -> points for `sweep_figure`, hover "<label> <value>"."""
    return [EvaluatedCut(f, v, f"{100 * f:.1f}% params: {label} {fmt.format(v)}") for f, v in results.items()]
