"""Plotly figure builders for the app (pure: data in, go.Figure out; no streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analysis.naming import forward_order, layer_type_grid, short_type_labels, split_module_name
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


TYPE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
TAU_COLOR = "#d62728"
HIGHLIGHT_COLORS = ("#000000", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd")


def log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Tick values and plain labels for a log axis over [low, high] (both > 0).

    Plotly's own labels on a short log range read "2, 1, 5, 2, 0.1" (digits of minor ticks); these are whole
    numbers: decades over 3.5 decades or more, else 1-2-5 steps (1 to 9 where those give fewer than three).

    Example:
        >>> log_ticks(0.012, 2.3)[1]
        ['0.02', '0.05', '0.1', '0.2', '0.5', '1', '2']
    """
    first, last = int(np.floor(np.log10(low))), int(np.ceil(np.log10(high)))
    for steps in ((1,) if np.log10(high / low) >= 3.5 else (1, 2, 5), range(1, 10)):  # 1..9 where 1-2-5 gives too few
        values = [float(f"{m * 10.0**e:.12g}") for e in range(first, last + 1) for m in steps]
        values = [v for v in values if low * (1 - 1e-9) <= v <= high * (1 + 1e-9)]
        if len(values) >= 3:
            return values, [f"{v:g}" for v in values]
    values = [float(f"{low:.3g}"), float(f"{high:.3g}")]  # a range within one step: its two ends
    return values, [f"{v:g}" for v in values]


def spectra_figure(
    spectra: AdapterSpectra,
    names: Sequence[str] | None = None,
    *,
    color_by: Literal["type", "layer"] = "type",
    highlight: Sequence[str] = (),
    tau: float | None = None,
    tau_label: str = "PARA τ",
    y_range: tuple[float, float] | None = None,
    title: str = "Singular value spectra",
    legend_on_top: bool = False,
) -> go.Figure:
    """Effective singular values per module (one line each) on a log y axis.

    Args:
        spectra: every module's spectrum.
        names: the modules to draw (all when None), in the order given by `spectra`.
        color_by: "type" (one color and one legend entry per module type: a click hides that type) or "layer"
            (a color scale from the first layer to the last).
        highlight: modules drawn wide and on top, each with its own legend entry; the others are dimmed.
        tau: the PARA threshold, drawn as a horizontal line: components above it are kept.
        tau_label: the line's legend text.
        y_range: (low, high) of the y axis, to draw two adapters on one scale (from the data when None).
        title: the figure title.
        legend_on_top: one row of legend entries above the plot (for a half-width figure), not a column beside it.

    Returns:
        One trace per module (hover: module name, layer, type, i, s·σ), then the highlighted ones, then τ.
    """
    wanted = set(names) if names is not None else None
    drawn = [s for s in spectra.spectra if (wanted is None or s.name in wanted) and np.any(s.sigma > 0)]
    parts = {s.name: split_module_name(s.name) for s in drawn}
    types = forward_order(list(dict.fromkeys(kind for _, kind in parts.values())))
    labels = short_type_labels(types)
    layers = sorted({layer for layer, _ in parts.values() if layer is not None})
    bands = _layer_bands(layers)
    chosen = set(highlight)
    # One trace per legend entry (a module type or a band of layers; each highlighted module), its lines joined
    # by gaps: hundreds of modules as hundreds of traces take seconds to build and to draw.
    groups: dict[str, list] = {}
    for s in drawn:
        layer, kind = parts[s.name]
        if s.name in chosen:
            key = s.name
        elif color_by == "layer":
            key = "no layer" if layer is None else next(b for b in bands if bands[b][0] <= layer <= bands[b][1])
        else:
            key = labels[kind]
        groups.setdefault(key, []).append(s)
    fig = go.Figure()
    type_keys = [labels[t] for t in types]
    order = sorted(groups, key=lambda k: (k in chosen, type_keys.index(k) if k in type_keys else 0))
    for i, key in enumerate(order):
        members = groups[key]
        x, y, text = [], [], []
        for s in members:
            positive = s.sigma[s.sigma > 0]
            x += [*range(1, positive.size + 1), None]
            y += [*positive.tolist(), None]
            text += [s.name] * positive.size + [None]
        if key in bands:
            at = 0.5 if len(layers) < 2 else (bands[key][0] - layers[0]) / (layers[-1] - layers[0])
            color = sample_colorscale("Viridis", [at])[0]
        elif key in chosen:
            color = HIGHLIGHT_COLORS[sorted(chosen).index(key) % len(HIGHLIGHT_COLORS)]
        else:
            color = TYPE_COLORS[type_keys.index(key) % len(TYPE_COLORS)] if key in type_keys else "#7f7f7f"
        is_chosen = key in chosen
        fig.add_trace(
            go.Scatter(
                x=x, y=y, text=text, mode="lines", name=key, connectgaps=False,
                line={"width": 3.2 if is_chosen else 1.2, "color": color},
                opacity=1.0 if is_chosen or not chosen else 0.25,
                hovertemplate="<b>%{text}</b><br>component %{x}: s·σ = %{y:.4g}<extra></extra>",
            )
        )  # fmt: skip
    values = np.concatenate([s.sigma[s.sigma > 0] for s in drawn]) if drawn else np.array([1.0])
    low, high = float(values.min()), float(values.max())
    r_max = max((s.sigma.size for s in drawn), default=1)
    if tau is not None and tau > 0:
        fig.add_trace(
            go.Scatter(
                x=[1, r_max], y=[tau, tau], mode="lines", name=tau_label,
                line={"color": TAU_COLOR, "dash": "dash", "width": 2.5},
                hovertemplate=f"{tau_label}<br>τ = {tau:.4g}: components above are kept<extra></extra>",
            )
        )  # fmt: skip
        low, high = min(low, tau), max(high, tau)
    if y_range is not None:
        low, high = y_range
    ticks, text = log_ticks(low, high)
    pad = 0.04 * max(np.log10(high / low), 0.5)
    fig.update_yaxes(
        type="log", title="effective singular value s·σ", tickvals=ticks, ticktext=text,
        range=[np.log10(low) - pad, np.log10(high) + pad],
    )  # fmt: skip
    fig.update_xaxes(
        title="component i (largest first)", range=[0.5, r_max + 0.5], tick0=0,
        dtick=1 if r_max <= 12 else 2 if r_max <= 24 else 5 if r_max <= 64 else 10,
    )  # fmt: skip
    fig.update_layout(
        legend={"title": {"text": "module type" if color_by == "type" else "layers"}}, hovermode="closest"
    )
    return _layout(fig, title)


