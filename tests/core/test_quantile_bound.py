"""The relative rules' quantile bound: a binary search over the sketch's edges, equal to the full scan; the
recall bounds' faster bisection, equal to the code before."""

from __future__ import annotations

import math

import numpy as np
import pytest

from canary.core.evidence import _BISECT_STEPS, BET_FRACTIONS, rate_lower_bound, rate_upper_bound
from canary.core.ruletest import quantile_bound
from canary.core.sketch import QuantileSketch


def scanned_bound(sketch: QuantileSketch, level: float, alpha: float, *, upper: bool) -> float | None:
    """The definition, edge by edge: each edge's bisected rate bound against the tail (the code before)."""
    n = sketch.count
    if n == 0:
        return None
    tail = 1.0 - level
    d = sketch.to_dict()
    gamma = (1.0 + sketch.relative_accuracy) / (1.0 - sketch.relative_accuracy)
    # The code before started this count at n, so the zero bucket's values counted as above every edge;
    # they are above none (a 0 ms answer is not slower than anything).
    above = n - d["zero"]
    candidates: list[tuple[float, int]] = [(0.0, above)]
    for index, count in d["bins"]:
        above -= count
        candidates.append((gamma**index, above))
    if upper:
        return next((edge for edge, k in candidates if rate_upper_bound(n, k, alpha) <= tail), None)
    best = None
    for edge, k in candidates:
        if rate_lower_bound(n, k, alpha) >= tail:
            best = edge
    return best


@pytest.mark.parametrize("seed", range(6))
def test_binary_search_equals_the_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (1, 3, 20, 30, 270, 3000):
        sketch = QuantileSketch()
        values = np.exp(rng.normal(np.log(400.0), rng.uniform(0.05, 1.0), n))
        values[rng.random(n) < 0.05] = 0.0  # some zero-latency answers: the zero bucket
        sketch.add_many(values)
        for level in (0.5, 0.9, 0.95, 0.99):
            for alpha in (0.005, 0.05):
                for upper in (True, False):
                    assert quantile_bound(sketch, level, alpha, upper=upper) == scanned_bound(
                        sketch, level, alpha, upper=upper
                    ), (n, level, alpha, upper)


def test_empty_sketch_has_no_bound() -> None:
    assert quantile_bound(QuantileSketch(), 0.95, 0.005, upper=True) is None
    assert quantile_bound(QuantileSketch(), 0.95, 0.005, upper=False) is None


def reference_mixture(hist: dict[int, int], m: float, *, above: bool) -> float:
    """The betting mixture as first written (arrays rebuilt per call, np.mean; the values in bin order, as the
    dense histograms hold them): the bounds bisect a faster form of it that must give the very same figures."""
    if (above and m >= 1.0) or (not above and m <= 0.0):
        return float("-inf")
    if (above and m < 0.0) or (not above and m > 1.0):
        return float("inf")
    ordered = sorted(hist.items())
    xs = np.fromiter((b for b, _ in ordered), dtype=np.float64, count=len(hist)) / 1000
    counts = np.fromiter((c for _, c in ordered), dtype=np.float64, count=len(hist))
    gain = xs - m if above else m - xs
    max_bet = (1.0 / m if m > 0.0 else np.inf) if above else (1.0 / (1.0 - m) if m < 1.0 else np.inf)
    if not np.isfinite(max_bet):
        max_bet = 1e6
    lams = np.asarray(BET_FRACTIONS) * max_bet
    with np.errstate(divide="ignore"):
        logs = (np.log1p(np.maximum(lams[:, None] * gain[None, :], -1.0)) * counts[None, :]).sum(axis=1)
    top = float(np.max(logs))
    if top == float("-inf"):
        return top
    return top + math.log(float(np.mean(np.exp(logs - top))))


def reference_crossing(hist: dict[int, int], alpha: float, *, upper: bool) -> float:
    threshold = float(np.log(1.0 / alpha))
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2.0
        if upper:  # the smallest m rejected as too high
            if reference_mixture(hist, mid, above=False) >= threshold:
                hi = mid
            else:
                lo = mid
        elif reference_mixture(hist, mid, above=True) >= threshold:
            lo = mid
        else:
            hi = mid
    return hi if upper else lo


def test_recall_bounds_are_unchanged_by_the_faster_bisection() -> None:
    from canary.core.evidence import Histogram, log_wealth_above, log_wealth_below, mean_lower_bound, mean_upper_bound

    rng = np.random.default_rng(3)
    for _ in range(300):
        bins = int(rng.integers(1, 12))
        keys = rng.choice(1001, size=bins, replace=False)
        hist = {int(k): int(c) for k, c in zip(keys, rng.integers(1, 400, bins), strict=True)}
        dense = Histogram.of(hist.items())
        for alpha in (0.005, 0.01):
            assert mean_upper_bound(dense, alpha) == reference_crossing(hist, alpha, upper=True)
            assert mean_lower_bound(dense, alpha) == reference_crossing(hist, alpha, upper=False)
        m = float(rng.random())
        assert log_wealth_above(dense, m) == reference_mixture(hist, m, above=True)
        assert log_wealth_below(dense, m) == reference_mixture(hist, m, above=False)
