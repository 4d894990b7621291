"""The evidence math: closed forms against brute force, bounds against tests, validity by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from canary.core.evidence import (
    RECALL_BINS,
    histogram_mean,
    log_e_above,
    log_e_below,
    log_wealth_above,
    log_wealth_below,
    mean_lower_bound,
    mean_upper_bound,
    rate_lower_bound,
    rate_upper_bound,
    recall_bin,
)


def _brute_above(n: int, k: int, q: float) -> float:
    def lr(p: float) -> float:
        return math.exp(k * math.log(p / q) + (n - k) * math.log((1 - p) / (1 - q)))

    value, _ = integrate.quad(lr, q, 1.0, limit=200, points=[min(0.999, k / n + 1e-9)] if k else None)
    return math.log(value / (1 - q))


@pytest.mark.parametrize(
    ("n", "k", "q"), [(30, 8, 0.05), (30, 0, 0.05), (10, 10, 0.05), (200, 30, 0.1), (60, 1, 0.01), (5, 2, 0.5)]
)
def test_bernoulli_mixture_matches_numerical_integral(n: int, k: int, q: float) -> None:
    assert log_e_above(n, k, q) == pytest.approx(_brute_above(n, k, q), rel=1e-6, abs=1e-6)


def test_mirror_and_edge_cases() -> None:
    assert log_e_below(30, 2, 0.05) == pytest.approx(log_e_above(30, 28, 0.95))
    assert log_e_above(0, 0, 0.05) == 0.0  # no data, no evidence
    with pytest.raises(ValueError, match="0 <= k <= n"):
        log_e_above(3, 4, 0.05)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        log_e_above(3, 1, 0.0)


@pytest.mark.parametrize(
    ("n", "k", "needed_fail"),
    [
        # The exceedances out of 30 that make "p95 <= T" fail at 99 %: 8 (7 is short of ln 100 = 4.61).
        (30, 7, False),
        (30, 8, True),
        (3, 3, True),  # three requests all slower than T: already significant
        (3, 2, False),
    ],
)
def test_how_much_evidence_fails_a_p95_rule(n: int, k: int, needed_fail: bool) -> None:
    assert (log_e_above(n, k, 0.05) >= math.log(100)) is needed_fail


@pytest.mark.parametrize(("n", "k"), [(30, 0), (30, 5), (100, 3), (1000, 60), (10, 10)])
def test_rate_bounds_bracket_the_estimate_and_invert_the_test(n: int, k: int) -> None:
    lo, hi = rate_lower_bound(n, k, 0.01), rate_upper_bound(n, k, 0.01)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if lo > 1e-6:  # the bound is where the test crosses 1/alpha
        assert log_e_above(n, k, lo * 0.999) >= math.log(100) - 1e-6
        assert log_e_above(n, k, min(lo * 1.01, 0.999)) < math.log(100) + 1e-6


def test_bernoulli_test_is_anytime_valid_at_the_boundary() -> None:
    """P(ever crossing 1/alpha) <= alpha when the true rate is exactly the threshold (worst case),
    looked at after every 30 samples for 3000 samples."""
    rng = np.random.default_rng(7)
    runs, looks, per_look, q = 400, 100, 30, 0.05
    crossed = 0
    for _ in range(runs):
        k = np.cumsum(rng.binomial(per_look, q, size=looks))
        n = per_look * np.arange(1, looks + 1)
        if any(log_e_above(int(nn), int(kk), q) >= math.log(100) for nn, kk in zip(n, k, strict=True)):
            crossed += 1
    assert crossed / runs <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / runs)


def _hist(values: np.ndarray) -> dict[int, int]:
    bins, counts = np.unique(np.rint(values * RECALL_BINS).astype(int), return_counts=True)
    return dict(zip(bins.tolist(), counts.tolist(), strict=True))


def test_betting_is_anytime_valid_at_the_boundary() -> None:
    rng = np.random.default_rng(11)
    runs, looks, per_look, m = 300, 40, 30, 0.3
    crossed = 0
    for _ in range(runs):
        # A symmetric distribution inside [0, 1] (no clipping), mean exactly m: the null's boundary.
        values = rng.uniform(m - 0.25, m + 0.25, size=looks * per_look)
        for t in range(1, looks + 1):
            if log_wealth_below(_hist(values[: t * per_look]), m - 0.001) >= math.log(100):
                crossed += 1
                break
    assert crossed / runs <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / runs)


def test_betting_detects_a_recall_drop_and_bounds_bracket_the_mean() -> None:
    rng = np.random.default_rng(3)
    hist = _hist(np.clip(rng.normal(0.25, 0.15, size=360), 0, 1))
    assert log_wealth_below(hist, 0.30) >= math.log(100)  # 0.25 vs 0.30 within 12 windows of 30
    mean = histogram_mean(hist)
    assert mean is not None
    assert mean_lower_bound(hist, 0.01) <= mean <= mean_upper_bound(hist, 0.01) < 0.30
    assert log_wealth_above(hist, 0.30) < 0  # no evidence the other way


def test_betting_edges() -> None:
    assert log_wealth_below({}, 0.3) == 0.0
    assert log_wealth_below({recall_bin(0.5): 3}, 0.0) == -math.inf  # no mean is below 0
    assert log_wealth_above({recall_bin(0.5): 3}, 1.0) == -math.inf
    assert mean_upper_bound({}, 0.01) == 1.0 and mean_lower_bound({}, 0.01) == 0.0
    assert recall_bin(0.3333) == 333
