"""The PARA page's SVG figures: one cell per module with its rank, types in block order, evaluated points drawn."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np

from analysis.para import ParaSweep, RankAllocation
from analysis.para_svg import EvaluatedCut, rank_grid, rank_map_svg, sweep_svg, viridis

NAMES = [
    f"model.layers.{i}.{kind}" for i in range(2) for kind in ("mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj")
]


def test_rank_map_has_one_cell_per_module_with_its_rank_and_llama_types_in_block_order():
    grid = rank_grid(NAMES)
    assert grid.types == ("q_proj", "v_proj", "down_proj") and grid.layers == ("0", "1")
    ranks = [5, 1, 0, 16, 2, 3]
    svg = rank_map_svg(grid, ranks, [16] * 6, 16)
    ET.fromstring(svg)  # well-formed
    tips = re.findall(r"<title>(layer [^<]*)</title>", svg)
    assert len(tips) == 6 and "layer 1 · down_proj: rank 16 of 16" in tips and "layer 0 · v_proj: rank 0 of 16" in tips
    assert viridis(0.0) == "#440154" and viridis(1.0) == "#fde725"


def test_sweep_draws_the_current_cut_the_knee_and_every_evaluated_cut():
    p = np.linspace(0, 1, 5)
    sweep = ParaSweep(n_kept=np.arange(5), params_fraction=p, energy_kept=np.sqrt(p), rel_error=np.sqrt(1 - p),
                      tau=np.ones(5), mean_rank=p)  # fmt: skip
    cut = RankAllocation(names=("a",), ranks=(1,), original_ranks=(4,), n_kept=1, tau=1.0, relative_tau=0.5,
                         energy_kept=0.5, n_params_before=40, n_params_after=10, mean_rank=1.0,
                         module_energy_kept=(0.5,), module_rel_error=(0.7,), rel_error=0.7, min_rank=0)  # fmt: skip
    points = [EvaluatedCut(0.25, 88.0, "a"), EvaluatedCut(1.0, 89.0, "b"), EvaluatedCut(0.5, 89.5, "c")]
    svg = sweep_svg(sweep, cut, knee=cut, evaluated=points, metric_name="test accuracy (%)")
    ET.fromstring(svg)
    assert svg.count("<circle") == 3 and "current cut: 25.0% params, 50.00% energy" in svg
    assert "recommended (knee)" in svg and "test accuracy (%) (right axis)" in svg
