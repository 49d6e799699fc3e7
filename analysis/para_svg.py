"""The PARA page's live figures as plain SVG: the rank heat map and the sweep, redrawn on every slider move.

Why not plotly here: measured in Chromium on this 2-core machine (bench/app_browser.py), each plotly chart the
slider redraws costs 0.5-0.7 s in the browser, while an SVG string costs about what a metric does. The other
pages keep plotly. Hover text comes from SVG `<title>` elements (the browser's tooltip). Pure (data in, SVG
text out); no streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from analysis.naming import TYPE_LABELS, layer_type_grid, split_module_name, type_label
from analysis.para import ParaSweep, RankAllocation

VIRIDIS = [
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
]
CURRENT_COLOR = "#d62728"
KNEE_COLOR = "#ff7f0e"
EVAL_COLOR = "#2ca02c"
ENERGY_COLOR = "#1f77b4"
ERROR_COLOR = "#9467bd"
HEIGHT = 340  # px: both figures fit beside each other above the fold at 1280x800
LLAMA_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FONT = 'font-family="Source Sans Pro, Inter, system-ui, sans-serif"'


@dataclass(frozen=True)
class RankGrid:
    """Where each module sits in the module-type x layer grid (types as rows, layers as columns)."""

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
    value, attention-out, intermediate, output, as on the Compare page), Llama's as in a block (q, k, v, o,
    gate, up, down), others as first seen."""
    layers, kinds = layer_type_grid(names)
    kinds = [k for k in TYPE_LABELS if k in kinds] + [k for k in kinds if k not in TYPE_LABELS]
    rank = {name: i for i, name in enumerate(LLAMA_ORDER)}
    kinds.sort(key=lambda k: rank.get(k.rsplit(".", 1)[-1], len(rank)))  # stable: the others keep their order
    parts = [split_module_name(n) for n in names]
    return RankGrid(
        layers=tuple("—" if x is None else str(x) for x in layers),
        types=tuple(_short_types(kinds)),
        rows=np.array([kinds.index(kind) for _, kind in parts], dtype=np.int64),
        cols=np.array([layers.index(layer) for layer, _ in parts], dtype=np.int64),
    )


def viridis(t: float) -> str:
    """Viridis at t in [0, 1] (linear between its 10 stops)."""
    x = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    mix = [round(int(a[k : k + 2], 16) * (1 - (x - i)) + int(b[k : k + 2], 16) * (x - i)) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in mix)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(label)}" {FONT} font-size="12">' + "".join(body) + "</svg>")  # fmt: skip


def _text(x: float, y: float, text: str, **attrs: object) -> str:
    extra = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" {extra}>{escape(text)}</text>'


