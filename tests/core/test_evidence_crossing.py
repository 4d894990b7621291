"""The bounds' faster bisection (``canary.core.evidence._crossing``) returns exactly what the plain bisection does.

The plain one is written out here as the reference: ``_BISECT_STEPS`` halvings of ``[lo, hi]`` by the monotone
test. Every rate and mean bound of seeded random data — counts large and small, near 0 and near n, fractional
(clustered traffic tempers them), histograms of one to many bins — must be bit-identical, and the faster one
must evaluate the score fewer times."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np

from canary.core import evidence
from canary.core.evidence import (
    _BISECT_STEPS,
    Histogram,
    _crossing,
    _wealth_above,
    _wealth_below,
    log_e_above,
    mean_lower_bound,
    mean_upper_bound,
    rate_lower_bound,
    rate_upper_bound,
)


def plain(score: Callable[[float], float], threshold: float, lo: float, hi: float, *, rejected_below: bool) -> float:
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2.0
        if (score(mid) >= threshold) == rejected_below:
            lo = mid
        else:
            hi = mid
    return lo if rejected_below else hi


def test_rate_bounds_are_the_plain_bisections() -> None:
    rng = random.Random(11)
    calls = [0, 0]
    for _ in range(3000):
        n = rng.choice([rng.randint(1, 40), rng.randint(1, 3000), rng.random() * 200 + 0.01])
        k = rng.choice([0.0, n, rng.random() * n, float(rng.randint(0, int(n)))])
        alpha = rng.choice([0.01, 0.005, 0.05, 0.002])
        threshold = math.log(1.0 / alpha)
        hi = 1.0 - 1e-12
        if n == 0 or log_e_above(n, k, 1e-12) < threshold or log_e_above(n, k, hi) >= threshold:
            continue

        def score(q: float, n: float = n, k: float = k) -> float:
            calls[0] += 1
            return log_e_above(n, k, q)

        fast = _crossing(score, threshold, 1e-12, hi, rejected_below=True)
        before = calls[0]
        slow = plain(score, threshold, 1e-12, hi, rejected_below=True)
        calls[1] += calls[0] - before
        calls[0] = before
        assert fast == slow, (n, k, alpha)
        assert rate_lower_bound(n, k, alpha) == slow
        assert rate_upper_bound(n, n - k, alpha) == 1.0 - slow
    assert calls[1] > 0 and calls[0] < 0.6 * calls[1]  # fewer evaluations: the point of it


def test_mean_bounds_are_the_plain_bisections() -> None:
    rng = np.random.default_rng(12)
    calls = {"fast": 0, "plain": 0}
    for _ in range(600):
        bins = int(rng.integers(1, 40))
        keys = rng.choice(1001, size=bins, replace=False)
        counts = rng.integers(1, 400, bins) / float(rng.choice([1.0, 1.0, 2.7]))  # tempered counts too
        dense = np.zeros(1001)
        dense[keys] = counts
        hist = Histogram(dense)
        xs, cs = hist.values()
        for alpha in (0.005, 0.01, 0.05):
            threshold = math.log(1.0 / alpha)
            for wealth, rejected_below, bound in (
                (_wealth_below, False, mean_upper_bound),
                (_wealth_above, True, mean_lower_bound),
            ):
                for kind in ("fast", "plain"):

                    def score(
                        m: float,
                        wealth: Callable[..., float] = wealth,
                        kind: str = kind,
                        xs: np.ndarray = xs,
                        cs: np.ndarray = cs,
                    ) -> float:
                        calls[kind] += 1
                        return wealth(xs, cs, m)

                    with np.errstate(divide="ignore"):
                        if kind == "fast":
                            fast = _crossing(score, threshold, 0.0, 1.0, rejected_below=rejected_below)
                        else:
                            slow = plain(score, threshold, 0.0, 1.0, rejected_below=rejected_below)
                assert fast == slow
                assert bound(hist, alpha) == slow
    assert calls["fast"] < 0.6 * calls["plain"]


def test_a_test_that_never_changes_side_ends_where_the_plain_bisection_ends() -> None:
    for value in (math.inf, -math.inf, math.nan, 5.0, -5.0):
        for rejected_below in (True, False):
            got = _crossing(lambda x, v=value: v, 0.0, 0.0, 1.0, rejected_below=rejected_below)
            assert got == plain(lambda x, v=value: v, 0.0, 0.0, 1.0, rejected_below=rejected_below)
    assert evidence._BISECT_STEPS == 26