def _layer_bands(layers: Sequence[int], n_bands: int = 10) -> dict[str, tuple[int, int]]:
    """At most `n_bands` consecutive bands of the sorted `layers`, by label: "layer 3" or "layers 0-7"."""
    size = max(1, -(-len(layers) // n_bands))  # ceil
    chunks = [layers[i : i + size] for i in range(0, len(layers), size)]
    return {(f"layer {c[0]}" if len(c) == 1 else f"layers {c[0]}-{c[-1]}"): (c[0], c[-1]) for c in chunks}


HEATMAP_TEXT_MAX_LAYERS = 16  # above this, cells are too narrow for their numbers: hover shows them


def module_heatmap_figure(
    values: Mapping[str, float],
    title: str,
    colorbar: str,
    *,
    text_format: str = ".2g",
    colorscale: str = "Viridis",
    z_range: tuple[float, float] | None = None,
    z_mid: float | None = None,
) -> go.Figure:
    """Module type x layer heat map of one number per module (blank where a type is absent).

    Types are rows and layers columns, so the figure keeps one height from 6 layers to 80: numbers are
    written in the cells up to HEATMAP_TEXT_MAX_LAYERS layers, and the layer ticks thin out beyond 30.
    `z_range` fixes the color scale's ends (e.g. 0-90 degrees); `z_mid` centres a diverging scale (0 for a
    difference).
    """
    layers, types = layer_type_grid(list(values))
    types = forward_order(types)
    grid = np.full((len(types), len(layers)), np.nan)  # (n_types, n_layers)
    names = np.full((len(types), len(layers)), "", dtype=object)
    for name, value in values.items():
        layer, kind = split_module_name(name)
        grid[types.index(kind), layers.index(layer)] = value
        names[types.index(kind), layers.index(layer)] = name
    labels = short_type_labels(types)
    x = ["—" if layer is None else str(layer) for layer in layers]
    show_text = len(layers) <= HEATMAP_TEXT_MAX_LAYERS
    fig = go.Figure(
        go.Heatmap(
            z=grid, x=x, y=[labels[t] for t in types], customdata=names, colorscale=colorscale, xgap=1, ygap=1,
            zmin=z_range[0] if z_range else None, zmax=z_range[1] if z_range else None, zmid=z_mid,
            colorbar={"title": colorbar, "thickness": 12}, texttemplate=f"%{{z:{text_format}}}" if show_text else None,
            hovertemplate="%{customdata}<br>layer %{x} · %{y}<br>" + colorbar + " %{z:.4g}<extra></extra>",
        )
    )  # fmt: skip
    step = 1 if len(layers) <= 30 else 5 if len(layers) <= 100 else 10
    fig.update_xaxes(title="layer", type="category", tickvals=x[::step], tickangle=0)
    fig.update_yaxes(title="", type="category", autorange="reversed")
    return _layout(fig, title, height=110 + 40 * len(types))


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