def rank_map_svg(grid: RankGrid, ranks: Sequence[int], original_ranks: Sequence[int], max_rank: int,
                 *, width: int = 480) -> str:  # fmt: skip
    """Kept rank per module as a type x layer heat map (Viridis, 0..max_rank), the rank in each cell that fits it."""
    left, right, top, bottom = 96, 58, 30, 34
    n_rows, n_cols = len(grid.types), len(grid.layers)
    cell_w = (width - left - right) / max(n_cols, 1)
    cell_h = (HEIGHT - top - bottom) / max(n_rows, 1)
    scale = max(max_rank, 1)
    body = [_text(4, 18, "Kept rank per module (type × layer)", font_size=14, font_weight=600, fill="#31333f")]
    show_text = cell_w >= 16 and cell_h >= 13
    for m, (r, c) in enumerate(zip(grid.rows.tolist(), grid.cols.tolist(), strict=True)):
        k = int(ranks[m])
        x, y = left + c * cell_w, top + r * cell_h
        fill = viridis(k / scale)
        tip = f"layer {grid.layers[c]} · {grid.types[r]}: rank {k} of {original_ranks[m]}"
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w - 1:.1f}" height="{cell_h - 1:.1f}" '
                    f'fill="{fill}"><title>{escape(tip)}</title></rect>')  # fmt: skip
        if show_text:
            ink = "#000" if k / scale > 0.6 else "#fff"
            body.append(_text(x + cell_w / 2 - 0.5, y + cell_h / 2 + 4, str(k), text_anchor="middle", fill=ink,
                              font_size=11, pointer_events="none"))  # fmt: skip
    for r, label in enumerate(grid.types):
        body.append(_text(left - 6, top + (r + 0.5) * cell_h + 4, label, text_anchor="end", fill="#31333f"))
    every = max(1, int(np.ceil(n_cols / max((width - left - right) / 22, 1))))  # about 22 px per shown label
    for c, label in enumerate(grid.layers):
        if c % every == 0:
            body.append(_text(left + (c + 0.5) * cell_w, HEIGHT - bottom + 14, label, text_anchor="middle",
                              fill="#555"))  # fmt: skip
    body.append(_text(left + (width - left - right) / 2, HEIGHT - 4, "layer", text_anchor="middle", fill="#555"))
    bar_x, bar_h = width - right + 12, HEIGHT - top - bottom
    stops = "".join(f'<stop offset="{i / 9:.3f}" stop-color="{c}"/>' for i, c in enumerate(reversed(VIRIDIS)))
    body.append(f'<defs><linearGradient id="rank-scale" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient></defs>')
    body.append(f'<rect x="{bar_x}" y="{top}" width="12" height="{bar_h - 1:.1f}" fill="url(#rank-scale)"/>')
    for value, y in ((scale, top + 9), (scale / 2, top + bar_h / 2 + 4), (0, top + bar_h - 2)):
        body.append(_text(bar_x + 16, y, f"{value:g}", fill="#555", font_size=11))
    body.append(_text(bar_x - 2, top - 6, "rank", fill="#555", font_size=11))
    return _svg(width, HEIGHT, body, "Kept rank per module")


@dataclass(frozen=True)
class EvaluatedCut:
    """A cut whose metric was measured, for the sweep: where it is and what it scored."""

    params_fraction: float
    value: float
    label: str
    """Tooltip text, e.g. "25.0% params: test accuracy 89.86"."""


def evaluated_cuts(results: Mapping[float, float], label: str, fmt: str = "{:.2f}") -> list[EvaluatedCut]:
    """{params fraction: metric} -> points for `sweep_svg`, tooltip "<params>% params: <label> <value>"."""
    return [EvaluatedCut(f, v, f"{100 * f:.1f}% params: {label} {fmt.format(v)}") for f, v in results.items()]


def metric_axis_range(values: Sequence[float], reference: float | None, *, pad: float = 0.15) -> tuple[float, float]:
    """A right-axis range around the evaluated values and the reference, padded so points do not sit on edges."""
    points = [*values, *([reference] if reference is not None else [])]
    low, high = min(points), max(points)
    span = max(high - low, abs(high) * 0.01, 1e-9)
    return low - pad * span, high + pad * span


def _polyline(xs: Sequence[float], ys: Sequence[float], color: str, dash: str = "") -> str:
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"{dashed}/>'


def _diamond(x: float, y: float, r: float, color: str, tip: str) -> str:
    return (f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}" '
            f'fill="{color}" stroke="#fff"><title>{escape(tip)}</title></polygon>')  # fmt: skip


def _star(x: float, y: float, r: float, color: str, tip: str) -> str:
    angles = np.arange(10) * np.pi / 5 - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    points = " ".join(f"{x + q * np.cos(a):.1f},{y + q * np.sin(a):.1f}" for q, a in zip(radii, angles, strict=True))
    return f'<polygon points="{points}" fill="{color}" stroke="#fff"><title>{escape(tip)}</title></polygon>'


