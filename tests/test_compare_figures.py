"""Comparison figures: traces, axes and data lengths; rank maps share one color scale."""

from __future__ import annotations

import math

import pytest

from analysis.compare_figures import (
    AccuracyPoint,
    RankPair,
    accuracy_budget_figure,
    accuracy_range,
    group_totals,
    rank_maps_figure,
    rank_scatter_figure,
    totals_figure,
)

PARA = {
    "bert.encoder.layer.0.attention.self.query": 12,
    "bert.encoder.layer.0.intermediate.dense": 3,
    "bert.encoder.layer.1.attention.self.query": 5,
    "bert.encoder.layer.1.intermediate.dense": 0,
}
RUN = dict.fromkeys(PARA, 5)


def test_rank_maps_share_one_color_scale_in_canonical_type_order():
    fig = rank_maps_figure({"PARA": PARA, "ALoRA": RUN})
    assert len(fig.data) == 2 and all(t.coloraxis == "coloraxis" for t in fig.data)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 12
    assert list(fig.data[0].x) == ["query", "intermediate"] and list(fig.data[0].y) == ["0", "1"]
    assert fig.data[0].z[0][0] == 12 and fig.data[1].z[1][1] == 5
    assert [a.text for a in fig.layout.annotations] == ["PARA", "ALoRA"]


def test_group_totals_and_totals_figure():
    assert group_totals(PARA, by="module type") == {"query": 17, "intermediate": 3}
    assert group_totals(PARA, by="layer") == {"0": 15, "1": 5}
    fig = totals_figure(
        {"PARA": {"intermediate": 3, "query": 17}, "ALoRA": {"query": 10, "intermediate": 10}},
        by="module type", title="t",
    )  # fmt: skip
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["query", "intermediate"]  # canonical order
    assert list(fig.data[0].y) == [17, 3] and fig.layout.xaxis.title.text == "module type"


def test_rank_scatter_has_a_diagonal_and_one_trace_per_run():
    names = tuple(PARA)
    pairs = [
        RankPair("alora-r8", "alora", names, tuple(PARA.values()), (5, 5, 5, 5), math.nan),
        RankPair("adalora-r8", "adalora", names, tuple(PARA.values()), (9, 1, 4, 0), 0.8),
    ]
    fig = rank_scatter_figure(pairs)
    assert len(fig.data) == 3 and list(fig.data[0].x) == [0, 12]
    assert "n/a" in fig.data[1].name and "0.80" in fig.data[2].name and len(fig.data[2].x) == 4


def test_accuracy_budget_figure_sorts_the_curve_and_adds_points():
    curve = [AccuracyPoint("PARA 100%", "para", 1.0, 0.9), AccuracyPoint("PARA 10%", "para", 0.1, 0.88)]
    points = [AccuracyPoint("ALoRA", "alora", 0.25, 0.85)]
    fig = accuracy_budget_figure(curve, points, baseline=0.23)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [10.0, 100.0] and list(fig.data[0].y) == [88.0, 90.0]
    assert fig.data[1].x == (25.0,) and fig.layout.xaxis.type == "log"
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    low, high = fig.layout.yaxis.range
    assert 80 < low < 85 and 90 < high < 95  # zoomed to the runs (85-90%), not 20-90%
    assert not fig.layout.shapes and "majority class: 23.0% (below" in fig.layout.annotations[0].text
    near = accuracy_budget_figure(curve, points, baseline=0.86)  # inside the range: drawn as a line
    assert len(near.layout.shapes) == 1 and near.layout.yaxis.range == fig.layout.yaxis.range


def test_accuracy_range_is_the_data_padded_and_at_least_two_points_wide():
    assert accuracy_range([]) == (0.0, 100.0)
    low, high = accuracy_range([0.849, 0.899])
    assert low == pytest.approx(84.9 - 1.05) and high == pytest.approx(89.9 + 1.05)
    low, high = accuracy_range([0.5, 0.5])
    assert high - low == pytest.approx(2 * (0.15 * 2 + 0.3))
    assert accuracy_range([0.999, 1.0])[1] == 100.0
