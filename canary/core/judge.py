"""The SLO judge: candidate windows in, verdicts with evidence and decisions (rollback, pause) out.

One :class:`DeploymentJudge` per deployment holds everything the SLO agent needs to decide, as plain
data it can checkpoint: the candidate's and last_good's pooled statistics since the deployment started,
each rule's failing streak, the low-traffic counter, and whether a rollback was already decided.

Verdicts (``method: sequential``, the default), per rule and window, from the pooled data:

* ``fail``: the anytime-valid evidence that the rule is broken reached ``1/(1 - confidence)`` **and** this
  window on its own breaks the rule (a healthy window after a bad burst is not a failing bucket);
* ``pass``: the evidence that it holds reached the same level, and this window does not break it;
* ``inconclusive``: neither yet (or no data the rule can use); ``error``: data that should exist is absent.

Because the evidence is an e-process over the whole deployment, the chance that a candidate which meets
the rule is *ever* judged failing is at most ``1 - confidence`` however long the canary runs and however
often it is looked at. Counters and their reset rules:

* a rule's streak: ``fail`` extends it; ``pass`` or ``inconclusive`` in a window with candidate data
  resets it; a window with no candidate outcome (paused, idle) and ``error`` leave it as it is. A streak
  of ``consecutive_buckets`` rolls back (the spec's trigger), once per deployment;
* the low-traffic counter: a window with ``0 < n < min_samples`` in which no rule fails and some rule is
  inconclusive extends it, a window with ``n >= min_samples`` (or where every rule is decided) resets it;
  at ``inconclusive_limit`` the canary is paused, "insufficient data: 12 windows, 3 samples per window".

``method: point`` judges each window's bare estimate (the original behaviour; its streak ignores
inconclusive windows, as it always did).

Relative rules compare with last_good measured in the same windows. Its uncertainty is accounted for
conservatively: a failure needs evidence against the most lenient threshold last_good's confidence bound
allows, a pass against the strictest (confidence split equally between the two arms). A candidate window
of a deployment with relative rules is judged once last_good's window of the same slot is in (or after
``baseline_wait_ms``), so the outcome does not depend on which arm's window arrived first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from canary.core.aggregations import WindowStats
from canary.core.custom import CustomMetric
from canary.core.evidence import (
    histogram_mean,
    log_e_above,
    log_e_below,
    log_wealth_above,
    log_wealth_below,
    mean_lower_bound,
    mean_upper_bound,
    rate_lower_bound,
    rate_upper_bound,
)
from canary.core.models import JSONDict, Outcome, RuleVerdict, WindowResult, iso_ms
from canary.core.sketch import QuantileSketch
from canary.core.slo import (
    _OPS,
    QUANTILE_METRICS,
    Decision,
    SLOPolicy,
    SLORule,
    judge_window,
    pause_command_id,
    rollback_command_id,
    value_format,
    window_point_value,
)
from canary.errors import SHAPE_ERRORS, InvalidEvent

MAX_PENDING = 720  # last_good windows held for pairing (one hour of 5 s windows); older ones are pooled
MAX_EVIDENCE = 64  # evidence entries kept per streak; streaks normally end at consecutive_buckets


@dataclass(frozen=True, slots=True)
class Judgement:
    """One judged candidate window: the window with its verdicts, each rule's streak afterwards, the
    low-traffic counter, and the decision it triggered (if any)."""

    window: WindowResult
    streaks: dict[str, int]
    insufficient_windows: int
    decision: Decision | None = None
    judged_at_ms: int = 0
    # What the judge did not see but a reader should: ``broker_outage`` when the window overlaps a broker
    # outage the worker lived through or the backlog drain after it (canary.core.outages). Informational:
    # no verdict or decision depends on it. None when there is nothing to say.
    context: JSONDict | None = None

    @property
    def deployment_id(self) -> str:
        return self.window.deployment_id or "-"

    @property
    def window_id(self) -> str:
        return self.window.window_id

    def to_dict(self) -> JSONDict:
        return {
            "window_id": self.window.window_id,
            "deployment_id": self.window.deployment_id,
            "window_start_ms": self.window.window_start_ms,
            "window_start": iso_ms(self.window.window_start_ms),
            "window": self.window.to_dict(),
            "streaks": dict(self.streaks),
            "insufficient_windows": self.insufficient_windows,
            "decision": None if self.decision is None else self.decision.to_dict(),
            "judged_at_ms": self.judged_at_ms,
            "context": self.context,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Judgement:
        if not isinstance(d, Mapping):
            raise InvalidEvent(f"Judgement: expected a JSON object, got {type(d).__name__}")
        try:
            decision = d.get("decision")
            return cls(
                window=WindowResult.from_dict(d["window"]),
                streaks={str(k): int(v) for k, v in d["streaks"].items()},
                insufficient_windows=int(d.get("insufficient_windows", 0)),
                decision=None if decision is None else Decision.from_dict(decision),
                judged_at_ms=int(d.get("judged_at_ms", 0)),
                # Absent in records from before the field; anything but an object is not a context.
                context=dict(context) if isinstance(context := d.get("context"), Mapping) else None,
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"Judgement: malformed ({exc!r})") from None


def window_stats(window: WindowResult) -> WindowStats:
    """The window's sufficient statistics; windows from before they were carried get a count-only view."""
    if window.stats is not None:
        return WindowStats.from_dict(window.stats)
    return WindowStats(count=window.response_count, error_count=window.error_count)


