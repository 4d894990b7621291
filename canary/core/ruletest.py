"""One SLO rule made ready to weigh data: the statistical test behind every verdict.

Every built-in rule, and every custom one, is a statement about one of two sufficient statistics
(canary.core.evidence):

* a **Bernoulli rate** — ``p95 <= T`` is ``P(latency > T) <= 0.05`` (an errored request counts as above any
  threshold), ``error_rate <= e``, a custom ``rate``, a custom quantile — whose data are ``n`` requests and
  ``k`` hits;
* a **bounded mean** — ``recall@10 >= r``, a custom ``mean`` normalised to [0, 1] — whose data are a
  histogram of values in 1/1000 steps.

A :class:`RuleTest` fixes what the data are tested against: the thresholds, and for a rule relative to
last_good the most lenient (to fail) and the strictest (to pass) threshold last_good's own confidence bounds
allow at that moment. Any window's, pool's or segment's :class:`~canary.core.aggregations.WindowStats` then
becomes a :class:`Sample` (which add and subtract, so pools and segments are sums of windows) with its log
e-values for "broken" and "holds" — the one place those numbers are computed. The judge
(canary.core.judge) decides with them: the pooled verdict, the change detector, and the evidence of each
bucket on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from canary.core.aggregations import RECALL_SCALE, WindowStats
from canary.core.evidence import (
    Histogram,
    group_spread,
    histogram_mean,
    histogram_variance,
    log_e_above,
    log_e_below,
    log_wealth_above,
    log_wealth_below,
    mean_lower_bound,
    mean_upper_bound,
    rate_lower_bound,
    rate_spread,
    rate_upper_bound,
)
from canary.core.models import JSONDict
from canary.core.sketch import QuantileSketch
from canary.core.slo import QUANTILE_METRICS, SLORule

NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class RateSample:
    """Requests and hits: ``k_fail`` counted against the threshold a failure is tested at, ``k_pass``
    against the one a pass is tested at (they differ only for relative quantile rules)."""

    n: int = 0
    k_fail: int = 0
    k_pass: int = 0

    def __add__(self, other: RateSample) -> RateSample:
        return RateSample(self.n + other.n, self.k_fail + other.k_fail, self.k_pass + other.k_pass)

    def __sub__(self, other: RateSample) -> RateSample:
        return RateSample(self.n - other.n, self.k_fail - other.k_fail, self.k_pass - other.k_pass)


@dataclass(frozen=True, slots=True, eq=False)
class MeanSample:
    """Values in 1/1000 steps: counts per bin (canary.core.evidence.Histogram)."""

    hist: Histogram

    @classmethod
    def of(cls, counts: dict[int, int]) -> MeanSample:
        """From ``bin -> count``."""
        return cls(Histogram.of(counts.items()))

    @property
    def n(self) -> int:
        return int(self.hist.n)

    def __add__(self, other: MeanSample) -> MeanSample:
        return MeanSample(self.hist + other.hist)

    def __sub__(self, other: MeanSample) -> MeanSample:
        return MeanSample(self.hist - other.hist)


Sample = RateSample | MeanSample
TestKind = Literal["rate", "mean", "none"]


def count_above(sketch: QuantileSketch, threshold: float, *, surely: bool) -> int:
    """Values above ``threshold`` from the sketch: ``surely`` counts only buckets wholly above it (a lower
    bound of the true count), otherwise every bucket reaching above it (an upper bound)."""
    d = sketch.to_dict()
    gamma = (1.0 + sketch.relative_accuracy) / (1.0 - sketch.relative_accuracy)
    total = 0
    for index, count in d["bins"]:
        upper = gamma**index
        lower = upper / gamma
        if (lower >= threshold) if surely else (upper > threshold):
            total += count
    if not surely and threshold < 0:
        total += d["zero"]
    return total


def quantile_bound(sketch: QuantileSketch, level: float, alpha: float, *, upper: bool) -> float | None:
    """Anytime-valid bound of a quantile from a sketch: the smallest bucket edge x with rate(> x) surely
    <= 1 - level (upper bound), or the largest x with rate(> x) surely >= 1 - level (lower bound).

    "Surely" is the rate bound's own test, asked directly: ``rate_upper_bound(n, k) <= q`` exactly when the
    evidence that the rate is below ``q`` reached ``1/alpha`` (``rate_lower_bound(n, k) >= q`` when the
    evidence that it is above ``q`` did), both bounds being where that e-value crosses ``1/alpha``. The count
    above an edge falls as the edge rises and the evidence is monotone in the count, so the edges where the
    test holds are a suffix (upper) or a prefix (lower) of the sorted edges: a binary search finds the bound
    with ~log2(buckets) e-values instead of a bisected bound per bucket (~70-140 ms a window before)."""
    n = sketch.count
    if n == 0:
        return None
    tail = 1.0 - level
    d = sketch.to_dict()
    gamma = (1.0 + sketch.relative_accuracy) / (1.0 - sketch.relative_accuracy)
    edges = [0.0]
    above = [n - d["zero"]]  # values above each edge: above 0, then above each bucket's upper edge
    for index, count in d["bins"]:
        edges.append(gamma**index)
        above.append(above[-1] - count)
    needed = math.log(1.0 / alpha)
    if upper:
        lo, hi = 0, len(edges)  # the first edge where the test holds (a suffix); len(edges): none
        while lo < hi:
            mid = (lo + hi) // 2
            if log_e_below(n, above[mid], tail) >= needed:
                hi = mid
            else:
                lo = mid + 1
        return edges[lo] if lo < len(edges) else None
    lo, hi = 0, len(edges)  # the first edge where it no longer holds (it holds on a prefix)
    while lo < hi:
        mid = (lo + hi) // 2
        if log_e_above(n, above[mid], tail) >= needed:
            lo = mid + 1
        else:
            hi = mid
    return edges[lo - 1] if lo > 0 else None


def clustering_spread(rule: SLORule, stats: WindowStats) -> tuple[float, float]:
    """One window's observed and expected spread across user groups of ``rule``'s statistic
    (canary.core.evidence.group_spread); ``(0, 0)`` when the window cannot show clustering: no user groups, or a
    custom metric (not counted per group)."""
    groups = stats.groups
    if not groups or rule.custom is not None:
        return 0.0, 0.0
    if rule.metric == "error_rate":
        return rate_spread(groups.n, groups.errors)
    if rule.metric not in QUANTILE_METRICS:  # recall@10: the groups' sums, from micro-units to [0, 1]
        sums = [m / RECALL_SCALE for m in groups.recall_micros]
        return group_spread(groups.recall_n, sums, histogram_variance(stats.recall_histogram()))
    if not groups.exceed:
        return 0.0, 0.0
    # The rule's own threshold when it is counted; for a relative rule (its threshold moves with last_good) the
    # counted one whose share of slow requests is nearest the quantile's tail — how users cluster hardly depends
    # on exactly where the latency line is drawn.
    if rule.relative:
        tail, total = 1.0 - QUANTILE_METRICS[rule.metric], max(1, sum(groups.n))
        _, row = min(groups.exceed, key=lambda kv: abs(sum(kv[1]) / total - tail))
    else:
        _, row = min(groups.exceed, key=lambda kv: abs(float(kv[0]) - float(rule.threshold)))
    return rate_spread(groups.n, row)


def _clip(q: float) -> float:
    return min(max(q, 1e-9), 1.0 - 1e-9)


@dataclass(frozen=True, slots=True)
class RuleTest:
    """A rule with its thresholds fixed: turns data into samples and samples into evidence.

    ``kind`` ``none`` means the rule cannot be weighed now (``reason`` says why: a relative rule whose
    baseline has no data yet); every sample is then ``None``.
    """

    rule: SLORule
    alpha: float
    kind: TestKind
    upper: bool  # the rule holds iff the rate / mean is at or below its threshold
    fail_at: float = 0.0  # the rate or mean a failure is tested against
    pass_at: float = 0.0  # the rate or mean a pass is tested against
    latency_fail_ms: float | None = None  # quantile rules: the latency the exceedances are counted above
    latency_pass_ms: float | None = None
    what: str = ""  # "exceedances" | "errors" | "hits" for rates
    extra: JSONDict = field(default_factory=dict)  # the baseline's figures, for the verdict's evidence
    reason: str = ""
    # How much one user's requests cluster (canary.core.evidence: the design effect): the evidence is that of
    # n / dispersion independent requests. 1: independent.
    dispersion: float = 1.0

    @property
    def log_needed(self) -> float:
        return math.log(1.0 / self.alpha)

    # -- building one ----------------------------------------------------------------------------------------
    @classmethod
    def prepare(
        cls, rule: SLORule, baseline: WindowStats | None, alpha: float, *, baseline_alpha: float | None = None
    ) -> RuleTest:
        """The test of ``rule`` at level ``alpha``; ``baseline`` is last_good's pool for a relative rule, bounded at
        level ``baseline_alpha`` (default ``alpha``)."""
        b_alpha = alpha if baseline_alpha is None else baseline_alpha
        upper = rule.operator in ("le", "lt")
        if rule.relative and (baseline is None or baseline.count == 0):
            return cls(rule, alpha, "none", upper, reason=f"{rule.relative_to} has no data yet")
        if rule.custom is not None:
            return cls._custom(rule, baseline, alpha, upper, b_alpha)
        if rule.metric in QUANTILE_METRICS:
            return cls._quantile(rule, baseline, alpha, upper, b_alpha)
        if rule.metric == "error_rate":
            if not rule.relative:
                q = float(rule.threshold)
                return cls(rule, alpha, "rate", upper, q, q, what="errors")
            assert baseline is not None
            lo = rate_lower_bound(baseline.count, baseline.error_count, b_alpha)
            hi = rate_upper_bound(baseline.count, baseline.error_count, b_alpha)
            extra = {
                "baseline_rate": baseline.error_count / baseline.count,
                "baseline_n": baseline.count,
                "baseline_bounds": [lo, hi],
            }
            fail_at, pass_at = (hi, lo) if upper else (lo, hi)
            return cls(
                rule,
                alpha,
                "rate",
                upper,
                fail_at + rule.threshold,
                pass_at + rule.threshold,
                what="errors",
                extra=extra,
            )
        # recall_at_10: a bounded mean
        if not rule.relative:
            m = float(rule.threshold)
            return cls(rule, alpha, "mean", upper, m, m)
        assert baseline is not None
        base_hist = baseline.recall_histogram()
        base_n = int(base_hist.n)
        if not base_n:
            return cls(rule, alpha, "none", upper, reason=f"{rule.relative_to} has no recall samples yet")
        lo, hi = mean_lower_bound(base_hist, b_alpha), mean_upper_bound(base_hist, b_alpha)
        extra = {
            "baseline_mean": histogram_mean(base_hist),
            "baseline_n": base_n,
            "baseline_bounds": [lo, hi],
        }
        fail_at, pass_at = (hi, lo) if upper else (lo, hi)
        return cls(rule, alpha, "mean", upper, fail_at + rule.threshold, pass_at + rule.threshold, extra=extra)

    @classmethod
    def _quantile(
        cls, rule: SLORule, baseline: WindowStats | None, alpha: float, upper: bool, b_alpha: float
    ) -> RuleTest:
        level = QUANTILE_METRICS[rule.metric]
        q = 1.0 - level
        if not rule.relative:
            t = float(rule.threshold)
            return cls(rule, alpha, "rate", upper, q, q, t, t, "exceedances", {"threshold_ms": t})
        assert baseline is not None
        hi = quantile_bound(baseline.sketch, level, b_alpha, upper=True)
        lo = quantile_bound(baseline.sketch, level, b_alpha, upper=False)
        # Failing needs evidence against the most lenient threshold the baseline allows; passing, the strictest.
        t_fail, t_pass = (hi, lo) if upper else (lo, hi)
        extra: JSONDict = {
            "baseline_quantile_ms": baseline.sketch.quantile(level),
            "baseline_n": baseline.count,
            "baseline_bounds_ms": [lo, hi],
            "threshold_ms": None if t_fail is None else rule.threshold * t_fail,
        }
        if t_fail is None and t_pass is None:
            return cls(
                rule,
                alpha,
                "none",
                upper,
                extra=extra,
                reason=f"{rule.relative_to} quantile not yet bounded (n={baseline.count})",
            )
        # A side the baseline cannot bound yet is tested against the impossible rate: it never decides.
        fail_at = q if t_fail is not None else (1.0 if upper else 0.0)
        pass_at = q if t_pass is not None else (0.0 if upper else 1.0)
        return cls(
            rule,
            alpha,
            "rate",
            upper,
            fail_at,
            pass_at,
            None if t_fail is None else rule.threshold * t_fail,
            None if t_pass is None else rule.threshold * t_pass,
            "exceedances",
            extra,
        )

    @classmethod
    def _custom(
        cls, rule: SLORule, baseline: WindowStats | None, alpha: float, upper: bool, b_alpha: float
    ) -> RuleTest:
        metric = rule.custom
        assert metric is not None
        extra: JSONDict = {"custom_metric": metric.name, "aggregation": metric.aggregation}
        base = baseline.custom_stats(metric.name) if baseline is not None else None
        if rule.relative and (base is None or base.n == 0):
            return cls(rule, alpha, "none", upper, extra=extra, reason=f"{rule.relative_to} has no {metric.name} yet")
        if metric.aggregation == "rate":
            if not rule.relative:
                q = float(rule.threshold)
                return cls(rule, alpha, "rate", upper, q, q, what="hits", extra=extra)
            assert base is not None
            lo, hi = rate_lower_bound(base.n, base.hits, b_alpha), rate_upper_bound(base.n, base.hits, b_alpha)
            extra.update(baseline_rate=base.hits / base.n, baseline_n=base.n, baseline_bounds=[lo, hi])
            fail_at, pass_at = (hi, lo) if upper else (lo, hi)
            return cls(
                rule, alpha, "rate", upper, fail_at + rule.threshold, pass_at + rule.threshold, what="hits", extra=extra
            )
        if metric.quantile is not None:
            q = 1.0 - metric.quantile
            t = float(rule.threshold)
            extra["threshold_value"] = t
            return cls(rule, alpha, "rate", upper, q, q, t, t, "exceedances", extra)
        span = metric.high - metric.low
        extra["scale"] = [metric.low, metric.high]  # mean evidence is on the value normalised to [0, 1]
        if not rule.relative:
            m = metric.normalise(float(rule.threshold))
            return cls(rule, alpha, "mean", upper, m, m, extra=extra)
        assert base is not None
        base_hist = Histogram.of(base.hist)
        lo, hi = mean_lower_bound(base_hist, b_alpha), mean_upper_bound(base_hist, b_alpha)
        extra.update(baseline_mean=histogram_mean(base_hist), baseline_n=base.n, baseline_bounds=[lo, hi])
        offset = rule.threshold / span
        fail_at, pass_at = (hi, lo) if upper else (lo, hi)
        return cls(rule, alpha, "mean", upper, fail_at + offset, pass_at + offset, extra=extra)

    # -- data → sample --------------------------------------------------------------------------------------
    def sample(self, stats: WindowStats) -> Sample | None:
        """What ``stats`` says about this rule; None when the rule cannot be weighed or has no data there."""
        rule = self.rule
        if self.kind == "none":
            return None
        if rule.custom is not None:
            own = stats.custom_stats(rule.custom.name)
            if own is None or own.n == 0:
                return None
            if rule.custom.aggregation == "rate":
                return RateSample(own.n, own.hits, own.hits)
            if rule.custom.quantile is not None:
                k = own.exceedances(float(rule.threshold))
                return None if k is None else RateSample(own.n, k, k)
            return MeanSample(Histogram.of(own.hist)) if own.hist else None
        if self.kind == "mean":
            return MeanSample(stats.recall_histogram()) if stats.recall_hist else None
        if stats.count == 0:
            return None
        if rule.metric == "error_rate":
            return RateSample(stats.count, stats.error_count, stats.error_count)
        # a quantile: exceedances above the tested latency
        if not rule.relative:
            k = stats.exceedances(float(rule.threshold))
            if k is None:  # a window from before exact counts: the sketch's lower bound
                k = count_above(stats.sketch, float(rule.threshold), surely=True)
            return RateSample(stats.count, k, k)
        k_fail = (
            0 if self.latency_fail_ms is None else count_above(stats.sketch, self.latency_fail_ms, surely=self.upper)
        )
        k_pass = (
            0
            if self.latency_pass_ms is None
            else count_above(stats.sketch, self.latency_pass_ms, surely=not self.upper)
        )
        return RateSample(stats.count, k_fail, k_pass)

    # -- clustering: the evidence of n / dispersion independent requests ---------------------------------------
    def _effective(self, n: float, k: float) -> tuple[float, float]:
        d = self.dispersion
        return (n, k) if d == 1.0 else (n / d, k / d)

    def _hist(self, s: MeanSample) -> Histogram:
        d = self.dispersion
        return s.hist if d == 1.0 else s.hist.tempered(d)

    def bounds(self, s: Sample) -> tuple[float, float]:
        """The sample's (lower, upper) confidence bounds at this test's level — of the rate (the lower from the hits
        counted for failing, the upper from those for passing) or of the mean — at the same effective sample size
        as its evidence, so a bound and its test agree."""
        if isinstance(s, RateSample):
            n, k_fail = self._effective(s.n, s.k_fail)
            _, k_pass = self._effective(s.n, s.k_pass)
            return rate_lower_bound(n, k_fail, self.alpha), rate_upper_bound(n, k_pass, self.alpha)
        hist = self._hist(s)
        return mean_lower_bound(hist, self.alpha), mean_upper_bound(hist, self.alpha)

    # -- sample → evidence ----------------------------------------------------------------------------------
    def log_e_fail(self, s: Sample | None) -> float:
        """Log evidence that the rule is broken in these data (``-inf`` when they cannot say)."""
        if s is None:
            return NEG_INF
        if s.n <= 0:
            return 0.0
        if isinstance(s, RateSample):
            n, k = self._effective(s.n, s.k_fail)
            if self.upper:
                return log_e_above(n, k, _clip(self.fail_at)) if self.fail_at < 1.0 else NEG_INF
            return log_e_below(n, k, _clip(self.fail_at)) if self.fail_at > 0.0 else NEG_INF
        if self.upper:
            return log_wealth_above(self._hist(s), self.fail_at)
        return log_wealth_below(self._hist(s), self.fail_at)

    def log_e_pass(self, s: Sample | None) -> float:
        """Log evidence that the rule holds in these data."""
        if s is None:
            return NEG_INF
        if s.n <= 0:
            return 0.0
        if isinstance(s, RateSample):
            n, k = self._effective(s.n, s.k_pass)
            if self.upper:
                return log_e_below(n, k, _clip(self.pass_at)) if self.pass_at > 0.0 else NEG_INF
            return log_e_above(n, k, _clip(self.pass_at)) if self.pass_at < 1.0 else NEG_INF
        if self.upper:
            return log_wealth_below(self._hist(s), self.pass_at)
        return log_wealth_above(self._hist(s), self.pass_at)

    def estimate(self, s: Sample | None) -> float | None:
        """The data's own rate or mean (what is compared with the tested threshold)."""
        if s is None or s.n <= 0:
            return None
        if isinstance(s, RateSample):
            return s.k_fail / s.n
        return histogram_mean(s.hist)

    def breaks(self, s: Sample | None) -> bool:
        """Do these data, on their own, sit on the breaking side of the tested threshold?"""
        value = self.estimate(s)
        if value is None or self.kind == "none":
            return False
        return value > self.fail_at if self.upper else value < self.fail_at
