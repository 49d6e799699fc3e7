"""Paired statistics of two classifiers on the same examples: bootstrap interval and McNemar's test.

Both take per-example correctness (True where the prediction equals the target), paired: item i of A and of
B is the same example. Several seeds pool: each seed is one pair of vectors over the same examples (the
data split is fixed across training seeds), so the bootstrap resamples examples and keeps all seeds of a
drawn example together, and McNemar counts the discordant pairs of every seed. Pure numpy, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Correct = Sequence[bool] | np.ndarray
"""Per-example correctness of one classifier on one seed."""


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired correctness: b = A right and B wrong, c = A wrong and B right."""

    b: int
    c: int
    p_exact: float
    """Two-sided exact binomial p: min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""
    p_mid: float
    """Mid-p: the exact p less the probability of the observed count itself (2 P(X < k) + P(X = k))."""


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B over the same examples, pooled over seeds."""

    difference: float
    """Mean over seeds and examples of correct_A - correct_B (a fraction: 0.02 = 2 points)."""
    low: float
    high: float
    """Percentile bootstrap interval of `difference` at `level`."""
    level: float
    mcnemar: McNemar
    n_examples: int
    n_seeds: int

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0: a difference shown, at this level."""
        return self.low > 0 or self.high < 0


def _binom_half_pmf(n: int) -> np.ndarray:
    """P(X = k) for k = 0..n, X ~ Binomial(n, 1/2), exactly enough in float64 for n in the tens of thousands."""
    k = np.arange(n + 1)
    log_pmf = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k]) - n * math.log(2)
    return np.exp(log_pmf)


def mcnemar(a: Correct | Sequence[Correct], b: Correct | Sequence[Correct]) -> McNemar:
    """McNemar's exact and mid-p test of A against B; lists of per-seed vectors pool their discordant pairs.

    Raises:
        ValueError: when the paired vectors differ in length.
    """
    pairs = _pairs(a, b)
    n_b = int(sum(np.sum(x & ~y) for x, y in pairs))
    n_c = int(sum(np.sum(~x & y) for x, y in pairs))
    n = n_b + n_c
    if n == 0:
        return McNemar(0, 0, 1.0, 1.0)
    pmf = _binom_half_pmf(n)
    k = min(n_b, n_c)
    tail = float(pmf[: k + 1].sum())
    exact = min(1.0, 2 * tail)
    mid = min(1.0, 2 * (tail - 0.5 * float(pmf[k])))
    return McNemar(n_b, n_c, exact, mid)


def _pairs(a: Correct | Sequence[Correct], b: Correct | Sequence[Correct]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalise one vector or a list of per-seed vectors to a list of (A, B) boolean arrays."""
    a_list = [a] if _is_vector(a) else list(a)
    b_list = [b] if _is_vector(b) else list(b)
    if len(a_list) != len(b_list) or not a_list:
        raise ValueError(f"need the same number of seeds on both sides, got {len(a_list)} and {len(b_list)}")
    pairs = []
    for x, y in zip(a_list, b_list, strict=True):
        x, y = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"paired vectors must have the same length, got {x.shape} and {y.shape}")
        pairs.append((x, y))
    return pairs


def _is_vector(x: object) -> bool:
    return (
        isinstance(x, np.ndarray)
        and x.ndim == 1
        or (isinstance(x, Sequence) and (len(x) == 0 or not isinstance(x[0], (Sequence, np.ndarray))))
    )


def paired_difference(
    a: Correct | Sequence[Correct],
    b: Correct | Sequence[Correct],
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """Accuracy difference A - B with a paired percentile bootstrap interval and McNemar's test.

    Args:
        a, b: per-example correctness, one vector or one per seed (every seed on the same examples, in the
            same order: the bootstrap draws examples and keeps their seeds together).
        level: coverage of the interval.
        n_resamples: bootstrap resamples.
        seed: of the resampling (the result is deterministic).

    Raises:
        ValueError: for unequal lengths or seeds on different numbers of examples.
    """
    pairs = _pairs(a, b)
    n = pairs[0][0].shape[0]
    if any(x.shape[0] != n for x, _ in pairs):
        raise ValueError("every seed must be evaluated on the same examples to pool them; got different lengths")
    if n == 0:
        raise ValueError("no examples to compare")
    per_example = np.mean([x.astype(float) - y.astype(float) for x, y in pairs], axis=0)  # (n,) over seeds
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n) examples drawn with replacement
        means[start:stop] = per_example[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(per_example.mean()), float(low), float(high), level, mcnemar(a, b), n, len(pairs))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0