def sweep_svg(
    sweep: ParaSweep,
    current: RankAllocation,
    *,
    knee: RankAllocation | None = None,
    evaluated: Sequence[EvaluatedCut] = (),
    metric_name: str = "",
    metric_range: tuple[float, float] | None = None,
    width: int = 480,
) -> str:
    """Energy kept and relative error (%) against LoRA parameters kept (%), with the current cut (red diamond),
    the recommended knee (orange star) and evaluated cuts (green, on the right axis in the metric's unit)."""
    left, right, top, bottom = 40, 52 if evaluated else 14, 30, 38
    plot_w, plot_h = width - left - right, HEIGHT - top - bottom

    def px(v: float) -> float:
        return left + plot_w * v / 100

    def py(v: float) -> float:
        return top + plot_h * (1 - v / 100)

    body = [_text(4, 18, "PARA sweep: parameters vs energy kept", font_size=14, font_weight=600, fill="#31333f")]
    for v in (0, 25, 50, 75, 100):
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
        body.append(_text(left - 6, py(v) + 4, f"{v}", text_anchor="end", fill="#555", font_size=11))
        body.append(_text(px(v), top + plot_h + 14, f"{v}", text_anchor="middle", fill="#555", font_size=11))
    body.append(_text(left + plot_w / 2, HEIGHT - 6, "LoRA parameters kept (%)", text_anchor="middle", fill="#555"))
    body.append(_text(12, top + plot_h / 2, "%", text_anchor="middle", fill="#555"))
    xs = [px(100 * v) for v in sweep.params_fraction]
    body.append(_polyline(xs, [py(100 * v) for v in sweep.energy_kept], ENERGY_COLOR))
    body.append(_polyline(xs, [py(100 * v) for v in sweep.rel_error], ERROR_COLOR, "4 3"))
    legend = [("energy kept", ENERGY_COLOR, ""), ("relative error", ERROR_COLOR, "4 3")]
    if evaluated:
        low, high = metric_range or metric_axis_range([e.value for e in evaluated], None)

        def pm(v: float) -> float:
            return top + plot_h * (1 - (v - low) / (high - low))

        for v in np.linspace(low, high, 5)[1:-1]:
            body.append(_text(left + plot_w + 6, pm(v) + 4, f"{v:.4g}", fill=EVAL_COLOR, font_size=11))
        points = sorted(evaluated, key=lambda e: e.params_fraction)
        body.append(_polyline([px(100 * e.params_fraction) for e in points], [pm(e.value) for e in points], EVAL_COLOR,
                              "2 3"))  # fmt: skip
        for e in points:
            body.append(f'<circle cx="{px(100 * e.params_fraction):.1f}" cy="{pm(e.value):.1f}" r="5" '
                        f'fill="{EVAL_COLOR}" stroke="#fff"><title>{escape(e.label)}</title></circle>')  # fmt: skip
        legend.append((f"{metric_name} (right axis)", EVAL_COLOR, "2 3"))
    if knee is not None:
        tip = f"recommended (knee): {100 * knee.params_fraction:.1f}% params, {100 * knee.energy_kept:.2f}% energy"
        body.append(_star(px(100 * knee.params_fraction), py(100 * knee.energy_kept), 9, KNEE_COLOR, tip))
        legend.append(("recommended (knee)", KNEE_COLOR, "star"))
    tip = f"current cut: {100 * current.params_fraction:.1f}% params, {100 * current.energy_kept:.2f}% energy"
    body.append(_diamond(px(100 * current.params_fraction), py(100 * current.energy_kept), 8, CURRENT_COLOR, tip))
    legend.append(("current cut", CURRENT_COLOR, "diamond"))
    lx, ly = left + plot_w * 0.42, top + plot_h * 0.4  # right of the middle: the curves run along the edges there
    for i, (name, color, kind) in enumerate(legend):
        y = ly + 16 * i
        if kind == "star":
            body.append(_star(lx + 8, y - 4, 6, color, name))
        elif kind == "diamond":
            body.append(_diamond(lx + 8, y - 4, 5, color, name))
        else:
            body.append(_polyline([lx, lx + 16], [y - 4, y - 4], color, kind))
        body.append(_text(lx + 22, y, name, fill="#31333f", font_size=11))
    return _svg(width, HEIGHT, body, "PARA sweep: parameters vs energy kept")