# -- the evidence per rule ----------------------------------------------------------------------------------


def _count_above(sketch: QuantileSketch, threshold: float, *, surely: bool) -> int:
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


def _quantile_bound(sketch: QuantileSketch, level: float, alpha: float, *, upper: bool) -> float | None:
    """Anytime-valid bound of a quantile from a sketch: the smallest bucket edge x with rate(> x) surely
    <= 1 - level (upper bound), or the largest x with rate(> x) surely >= 1 - level (lower bound).

    "Surely" is the rate bound's own test, asked directly: ``rate_upper_bound(n, k) <= q`` exactly when the
    evidence that the rate is below ``q`` reached ``1/alpha`` (``rate_lower_bound(n, k) >= q`` when the
    evidence that it is above ``q`` did), both bounds being where that e-value crosses ``1/alpha``. The count
    above an edge falls as the edge rises and the evidence is monotone in the count, so the edges where
    the test holds are a suffix (upper) or a prefix (lower) of the sorted edges: a binary search finds the
    bound with ~log2(buckets) e-values instead of a bisected bound per bucket (~70 ms a window before)."""
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

        def holds(i: int) -> bool:
            return log_e_below(n, above[i], tail) >= needed

        lo, hi = 0, len(edges)  # first index where it holds (a suffix); len(edges): nowhere
        while lo < hi:
            mid = (lo + hi) // 2
            if holds(mid):
                hi = mid
            else:
                lo = mid + 1
        return edges[lo] if lo < len(edges) else None

    def surely_above(i: int) -> bool:
        return log_e_above(n, above[i], tail) >= needed

    lo, hi = 0, len(edges)  # first index where it no longer holds (it holds on a prefix)
    while lo < hi:
        mid = (lo + hi) // 2
        if surely_above(mid):
            lo = mid + 1
        else:
            hi = mid
    return edges[lo - 1] if lo > 0 else None


@dataclass(frozen=True, slots=True)
class _Evidence:
    outcome: Outcome
    reason: str
    evidence: JSONDict


def _rate_verdict(
    rule: SLORule,
    n: int,
    k_fail: int,
    k_pass: int,
    q_fail: float,
    q_pass: float,
    alpha: float,
    what: str,
    extra: JSONDict,
) -> _Evidence:
    """A Bernoulli rate against its bound. Upper-bounded rules (le/lt) hold iff rate <= q."""
    upper_rule = rule.operator in ("le", "lt")
    threshold = math.log(1.0 / alpha)

    def clip(q: float) -> float:
        return min(max(q, 1e-9), 1.0 - 1e-9)

    lower, upper = rate_lower_bound(n, k_fail, alpha), rate_upper_bound(n, k_pass, alpha)
    if upper_rule:
        fail_e = log_e_above(n, k_fail, clip(q_fail)) if q_fail < 1.0 else -math.inf
        pass_e = log_e_below(n, k_pass, clip(q_pass)) if q_pass > 0.0 else -math.inf
        bound, bound_name = lower, "rate_lower_bound"
    else:
        fail_e = log_e_below(n, k_fail, clip(q_fail)) if q_fail > 0.0 else -math.inf
        pass_e = log_e_above(n, k_pass, clip(q_pass)) if q_pass < 1.0 else -math.inf
        bound, bound_name = upper, "rate_upper_bound"
    rate = k_fail / n if n else None
    evidence = {
        "method": "sequential",
        "n": n,
        what: k_fail,
        "rate": rate,
        "rate_threshold": q_fail,
        "rate_lower_bound": lower,
        "rate_upper_bound": upper,
        "confidence": rule.confidence,
        "log_e_fail": _finite(fail_e),
        "log_e_pass": _finite(pass_e),
        "log_e_needed": threshold,
        **extra,
    }
    symbol = _OPS[rule.operator][1]
    shown = f"{what}={k_fail}/{n}"
    if fail_e >= threshold:
        return _Evidence(
            "fail",
            f"{shown}: {bound_name.split('_')[1]} bound {bound:.4f} beyond {q_fail:.4f} at {rule.confidence:g}",
            evidence,
        )
    if pass_e >= threshold:
        return _Evidence("pass", f"{shown}: rate {symbol} {q_pass:.4f} at {rule.confidence:g}", evidence)
    return _Evidence(
        "inconclusive", f"{shown}: not significant yet (log e {_finite(fail_e):.2f} of {threshold:.2f})", evidence
    )


