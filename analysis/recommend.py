"""A recommended PARA cut: the data-free knee, and the smallest cut within a tolerance of any metric.

`knee_position` needs nothing but the pooled spectrum. `smallest_cut_within` bisects over cut positions with
any evaluation (a callable: cut position -> metric), so task accuracy, held-out perplexity or an evaluation on
the user's own data all plug in the same way. No streamlit, no printing: progress goes through `on_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from analysis.para import ParaIndex, RankAllocation

StepCallback = Callable[[int, int, float], None]
"""on_step(step, total, loss) of one evaluation (the training package's callback)."""


@dataclass(frozen=True)
class CutEvaluator:
    """How to score any PARA cut of one adapter: what `smallest_cut_within` and the app's evaluations call.

    Built by `analysis.training.cut_evaluators` for the bundled runs (task accuracy, held-out perplexity);
    any other evaluation (e.g. on the user's own data) plugs in by building one.
    """

    key: Hashable
    """What the metric depends on besides the cut (adapter fingerprint, data, split): results are cached by
    (key, position, min_rank)."""
    name: str
    """The metric, e.g. "test accuracy" or "held-out perplexity"."""
    higher_is_better: bool
    evaluate: Callable[[RankAllocation, StepCallback | None], float]
    """Scores a cut; reports progress through the callback."""
    reference: float | None = None
    """The uncompressed adapter's metric, when recorded."""
    percent: bool = False
    """Shown as a percentage (accuracy in [0, 1]); tolerances are then in percentage points."""
    description: str = ""
    """One sentence on how a cut is scored, for the page."""
    recorded: Mapping[tuple[int, int], float] = field(default_factory=dict)
    """Evaluations already on record: (cut position, min rank) -> metric."""

    def show(self, value: float) -> str:
        return f"{value:.2%}" if self.percent else f"{value:.3f}"


def knee_position(index: ParaIndex) -> int:
    """The knee of the energy-kept vs parameters-kept curve: the cut farthest above its diagonal.

    Over every cut position p (keep the p largest pooled components) the curve runs from (0, 0), nothing kept,
    to (1, 1), the whole adapter, in fractions of the LoRA parameters (x) and of the energy (y). The knee is the
    p that maximises y - x: there the energy a further parameter buys falls below the adapter's average energy
    per parameter. This is Kneedle's difference curve (Satopää et al., 2011) on a curve that is already
    normalised, taken at its maximum over all positions (no smoothing, no online threshold: the whole curve is
    known exactly). Ties go to the smaller cut.

    Returns:
        p in [0, n_components]; 0 for an adapter with no energy (nothing to keep).

    Example:
        One module of rank 10 with sigma [10, 10, 10, 10, 1, 1, 1, 1, 1, 1]: at p = 4 the cut keeps 40% of the
        parameters and 400/406 = 98.5% of the energy (y - x = 0.585, the maximum), so the knee is 4.
    """
    if index.n_components == 0 or index.total_energy <= 0 or index.n_params_before <= 0:
        return 0
    energy = index.cum_energy / index.total_energy  # (n + 1,)
    params = index.cum_params / index.n_params_before  # (n + 1,)
    return int(np.argmax(energy - params))


@dataclass(frozen=True)
class CutSearch:
    """The result of `smallest_cut_within`: the cut found and every cut evaluated on the way."""

    position: int | None
    """The smallest position found within tolerance; None when not even the largest one searched is."""
    reference: float
    tolerance: float
    evaluated: dict[int, float]
    """position -> metric of every evaluation made."""


def bisection_steps(low: int, high: int, resolution: int = 1) -> int:
    """How many evaluations `smallest_cut_within` makes at most over [low, high] (for a progress bar)."""
    width = max(high - low + 1, 1)  # the first bracket: (low - 1, high]
    return 1 + (math.ceil(math.log2(width / max(resolution, 1))) if width > resolution else 0)


def smallest_cut_within(
    metric: Callable[[int], float],
    *,
    reference: float,
    tolerance: float,
    low: int,
    high: int,
    higher_is_better: bool = True,
    resolution: int = 1,
    on_step: Callable[[int, int, int, float], None] | None = None,
) -> CutSearch:
    """The smallest cut position whose metric is within `tolerance` of `reference`, by bisection.

    A cut at position p is acceptable iff `reference - metric(p) <= tolerance` (higher is better, e.g.
    accuracy) or `metric(p) - reference <= tolerance` (lower is better, e.g. perplexity). The search assumes
    that acceptability is monotone in p (keeping more components never hurts); PARA's cuts are nested, so
    this holds up to evaluation noise, and where it does not the result is *a* boundary, not the smallest.

    Args:
        metric: cut position -> metric (an evaluation of that cut); called at most `bisection_steps` times.
        reference: the uncompressed adapter's metric.
        tolerance: how much worse than `reference` is still acceptable (in the metric's unit), >= 0.
        low, high: the positions searched (0 <= low <= high); `high` is evaluated first.
        higher_is_better: the metric's direction.
        resolution: stop once the bracket is this narrow (in positions); the result is then within
            `resolution` of the smallest acceptable one.
        on_step: called after each evaluation with (step, max steps, position, metric).

    Returns:
        The smallest acceptable position found (None if `high` itself is not acceptable) and all evaluations.

    Raises:
        ValueError: for a negative tolerance, an empty or negative range or a resolution below 1.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    total = bisection_steps(low, high, resolution)
    evaluated: dict[int, float] = {}

    def acceptable(p: int) -> bool:
        value = metric(p)
        evaluated[p] = value
        if on_step is not None:
            on_step(len(evaluated), total, p, value)
        worse = reference - value if higher_is_better else value - reference
        return worse <= tolerance

    if not acceptable(high):
        return CutSearch(None, reference, tolerance, evaluated)
    bad, good = low - 1, high  # good is acceptable, bad is not (low - 1: below the range searched)
    while good - bad > resolution:
        mid = (bad + good) // 2  # in [low, good - 1] while good - bad >= 2
        if acceptable(mid):
            good = mid
        else:
            bad = mid
    return CutSearch(good, reference, tolerance, evaluated)
