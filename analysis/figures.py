"""Plotly figure builders for the app (pure: data in, go.Figure out; no streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from analysis.naming import layer_type_grid, split_module_name
from analysis.para import ParaSweep, RankAllocation
from analysis.spectra import AdapterSpectra

FONT = "Inter, system-ui, sans-serif"


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 15}},
        font={"family": FONT, "size": 12},
        height=height,
        margin={"l": 10, "r": 10, "t": 48, "b": 10},
        template="plotly_white",
    )
    return fig


def spectra_figure(spectra: AdapterSpectra, names: Sequence[str] | None = None) -> go.Figure:
    """Effective singular values per module (one line each), log y."""
    wanted = set(names) if names is not None else None
    fig = go.Figure()
    for s in spectra.spectra:
        if wanted is not None and s.name not in wanted:
            continue
        positive = s.sigma[s.sigma > 0]
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, positive.size + 1), y=positive, mode="lines", name=s.name, line={"width": 1.2},
                hovertemplate=f"{s.name}<br>i=%{{x}} sigma=%{{y:.4g}}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_yaxes(type="log", title="effective singular value s·σ")
    fig.update_xaxes(title="component i")
    fig.update_layout(showlegend=len(fig.data) <= 12)
    return _layout(fig, "Singular value spectra")


def module_heatmap_figure(
    values: Mapping[str, float], title: str, colorbar: str, *, text_format: str = ".2g"
) -> go.Figure:
    """Layer x module-type heat map of one number per module (blank where a type is absent)."""
    layers, types = layer_type_grid(list(values))
    grid = np.full((len(layers), len(types)), np.nan)
    for name, value in values.items():
        layer, kind = split_module_name(name)
        grid[layers.index(layer), types.index(kind)] = value
    labels = ["—" if x is None else str(x) for x in layers]
    fig = go.Figure(
        go.Heatmap(
            z=grid, x=types, y=labels, colorscale="Viridis", colorbar={"title": colorbar},
            texttemplate=f"%{{z:{text_format}}}", hovertemplate="layer %{y}<br>%{x}<br>%{z}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_yaxes(title="layer", autorange="reversed", type="category")
    fig.update_xaxes(title="module type")
    return _layout(fig, title, height=max(260, 60 + 34 * len(layers)))


def rank_heatmap_figure(allocation: RankAllocation) -> go.Figure:
    """The PARA rank map: kept rank per module, layer x module type."""
    return module_heatmap_figure(allocation.rank_map, "Kept rank per module", "rank", text_format="d")


def sweep_figure(sweep: ParaSweep, current: RankAllocation | None = None) -> go.Figure:
    """Energy kept and relative error against the fraction of LoRA parameters kept, current cut marked."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=100 * sweep.params_fraction, y=100 * sweep.energy_kept, name="energy kept (%)"))
    fig.add_trace(go.Scatter(x=100 * sweep.params_fraction, y=100 * sweep.rel_error, name="relative error (%)",
                             line={"dash": "dot"}))  # fmt: skip
    if current is not None:
        fig.add_trace(
            go.Scatter(
                x=[100 * current.params_fraction], y=[100 * current.energy_kept], mode="markers", name="current cut",
                marker={"size": 12, "color": "#d62728", "symbol": "diamond"},
            )
        )  # fmt: skip
    fig.update_xaxes(title="LoRA parameters kept (%)", range=[0, 100])
    fig.update_yaxes(title="%", range=[0, 100])
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _layout(fig, "PARA sweep: parameters vs energy kept")


def spectra_rows(spectra: AdapterSpectra) -> list[dict[str, object]]:
    """One row per module for tables and CSV: shape, rank, sigma_max, energy share, effective/stable rank."""
    total = spectra.total_energy or 1.0
    rows = []
    for s in spectra.spectra:
        layer, kind = split_module_name(s.name)
        rows.append(
            {
                "module": s.name, "layer": layer, "type": kind, "r": s.r, "in": s.in_features,
                "out": s.out_features, "sigma_max": s.sigma_max, "energy_share": s.energy / total,
                "effective_rank": s.effective_rank, "stable_rank": s.stable_rank,
            }
        )  # fmt: skip
    return rows