def _finite(x: float) -> float:
    return x if math.isfinite(x) else (-1e9 if x < 0 else 1e9)


def _mean_verdict(
    rule: SLORule, hist: dict[int, int], m_fail: float, m_pass: float, alpha: float, extra: JSONDict
) -> _Evidence:
    """A bounded mean (recall) against its bound. Lower-bounded rules (ge/gt) hold iff mean >= m."""
    lower_rule = rule.operator in ("ge", "gt")
    threshold = math.log(1.0 / alpha)
    n = sum(hist.values())
    lower, upper = mean_lower_bound(hist, alpha), mean_upper_bound(hist, alpha)
    if lower_rule:
        fail_e, pass_e = log_wealth_below(hist, m_fail), log_wealth_above(hist, m_pass)
        bound, bound_name = upper, "mean_upper_bound"
    else:
        fail_e, pass_e = log_wealth_above(hist, m_fail), log_wealth_below(hist, m_pass)
        bound, bound_name = lower, "mean_lower_bound"
    mean = histogram_mean(hist)
    evidence = {
        "method": "sequential",
        "n": n,
        "mean": mean,
        "mean_threshold": m_fail,
        "mean_lower_bound": lower,
        "mean_upper_bound": upper,
        "confidence": rule.confidence,
        "log_e_fail": _finite(fail_e),
        "log_e_pass": _finite(pass_e),
        "log_e_needed": threshold,
        **extra,
    }
    shown = f"mean={mean:.3f} (n={n})"
    if fail_e >= threshold:
        return _Evidence(
            "fail",
            f"{shown}: {bound_name.split('_')[1]} bound {bound:.3f} beyond {m_fail:.3f} at {rule.confidence:g}",
            evidence,
        )
    if pass_e >= threshold:
        return _Evidence("pass", f"{shown}: holds against {m_pass:.3f} at {rule.confidence:g}", evidence)
    return _Evidence(
        "inconclusive", f"{shown}: not significant yet (log e {_finite(fail_e):.2f} of {threshold:.2f})", evidence
    )


