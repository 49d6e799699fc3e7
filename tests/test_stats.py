"""Paired bootstrap and McNemar on hand-made prediction vectors with known answers."""

from __future__ import annotations

import pytest

from analysis.stats import mcnemar, mean_sd, paired_difference


def vectors(b: int, c: int, both: int = 10, neither: int = 3) -> tuple[list[bool], list[bool]]:
    """A right / B wrong on b examples, A wrong / B right on c, both right on `both`, both wrong on `neither`."""
    a = [True] * b + [False] * c + [True] * both + [False] * neither
    other = [False] * b + [True] * c + [True] * both + [False] * neither
    return a, other


@pytest.mark.parametrize(
    ("b", "c", "exact", "mid"),
    [
        (1, 6, 16 / 128, 9 / 128),  # 2 (C(7,0) + C(7,1)) / 2^7; mid-p 2 (1 + 7/2) / 2^7
        (6, 1, 16 / 128, 9 / 128),  # symmetric
        (0, 5, 2 / 32, 1 / 32),
        (2, 2, 1.0, 1.0),
        (0, 0, 1.0, 1.0),  # no discordant pair: nothing shown
    ],
)
def test_mcnemar_known_answers(b, c, exact, mid):
    result = mcnemar(*vectors(b, c))
    assert (result.b, result.c) == (b, c)
    assert result.p_exact == pytest.approx(exact, abs=1e-12) and result.p_mid == pytest.approx(mid, abs=1e-12)


def test_mcnemar_pools_discordant_pairs_over_seeds():
    seed1, seed2 = vectors(1, 3), vectors(0, 3)
    pooled = mcnemar([seed1[0], seed2[0]], [seed1[1], seed2[1]])
    assert (pooled.b, pooled.c) == (1, 6) and pooled.p_exact == pytest.approx(0.125)


def test_bootstrap_degenerate_differences_are_exact():
    a, b = [True] * 50, [False] * 50
    assert (paired_difference(a, b).low, paired_difference(a, b).high) == (1.0, 1.0)
    same = paired_difference(a, a)
    assert (same.difference, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)


def test_bootstrap_interval_matches_the_binomial_standard_error():
    # per-example difference is 1 on half the examples, 0 on the rest: mean 0.5, SE 0.5 / sqrt(400) = 0.025
    a, b = [True] * 400, [i % 2 == 0 for i in range(400)]
    result = paired_difference(a, b)
    assert result.difference == 0.5 and result.excludes_zero
    assert result.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert result.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    assert result.mcnemar.b == 200 and result.mcnemar.c == 0 and result.mcnemar.p_exact < 1e-50


def test_bootstrap_keeps_the_seeds_of_an_example_together():
    # seed 1: A beats B on examples 0-19; seed 2: B beats A on the same examples. Per example the seeds
    # cancel, so a bootstrap over examples gives exactly 0 (resampling seeds independently would not).
    n = 200
    a1, b1 = [i < 20 for i in range(n)], [False] * n
    a2, b2 = [False] * n, [i < 20 for i in range(n)]
    result = paired_difference([a1, a2], [b1, b2])
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.n_seeds == 2 and result.n_examples == n and result.mcnemar.p_exact == 1.0


def test_small_gap_on_few_examples_is_not_significant():
    a, b = vectors(3, 1, both=100, neither=20)  # +2 examples of 124
    result = paired_difference(a, b)
    assert result.difference == pytest.approx(2 / 124)
    assert result.low < 0 < result.high and not result.excludes_zero and result.mcnemar.p_exact == pytest.approx(0.625)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="same number of seeds"):
        mcnemar([[True], [False]], [[True]])
    with pytest.raises(ValueError, match="same examples"):
        paired_difference([[True], [True, False]], [[True], [True, True]])
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_sd([5.0]) == (5.0, 0.0)