def sequential_verdict(
    rule: SLORule, window: WindowResult, pooled: WindowStats, baseline: WindowStats | None
) -> RuleVerdict:
    """One rule judged on the deployment's pooled candidate data (``pooled`` includes ``window``)."""
    value = window_point_value(rule.metric, window, rule.custom)
    windows_extra: JSONDict = {}

    def done(e: _Evidence) -> RuleVerdict:
        return RuleVerdict(
            rule.name, rule.metric, rule.operator, float(rule.threshold), value, e.outcome, e.reason, e.evidence
        )

    def inconclusive(reason: str, **extra: Any) -> RuleVerdict:
        evidence = {"method": "sequential", "n": pooled.count, "confidence": rule.confidence, **extra}
        return RuleVerdict(
            rule.name, rule.metric, rule.operator, float(rule.threshold), value, "inconclusive", reason, evidence
        )

    if rule.metric == "response_count":
        return judge_window(rule, window)  # a count, not an estimate: nothing to be uncertain about
    alpha = rule.alpha / 2.0 if rule.relative else rule.alpha
    if rule.custom is not None:
        return _custom_verdict(rule, rule.custom, pooled, baseline, alpha, done, inconclusive)
    if rule.relative and (baseline is None or baseline.count == 0):
        return inconclusive(f"{rule.relative_to} has no data yet: a relative rule cannot be judged")
    if rule.metric in QUANTILE_METRICS:
        level = QUANTILE_METRICS[rule.metric]
        if pooled.count == 0:
            return inconclusive("no responses yet")
        if not rule.relative:
            k = pooled.exceedances(rule.threshold)
            if k is None:  # a window from before exact counts: the sketch's lower bound
                k = _count_above(pooled.sketch, rule.threshold, surely=True)
            extra = {"threshold_ms": rule.threshold, **windows_extra}
            return done(_rate_verdict(rule, pooled.count, k, k, 1.0 - level, 1.0 - level, alpha, "exceedances", extra))
        assert baseline is not None
        upper_rule = rule.operator in ("le", "lt")
        hi = _quantile_bound(baseline.sketch, level, alpha, upper=True)
        lo = _quantile_bound(baseline.sketch, level, alpha, upper=False)
        # Failing needs evidence against the most lenient threshold the baseline allows; passing, the strictest.
        t_fail = (hi if upper_rule else lo) if (hi if upper_rule else lo) is not None else None
        t_pass = (lo if upper_rule else hi) if (lo if upper_rule else hi) is not None else None
        base_q = baseline.sketch.quantile(level)
        extra = {"baseline_quantile_ms": base_q, "baseline_n": baseline.count, "baseline_bounds_ms": [lo, hi]}
        if t_fail is None and t_pass is None:
            return inconclusive(f"{rule.relative_to} quantile not yet bounded (n={baseline.count})", **extra)
        n = pooled.count
        k_fail = _count_above(pooled.sketch, rule.threshold * t_fail, surely=upper_rule) if t_fail is not None else 0
        k_pass = (
            _count_above(pooled.sketch, rule.threshold * t_pass, surely=not upper_rule) if t_pass is not None else 0
        )
        q = 1.0 - level
        extra["threshold_ms"] = None if t_fail is None else rule.threshold * t_fail
        e = _rate_verdict(
            rule,
            n,
            k_fail,
            k_pass,
            q if t_fail is not None else (1.0 if upper_rule else 0.0),
            q if t_pass is not None else (0.0 if upper_rule else 1.0),
            alpha,
            "exceedances",
            extra,
        )
        return done(e)
    if rule.metric == "error_rate":
        if pooled.count == 0:
            return inconclusive("no responses yet")
        if not rule.relative:
            q = float(rule.threshold)
            return done(
                _rate_verdict(rule, pooled.count, pooled.error_count, pooled.error_count, q, q, alpha, "errors", {})
            )
        assert baseline is not None
        b_lo = rate_lower_bound(baseline.count, baseline.error_count, alpha)
        b_hi = rate_upper_bound(baseline.count, baseline.error_count, alpha)
        upper_rule = rule.operator in ("le", "lt")
        q_fail = (b_hi if upper_rule else b_lo) + rule.threshold
        q_pass = (b_lo if upper_rule else b_hi) + rule.threshold
        extra = {
            "baseline_rate": baseline.error_count / baseline.count,
            "baseline_n": baseline.count,
            "baseline_bounds": [b_lo, b_hi],
        }
        return done(
            _rate_verdict(
                rule, pooled.count, pooled.error_count, pooled.error_count, q_fail, q_pass, alpha, "errors", extra
            )
        )
    # recall_at_10: labeled requests and sampled exact searches alike (evidence says how many of each)
    hist = pooled.recall_histogram()
    if not hist:
        return inconclusive(f"no recall samples yet (labels or exact samples; n={pooled.count})")
    sources: JSONDict = {"recall_source": dict(pooled.recall_sources)} if pooled.recall_sources else {}
    if not rule.relative:
        m = float(rule.threshold)
        return done(_mean_verdict(rule, hist, m, m, alpha, sources))
    assert baseline is not None
    base_hist = baseline.recall_histogram()
    if not base_hist:
        return inconclusive(f"{rule.relative_to} has no recall samples yet: a relative rule cannot be judged")
    b_lo, b_hi = mean_lower_bound(base_hist, alpha), mean_upper_bound(base_hist, alpha)
    lower_rule = rule.operator in ("ge", "gt")
    m_fail = (b_lo if lower_rule else b_hi) + rule.threshold
    m_pass = (b_hi if lower_rule else b_lo) + rule.threshold
    extra = {
        "baseline_mean": histogram_mean(base_hist),
        "baseline_n": sum(base_hist.values()),
        "baseline_bounds": [b_lo, b_hi],
        **sources,
    }
    return done(_mean_verdict(rule, hist, m_fail, m_pass, alpha, extra))


def _custom_verdict(
    rule: SLORule,
    metric: CustomMetric,
    pooled: WindowStats,
    baseline: WindowStats | None,
    alpha: float,
    done: Callable[[_Evidence], RuleVerdict],
    inconclusive: Callable[..., RuleVerdict],
) -> RuleVerdict:
    """A rule on a declared custom metric, with the built-in machinery of its kind: a bounded mean (as
    recall), a Bernoulli rate (as errors), or a quantile's exceedance rate (as latency)."""
    own = pooled.custom_stats(metric.name)
    if own is None or own.n == 0:
        return inconclusive(f"no outcome carries {metric.name} yet (n={pooled.count})")
    base = baseline.custom_stats(metric.name) if baseline is not None else None
    if rule.relative and (base is None or base.n == 0):
        return inconclusive(f"{rule.relative_to} has no {metric.name} yet: a relative rule cannot be judged")
    extra: JSONDict = {"custom_metric": metric.name, "aggregation": metric.aggregation}
    if metric.aggregation == "rate":
        if not rule.relative:
            q = float(rule.threshold)
            return done(_rate_verdict(rule, own.n, own.hits, own.hits, q, q, alpha, "hits", extra))
        assert base is not None
        b_lo, b_hi = rate_lower_bound(base.n, base.hits, alpha), rate_upper_bound(base.n, base.hits, alpha)
        upper_rule = rule.operator in ("le", "lt")
        q_fail = (b_hi if upper_rule else b_lo) + rule.threshold
        q_pass = (b_lo if upper_rule else b_hi) + rule.threshold
        extra.update(baseline_rate=base.hits / base.n, baseline_n=base.n, baseline_bounds=[b_lo, b_hi])
        return done(_rate_verdict(rule, own.n, own.hits, own.hits, q_fail, q_pass, alpha, "hits", extra))
    if metric.quantile is not None:
        k = own.exceedances(rule.threshold)
        if k is None:
            return inconclusive(f"{metric.name}: no exact counts above {rule.threshold:g} in these windows")
        q = 1.0 - metric.quantile
        extra["threshold_value"] = rule.threshold
        return done(_rate_verdict(rule, own.n, k, k, q, q, alpha, "exceedances", extra))
    hist = dict(own.hist)
    span = metric.high - metric.low
    extra["scale"] = [metric.low, metric.high]  # mean evidence is on the value normalised to [0, 1]
    if not rule.relative:
        m = metric.normalise(float(rule.threshold))
        return done(_mean_verdict(rule, hist, m, m, alpha, extra))
    assert base is not None
    base_hist = dict(base.hist)
    b_lo, b_hi = mean_lower_bound(base_hist, alpha), mean_upper_bound(base_hist, alpha)
    lower_rule = rule.operator in ("ge", "gt")
    offset = rule.threshold / span
    m_fail = (b_lo if lower_rule else b_hi) + offset
    m_pass = (b_hi if lower_rule else b_lo) + offset
    extra.update(baseline_mean=histogram_mean(base_hist), baseline_n=base.n, baseline_bounds=[b_lo, b_hi])
    return done(_mean_verdict(rule, hist, m_fail, m_pass, alpha, extra))


def window_figure(rule: SLORule, own: WindowStats, evidence: Mapping[str, Any]) -> tuple[str, float | None]:
    """The window's own estimate of what the rule's test is about: (name, value) — the rate above the
    tested latency, the error rate, or the recall mean; ``None`` without data."""
    if rule.custom is not None:
        stats = own.custom_stats(rule.metric)
        if stats is None or stats.n == 0:
            return ("window_mean" if rule.custom.aggregation == "mean" else "window_rate"), None
        if rule.custom.aggregation == "mean":
            return "window_mean", histogram_mean(dict(stats.hist))
        if rule.custom.aggregation == "rate":
            return "window_rate", stats.hits / stats.n
        k = stats.exceedances(rule.threshold)
        return "window_rate", None if k is None else k / stats.n
    if rule.metric in QUANTILE_METRICS:
        t = evidence.get("threshold_ms")
        if own.count == 0 or t is None:
            return "window_rate", None
        k = own.exceedances(float(t)) if not rule.relative else None
        if k is None:
            k = _count_above(own.sketch, float(t), surely=rule.operator in ("le", "lt"))
        return "window_rate", k / own.count
    if rule.metric == "error_rate":
        return "window_rate", (own.error_count / own.count) if own.count else None
    return "window_mean", histogram_mean(own.recall_histogram())


def rule_window_n(rule: SLORule, own: WindowStats) -> int:
    """How many of the window's outcomes carry what ``rule`` judges: its recall values for recall (labels and
    exact samples; with sampled recall most windows have none), its custom metric's values, else all."""
    if rule.custom is not None:
        stats = own.custom_stats(rule.metric)
        return 0 if stats is None else stats.n
    if rule.metric == "recall_at_10":
        return own.recall_samples
    return own.count


def window_breaks(rule: SLORule, value: float | None, evidence: Mapping[str, Any]) -> bool:
    """Does this window, on its own, sit on the breaking side of the tested threshold?"""
    if value is None:
        return False
    if rule.metric == "recall_at_10" or (rule.custom is not None and rule.custom.aggregation == "mean"):
        limit = evidence.get("mean_threshold")
        return limit is not None and (value < limit if rule.operator in ("ge", "gt") else value > limit)
    limit = evidence.get("rate_threshold")
    return limit is not None and (value > limit if rule.operator in ("le", "lt") else value < limit)


# -- one deployment -----------------------------------------------------------------------------------------


def _evidence_entry(window: WindowResult, verdict: RuleVerdict) -> JSONDict:
    return {
        "window_id": window.window_id,
        "window_start": iso_ms(window.window_start_ms),
        "window_end": iso_ms(window.window_end_ms),
        "value": verdict.value,
        "response_count": window.response_count,
        "recall_samples": window.recall_samples,
        "recall_source": (window.stats or {}).get("recall_source"),
        "outcome": verdict.outcome,
        "reason": verdict.reason,
        "evidence": verdict.evidence,
    }


@dataclass
class DeploymentJudge:
    """The SLO agent's state and logic for one deployment (checkpointed with ``to_dict``)."""

    deployment_id: str
    policy: SLOPolicy
    candidate: WindowStats = field(default_factory=WindowStats)
    baseline: WindowStats = field(default_factory=WindowStats)
    candidate_windows: int = 0
    last_judged_start: int | None = None
    last_baseline_start: int | None = None
    pending_baseline: dict[int, WindowStats] = field(default_factory=dict)
    baseline_values: dict[int, dict[str, float | None]] = field(default_factory=dict)
    waiting: list[tuple[WindowResult, int]] = field(default_factory=list)
    streaks: dict[str, list[JSONDict]] = field(default_factory=dict)
    insufficient_windows: int = 0
    insufficient_samples: int = 0
    rolled_back: bool = False
    pauses: int = 0
    baseline_wait_ms: int = 2000

    # -- input ------------------------------------------------------------------------------------------------
    def observe(self, window: WindowResult, arrival_ms: int) -> list[Judgement]:
        """Take one window of this deployment (either arm); returns the candidate windows judged now."""
        if window.arm == "last_good":
            self._take_baseline(window)
            return self._release(arrival_ms, force=False)
        if window.arm != "candidate":
            return []
        if self.last_judged_start is not None and window.window_start_ms <= self.last_judged_start:
            return []  # a redelivery
        if any(w.window_start_ms == window.window_start_ms for w, _ in self.waiting):
            return []
        self.waiting.append((window, arrival_ms))
        self.waiting.sort(key=lambda wa: wa[0].window_start_ms)
        return self._release(arrival_ms, force=False)

    def tick(self, now_ms: int) -> list[Judgement]:
        """Judge candidate windows that waited ``baseline_wait_ms`` for last_good's window in vain."""
        return self._release(now_ms, force=True)

    def _take_baseline(self, window: WindowResult) -> None:
        start = window.window_start_ms
        if not self.policy.has_relative:
            return
        if self.last_baseline_start is not None and start <= self.last_baseline_start:
            return
        if start in self.pending_baseline:
            return
        self.pending_baseline[start] = window_stats(window)
        self.baseline_values[start] = {
            r.metric: window_point_value(r.metric, window, r.custom) for r in self.policy.rules
        }
        while len(self.pending_baseline) > MAX_PENDING:
            self._pool_baseline_until(min(self.pending_baseline))

    def _pool_baseline_until(self, start: int) -> None:
        for s in sorted(k for k in self.pending_baseline if k <= start):
            self.baseline = self.baseline.merge(self.pending_baseline.pop(s))
            self.last_baseline_start = s
        for s in [k for k in self.baseline_values if k < start]:
            del self.baseline_values[s]

    def _baseline_ready(self, start: int) -> bool:
        if not self.policy.has_relative:
            return True
        newest = max(self.pending_baseline, default=self.last_baseline_start)
        return newest is not None and newest >= start

    def _release(self, now_ms: int, *, force: bool) -> list[Judgement]:
        out: list[Judgement] = []
        while self.waiting:
            window, arrived = self.waiting[0]
            if not (
                self._baseline_ready(window.window_start_ms) or (force and now_ms - arrived >= self.baseline_wait_ms)
            ):
                break
            self.waiting.pop(0)
            out.append(self._judge(window, now_ms))
        return out

    # -- judging ----------------------------------------------------------------------------------------------
    def _judge(self, window: WindowResult, now_ms: int) -> Judgement:
        start = window.window_start_ms
        self.last_judged_start = start
        stats = window_stats(window)
        if self.policy.has_relative:
            self._pool_baseline_until(start)
        self.candidate = self.candidate.merge(stats)
        self.candidate_windows += 1
        baseline_now = self.baseline_values.get(start, {})
        verdicts: list[RuleVerdict] = []
        quiet: set[str] = set()  # rules without a value in this window (see rule_window_n)
        for rule in self.policy.rules:
            if rule.method == "point":
                verdicts.append(judge_window(rule, window, baseline_now.get(rule.metric)))
                continue
            v = sequential_verdict(rule, window, self.candidate, self.baseline if rule.relative else None)
            evidence = {**(v.evidence or {}), "windows": self.candidate_windows}
            if rule.metric == "response_count":
                verdicts.append(replace(v, evidence=evidence))
                continue
            name, own = window_figure(rule, stats, evidence)
            shown = f"{name}={'-' if own is None else format(own, '.4f')}"
            evidence[name] = own
            evidence["window_n"] = stats.count
            if window.response_count == 0:
                # No new data: this bucket is not a failing (or passing) bucket, whatever the pool says.
                pooled = f"pooled: {v.outcome}, {v.reason}"
                v = replace(v, outcome="inconclusive", reason=f"no candidate outcomes in this window ({pooled})")
            elif rule_window_n(rule, stats) == 0:
                # Outcomes, but none carries this rule's metric (sampled recall: most windows have no sample):
                # no new data for the rule either, and no reason to break a running streak.
                pooled = f"pooled: {v.outcome}, {v.reason}"
                v = replace(v, outcome="inconclusive", reason=f"no {rule.metric} values in this window ({pooled})")
                quiet.add(rule.name)
            elif v.outcome == "fail" and not window_breaks(rule, own, evidence):
                # A failing *bucket* breaks the rule itself, backed by significant pooled evidence: a
                # healthy bucket after a bad one is not a second failing bucket.
                v = replace(
                    v,
                    outcome="inconclusive",
                    reason=f"this window does not break it ({shown}); pooled: {v.reason}",
                )
            elif v.outcome == "pass" and window_breaks(rule, own, evidence):
                v = replace(v, outcome="inconclusive", reason=f"this window breaks it ({shown}); pooled: {v.reason}")
            verdicts.append(replace(v, evidence=evidence))
        judged = replace(window, verdicts=tuple(verdicts))
        n = window.response_count
        for rule, v in zip(self.policy.rules, verdicts, strict=True):
            if v.outcome == "fail":
                streak = self.streaks.setdefault(rule.name, [])
                streak.append(_evidence_entry(judged, v))
                del streak[:-MAX_EVIDENCE]
            elif rule.name in quiet:
                continue  # nothing new for this rule: its streak neither grows nor breaks
            elif v.outcome == "pass" or (v.outcome == "inconclusive" and n > 0 and rule.method != "point"):
                self.streaks.pop(rule.name, None)
        decision = self._rollback(judged) if not self.rolled_back else None
        if decision is None:
            decision = self._low_traffic(judged, verdicts)
        else:
            self.insufficient_windows = self.insufficient_samples = 0
        streaks = {r.name: len(self.streaks.get(r.name, [])) for r in self.policy.rules}
        return Judgement(judged, streaks, self.insufficient_windows, decision, now_ms)

    def _rollback(self, window: WindowResult) -> Decision | None:
        due = [r for r in self.policy.rules if len(self.streaks.get(r.name, [])) >= r.consecutive_buckets]
        if not due:
            return None

        def strength(rule: SLORule) -> float:
            verdict = next((v for v in window.verdicts if v.rule == rule.name), None)
            e = (verdict.evidence or {}) if verdict is not None else {}
            return float(e.get("log_e_fail", 0.0) or 0.0) - float(e.get("log_e_needed", 0.0) or 0.0)

        # Several rules may fail at once (an erroring candidate breaks latency, recall and errors): the
        # reason names the one with the strongest evidence, the rule order breaking ties.
        for rule in sorted(due, key=lambda r: -strength(r)):
            streak = self.streaks.get(rule.name, [])
            if len(streak) >= rule.consecutive_buckets:
                self.rolled_back = True
                evidence = {
                    "rule": rule.name,
                    "metric": rule.metric,
                    "operator": rule.operator,
                    "threshold": rule.threshold,
                    "relative_to": rule.relative_to,
                    "method": rule.method,
                    "confidence": rule.confidence,
                    "consecutive_buckets": rule.consecutive_buckets,
                    "windows": list(streak[-rule.consecutive_buckets :]),
                }
                return Decision(
                    deployment_id=self.deployment_id,
                    rule=rule.name,
                    reason=f"SLO violation: {rule.name} failed for {len(streak)} consecutive buckets",
                    evidence=evidence,
                    window_id=window.window_id,
                    command_id=rollback_command_id(self.deployment_id),
                    type="rollback",
                )
        return None

    def _low_traffic(self, window: WindowResult, verdicts: list[RuleVerdict]) -> Decision | None:
        n = window.response_count
        limit = self.policy.inconclusive_limit
        if n == 0 or self.rolled_back:
            return None
        starved = (
            n < self.policy.min_samples
            and not any(v.outcome == "fail" for v in verdicts)
            and any(v.outcome == "inconclusive" for v in verdicts)
        )
        if not starved:
            self.insufficient_windows = self.insufficient_samples = 0
            return None
        self.insufficient_windows += 1
        self.insufficient_samples += n
        if limit <= 0 or self.insufficient_windows < limit:
            return None
        windows, samples = self.insufficient_windows, self.insufficient_samples
        self.insufficient_windows = self.insufficient_samples = 0
        self.pauses += 1
        per_window = samples / windows
        shown = f"{per_window:.0f}" if per_window >= 1 else f"{per_window:.1f}"
        undecided = [v.rule for v in verdicts if v.outcome == "inconclusive"]
        return Decision(
            deployment_id=self.deployment_id,
            rule=",".join(undecided),
            reason=f"insufficient data: {windows} windows, {shown} samples per window",
            evidence={
                "windows": windows,
                "samples": samples,
                "samples_per_window": per_window,
                "min_samples": self.policy.min_samples,
                "inconclusive_limit": limit,
                "inconclusive_rules": undecided,
                "pooled_n": self.candidate.count,
            },
            window_id=window.window_id,
            command_id=pause_command_id(self.deployment_id, window.window_start_ms),
            type="pause",
        )

    def streak(self, rule: str) -> int:
        return len(self.streaks.get(rule, []))

    # -- persistence ------------------------------------------------------------------------------------------
    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "policy": self.policy.to_dict(),
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "candidate_windows": self.candidate_windows,
            "last_judged_start": self.last_judged_start,
            "last_baseline_start": self.last_baseline_start,
            "pending_baseline": {str(k): v.to_dict() for k, v in sorted(self.pending_baseline.items())},
            "baseline_values": {str(k): v for k, v in sorted(self.baseline_values.items())},
            "waiting": [[w.to_dict(), a] for w, a in self.waiting],
            "streaks": self.streaks,
            "insufficient_windows": self.insufficient_windows,
            "insufficient_samples": self.insufficient_samples,
            "rolled_back": self.rolled_back,
            "pauses": self.pauses,
            "baseline_wait_ms": self.baseline_wait_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeploymentJudge:
        try:
            return cls(
                deployment_id=str(d["deployment_id"]),
                policy=SLOPolicy.from_dict(d["policy"]),
                candidate=WindowStats.from_dict(d["candidate"]),
                baseline=WindowStats.from_dict(d["baseline"]),
                candidate_windows=int(d["candidate_windows"]),
                last_judged_start=None if d["last_judged_start"] is None else int(d["last_judged_start"]),
                last_baseline_start=None if d["last_baseline_start"] is None else int(d["last_baseline_start"]),
                pending_baseline={int(k): WindowStats.from_dict(v) for k, v in d["pending_baseline"].items()},
                baseline_values={int(k): dict(v) for k, v in d["baseline_values"].items()},
                waiting=[(WindowResult.from_dict(w), int(a)) for w, a in d["waiting"]],
                streaks={str(k): [dict(e) for e in v] for k, v in d["streaks"].items()},
                insufficient_windows=int(d["insufficient_windows"]),
                insufficient_samples=int(d["insufficient_samples"]),
                rolled_back=bool(d["rolled_back"]),
                pauses=int(d["pauses"]),
                baseline_wait_ms=int(d.get("baseline_wait_ms", 2000)),
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"DeploymentJudge: malformed state ({exc!r})") from None


class Judge:
    """Every deployment's :class:`DeploymentJudge`; ``policy_for`` resolves a deployment's policy."""

    def __init__(self, policy_for: Callable[[str], SLOPolicy], baseline_wait_ms: int = 2000) -> None:
        self.policy_for = policy_for
        self.baseline_wait_ms = baseline_wait_ms
        self.deployments: dict[str, DeploymentJudge] = {}

    def judge_for(self, deployment_id: str) -> DeploymentJudge:
        judge = self.deployments.get(deployment_id)
        if judge is None:
            judge = DeploymentJudge(
                deployment_id, self.policy_for(deployment_id), baseline_wait_ms=self.baseline_wait_ms
            )
            self.deployments[deployment_id] = judge
        return judge

    def observe(self, window: WindowResult, arrival_ms: int) -> list[Judgement]:
        if window.deployment_id is None:
            return []
        return self.judge_for(window.deployment_id).observe(window, arrival_ms)

    def tick(self, now_ms: int) -> list[Judgement]:
        out: list[Judgement] = []
        for dep in sorted(self.deployments):
            out.extend(self.deployments[dep].tick(now_ms))
        return out


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    fmt = value_format(metric)
    return format(int(value), "d") if fmt == "d" else format(value, fmt)


def evidence_text(v: RuleVerdict) -> str:
    """The numbers behind one verdict, short: ``k/n`` or the mean, the bound and the confidence."""
    e = v.evidence or {}
    if e.get("method") == "point":
        return f"{v.rule} {v.outcome.upper()} (point, n={e.get('n')})"
    n = e.get("n")
    conf = e.get("confidence")
    if "exceedances" in e or "errors" in e:
        k = e.get("exceedances", e.get("errors"))
        bound = e.get("rate_lower_bound", e.get("rate_upper_bound"))
        limit = e.get("rate_threshold")
        detail = f"{k}/{n}"
        if bound is not None and limit is not None:
            detail += f" bound {bound:.3f} vs {limit:.3f}"
    elif "mean" in e and e.get("mean") is not None:
        bound = e.get("mean_upper_bound", e.get("mean_lower_bound"))
        detail = f"mean {e['mean']:.3f} n={n}"
        if bound is not None:
            detail += f" bound {bound:.3f} vs {e.get('mean_threshold', 0):.3f}"
    else:
        detail = f"n={n}"
    return f"{v.rule} {v.outcome.upper()} ({detail}{f' @{conf:g}' if conf else ''})"
