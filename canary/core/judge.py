"""The SLO judge: candidate windows in, verdicts with evidence and decisions (rollback, pause, resume) out.

One :class:`DeploymentJudge` per deployment holds everything the SLO agent needs to decide, as plain
data it can checkpoint: the candidate's pooled statistics since its regime began (the start, or the current
rollout step), its last windows for the change detector, each rule's failing streak, the low-traffic
counter, last_good's recent windows (relative rules, shared shocks), and whether a rollback was decided.

Verdicts (``method: sequential``, the default), per rule and window, from evidence computed by one
:class:`~canary.core.ruletest.RuleTest` per rule (docs/contracts.md, "SLO judgement", has the table):

* ``fail``: the window's own data break the rule, and either the **pooled** evidence of the regime reaches
  ln(1/alpha_pooled) or the **change detector** (a Shiryaev–Roberts e-detector over the last 24 windows)
  reaches ln(N/alpha_detector) — neither resting on other windows that are decisive on their own (that alone
  reach the path's threshold: the pool's rest must still carry half of its threshold, the detector stay
  significant without them), unless this window's own evidence carries half of the pool's threshold (spikes
  make no second failing bucket);
* ``shared``: it would fail, but last_good is significantly worse in the same window than in its own windows
  before: a shock both arms share, answered by a pause and a resume once last_good recovers;
* ``pass``: the pooled evidence that it holds reached its threshold, and this window does not break it;
* ``inconclusive``: neither yet (or no data the rule can use); ``error``: data that should exist is absent.

Guarantee: while the candidate meets a rule in every window, the chance it is ever judged failing on it
within the horizon (``slo.horizon_s``) is at most 1 - confidence (Ville's inequality for each regime's
pooled e-process; E[M_t] <= t for the detector), for requests independent given their window. Requests that
cluster by user (sticky users) are weighed as fewer independent ones: every evidence of a rule is that of
n / dispersion requests, the dispersion measured from how the outcomes' user groups spread within the windows of
both arms (canary.core.evidence; an approximation, measured by bench_decisions). Counters and their reset rules:

* a rule's streak: ``fail`` extends it; ``pass`` or ``inconclusive`` in a window with candidate data
  resets it; a window with no candidate outcome (paused, idle), no value of the rule's metric, ``shared`` and
  ``error`` leave it as it is; a ``shared`` window's own data are left out of the evidence later buckets lean
  on. A streak of ``consecutive_buckets`` rolls back (the spec's trigger), once;
* the low-traffic counter: a window with ``0 < n < min_samples`` in which no rule fails and some rule is
  inconclusive extends it, a window with ``n >= min_samples`` (or where every rule is decided) resets it;
  at ``inconclusive_limit`` the canary is paused, "insufficient data: 12 windows, 3 samples per window".

``method: point`` judges each window's bare estimate (the original behaviour; its streak ignores
inconclusive windows, as it always did).

Relative rules compare with last_good measured in the same windows. Its uncertainty is accounted for
conservatively: a failure needs evidence against the most lenient threshold last_good's confidence bound
allows, a pass against the strictest (confidence split equally between the two arms). A candidate window is
judged once last_good's window of the same slot is in (or after ``baseline_wait_ms``) — for relative rules
always, for absolute ones while last_good is publishing — so the outcome does not depend on which arm's
window arrived first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from canary.core import jsonio, structs
from canary.core.aggregations import WindowStats
from canary.core.evidence import (
    NEG_INF,
    dispersion,
    histogram_mean,
)
from canary.core.models import Count, JSONDict, Outcome, RuleVerdict, WindowResult, iso_ms
from canary.core.ruletest import RateSample, RuleTest, Sample, clustering_spread
from canary.core.slo import (
    _OPS,
    QUANTILE_METRICS,
    Decision,
    SLOPolicy,
    SLORule,
    judge_window,
    pause_command_id,
    rollback_command_id,
    shock_pause_command_id,
    shock_resume_command_id,
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


# -- the pooled verdict of one rule ---------------------------------------------------------------------------


def _finite(x: float) -> float:
    return x if math.isfinite(x) else (-1e9 if x < 0 else 1e9)


@dataclass(frozen=True, slots=True)
class _Pooled:
    """One rule's evidence on a pool: the outcome the pool alone supports, why, and the numbers."""

    outcome: Outcome
    reason: str
    evidence: JSONDict
    log_e_fail: float


def pooled_evidence(test: RuleTest, pooled: WindowStats) -> _Pooled:
    """What ``pooled`` (the candidate's data since its regime began) says about ``test``'s rule: ``fail`` /
    ``pass`` when the log e-value reaches ln(1/alpha), with the confidence bound that agrees with it."""
    rule = test.rule
    sample = test.sample(pooled)
    threshold = test.log_needed
    base: JSONDict = {"method": "sequential", "confidence": rule.confidence, **test.extra}
    if sample is None:
        if test.kind == "none":
            why = f"{test.reason}: a relative rule cannot be judged"
        elif test.kind == "mean":
            if rule.custom is not None:
                why = f"no outcome carries {rule.custom.name} yet (n={pooled.count})"
            else:
                why = f"no recall samples yet (labels or exact samples; n={pooled.count})"
        elif rule.custom is not None:
            why = f"no outcome carries {rule.custom.name} yet (n={pooled.count})"
        else:
            why = "no responses yet"
        return _Pooled("inconclusive", why, {**base, "n": pooled.count}, NEG_INF)
    fail_e, pass_e = test.log_e_fail(sample), test.log_e_pass(sample)
    if isinstance(sample, RateSample):
        n, k = sample.n, sample.k_fail
        lower, upper = test.bounds(sample)
        bound, bound_name = (lower, "rate_lower_bound") if test.upper else (upper, "rate_upper_bound")
        evidence = {
            **base,
            "n": n,
            test.what: k,
            "rate": k / n if n else None,
            "rate_threshold": test.fail_at,
            "rate_lower_bound": lower,
            "rate_upper_bound": upper,
        }
        shown = f"{test.what}={k}/{n}"
        fail_text = f"{shown}: {bound_name.split('_')[1]} bound {bound:.4f} beyond {test.fail_at:.4f}"
        symbol = _OPS[rule.operator][1]
        pass_text = f"{shown}: rate {symbol} {test.pass_at:.4f}"
    else:
        mean = histogram_mean(sample.hist)
        lower, upper = test.bounds(sample)
        bound, bound_name = (lower, "mean_lower_bound") if test.upper else (upper, "mean_upper_bound")
        sources: JSONDict = (
            {"recall_source": dict(pooled.recall_sources)} if pooled.recall_sources and rule.custom is None else {}
        )
        evidence = {
            **base,
            "n": sample.n,
            "mean": mean,
            "mean_threshold": test.fail_at,
            "mean_lower_bound": lower,
            "mean_upper_bound": upper,
            **sources,
        }
        shown = f"mean={mean:.3f} (n={sample.n})"
        fail_text = f"{shown}: {bound_name.split('_')[1]} bound {bound:.3f} beyond {test.fail_at:.3f}"
        pass_text = f"{shown}: holds against {test.pass_at:.3f}"
    evidence.update(log_e_fail=_finite(fail_e), log_e_pass=_finite(pass_e), log_e_needed=threshold)
    if fail_e >= threshold:
        return _Pooled("fail", f"{fail_text} at {rule.confidence:g}", evidence, fail_e)
    if pass_e >= threshold:
        return _Pooled("pass", f"{pass_text} at {rule.confidence:g}", evidence, fail_e)
    reason = f"{shown}: not significant yet (log e {_finite(fail_e):.2f} of {threshold:.2f})"
    return _Pooled("inconclusive", reason, evidence, fail_e)


def sequential_verdict(
    rule: SLORule, window: WindowResult, pooled: WindowStats, baseline: WindowStats | None
) -> RuleVerdict:
    """One rule judged on ``pooled`` alone, at the rule's own confidence: the pooled evidence without the
    judge's per-bucket and change-detection conditions (``SLOMonitor`` and tests use it)."""
    value = window_point_value(rule.metric, window, rule.custom)
    if rule.metric == "response_count":
        return judge_window(rule, window)  # a count, not an estimate: nothing to be uncertain about
    alpha = rule.alpha / 2.0 if rule.relative else rule.alpha
    p = pooled_evidence(RuleTest.prepare(rule, baseline if rule.relative else None, alpha), pooled)
    return RuleVerdict(
        rule.name, rule.metric, rule.operator, float(rule.threshold), value, p.outcome, p.reason, p.evidence
    )


def rule_window_n(rule: SLORule, own: WindowStats) -> int:
    """How many of the window's outcomes carry what ``rule`` judges: its recall values for recall (labels and
    exact samples; with sampled recall most windows have none), its custom metric's values, else all."""
    if rule.custom is not None:
        stats = own.custom_stats(rule.metric)
        return 0 if stats is None else stats.n
    if rule.metric == "recall_at_10":
        return own.recall_samples
    return own.count


# -- the change detector ----------------------------------------------------------------------------------------


def _logsumexp(values: list[float]) -> float:
    finite = [v for v in values if v > NEG_INF]
    if not finite:
        return NEG_INF
    top = max(finite)
    if not math.isfinite(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in finite))


@dataclass(frozen=True, slots=True)
class DetectorReading:
    """The e-detector over the last windows: ``log_e`` = ln of the sum over change points k of the e-value of
    the data since k (an e-Shiryaev-Roberts statistic over segment e-values); ``log_e_robust`` the same
    with, in every segment, every decisive window other than the current one left out."""

    log_e: float
    log_e_robust: float
    needed: float
    segments: int

    def alarms(self, own_carries: bool) -> bool:
        """Significant — also without the decisive earlier windows, unless this window's own data carry
        evidence of their own (``own_carries``, see OWN_SHARE)."""
        return self.log_e >= self.needed and (self.log_e_robust >= self.needed or own_carries)

    def to_dict(self) -> JSONDict:
        return {
            "log_e": _finite(self.log_e),
            "log_e_without_decisive": _finite(self.log_e_robust),
            "log_e_needed": self.needed,
            "segments": self.segments,
        }


def detect(test: RuleTest, windows: list[WindowStats], needed: float, decisive: float) -> DetectorReading:
    """The detector's reading after the last of ``windows`` (oldest first; the last is the one being judged).

    Segment e-values are mixture e-values of the pooled data since each change point (one likelihood-ratio/betting
    mixture per segment, so a segment pays the mixture's price once, not once per window). The robust
    reading leaves out of each segment every earlier window that is decisive on its own (its log e reaches
    ``decisive``): a spike that proves itself broken must not make later buckets fail — nor two spikes in one
    segment (leaving out only the strongest kept the other, and the healthy window after it failed)."""
    samples = [test.sample(w) for w in windows]
    if samples[-1] is None:
        return DetectorReading(NEG_INF, NEG_INF, needed, 0)
    own = [test.log_e_fail(s) if i < len(samples) - 1 else NEG_INF for i, s in enumerate(samples)]
    total: Sample | None = None
    # The segment without its decisive windows; None while none was left out (it is then ``total``). The
    # current window is never left out and comes first, so ``total`` holds it by the first one left out.
    kept: Sample | None = None
    log_es: list[float] = []
    robust: list[float] = []
    last = len(samples) - 1
    for i in range(last, -1, -1):
        s = samples[i]
        if s is not None:
            if i != last and own[i] >= decisive:
                if kept is None:
                    kept = total
            elif kept is not None:
                kept = kept + s  # type: ignore[operator]
            total = s if total is None else total + s  # type: ignore[operator]
        if total is None:
            continue
        log_es.append(test.log_e_fail(total))
        robust.append(log_es[-1] if kept is None else test.log_e_fail(kept))
    return DetectorReading(_logsumexp(log_es), _logsumexp(robust), needed, len(log_es))


# -- one deployment -----------------------------------------------------------------------------------------

DETECTOR_WINDOWS = 24  # change points considered: the last two minutes of 5 s windows
# The share of a rule's level the pooled test gets; the detector has the rest. The pooled test carries the
# judge's power for a breach present from the start (its threshold is ln(1/alpha)); the detector's threshold
# is ln(N/alpha) with N the horizon in windows, so giving it a fifth costs it ln 5 = 1.6 nats on ~12.
POOLED_SHARE = 0.8
# A bucket may lean on a decisive earlier window (one whose own data prove the rule broken) only if its own
# log e-value reaches this share of the pooled threshold: with 30 requests at 0.99, 6 of them above T. A
# healthy window (3 % above T) has that with probability 3e-4 — the chance, per spike, that the window after
# it becomes a second failing bucket; a window of a breach that puts 20 % above T has it with probability 0.58.
OWN_SHARE = 0.5
# A shock both arms share: last_good significantly worse than in its own windows just before (the candidate's
# failure in that window is then not proven its own). Latency quantiles this many times slower, the error
# rate this much higher, recall this much lower. A broker outage's backlog drain made last_good 5x slower.
SHOCK_RATIO = 1.5
SHOCK_ERROR_OFFSET = 0.01
SHOCK_RECALL_OFFSET = -0.05
RECOVERY_WINDOWS = 2  # last_good healthy this many windows in a row: a shared shock is over
# Does the candidate cause the shocks (its queries loading a backend both arms share)? Each resume is a trial:
# does a shared shock start again within RECURRENCE_WINDOWS windows? Assumption: the platform's own shocks
# start at most once per SHOCK_BASE_WINDOWS windows (one per 5 min), independently of the candidate — so a
# quick return has probability at most p0 = 1 - (1 - 1/60)^3 = 0.049 per trial. A candidate that causes them
# brings them back at once (alternative RECURRENCE_P1). The product of the trials' likelihood ratios (18.3
# for a quick return, 0.105 for none) is an e-process under that null (each factor has mean <= 1 for any
# onset rate <= 1/60), so by Ville the candidate is blamed with probability <= 1 - confidence: two quick
# returns in a row are needed, a quiet resume between them nearly cancels one.
RECURRENCE_WINDOWS = 3
SHOCK_BASE_WINDOWS = 60
RECURRENCE_P1 = 0.9
RECURRENCE_P0 = 1.0 - (1.0 - 1.0 / SHOCK_BASE_WINDOWS) ** RECURRENCE_WINDOWS
BASELINE_RECENT = 3  # last_good windows seen in the last slots: wait for the same slot's before judging


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
class _Decisive:
    """The windows of the current regime whose own data prove a rule broken (each decisive on its own), pooled:
    the evidence a later bucket may not lean on (unless its own data carry a share, OWN_SHARE)."""

    stats: WindowStats
    starts: list[int]
    # Of those, the windows whose verdict was ``shared`` (a shock both arms share): left out of the pool like the
    # decisive ones, and out of the detector's segments altogether (they are no evidence of the candidate's fault).
    shared: list[int] = field(default_factory=list)

    def state(self) -> DecisiveState:
        return DecisiveState(self.stats.to_dict(), list(self.starts), list(self.shared))


# -- the checkpoint ---------------------------------------------------------------------------------------------
#
# What the SLO agent persists per deployment (its table entry; canary.pipeline.decisions.DecisionStep.state)
# and restores after a restart or rebalance, declared once. Window statistics and the policy stay JSON
# objects here: their encodings belong to canary.core.aggregations (WindowStats) and the slo grammar
# (SLOPolicy.from_dict), which read them after this declaration has checked the rest. A checkpoint written
# before the change detector (no regime_*, recent, decisive, last_good_recent) restores with those empty. One
# written before ``decisive`` carries ``strongest`` (the one window of the regime with the most evidence): it
# restores as that window alone, decisive — a later bucket may not lean on it, which can only slow a decision.

StartKey = Annotated[str, Meta(pattern=r"^-?[0-9]{1,19}$", description="a window start, epoch ms, as text")]
StatsState = JSONDict  # WindowStats.to_dict()


class StrongestState(msgspec.Struct, frozen=True):
    """Read from checkpoints written before :class:`DecisiveState`; never written."""

    log_e: float
    start: int
    stats: StatsState


class DecisiveState(msgspec.Struct, frozen=True):
    stats: StatsState
    starts: list[int]
    shared: list[int] = []  # absent from checkpoints written before it


Sum = Annotated[float, Meta(ge=0.0, le=1e300)]  # finite and non-negative (NaN is refused too)


class JudgeState(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`DeploymentJudge` as its checkpoint carries it (``to_dict`` / ``from_dict``)."""

    deployment_id: Annotated[str, Meta(min_length=1)]
    policy: JSONDict  # SLOPolicy.to_dict()
    candidate: StatsState
    baseline: StatsState
    candidate_windows: Count
    last_judged_start: int | None
    last_baseline_start: int | None
    pending_baseline: dict[StartKey, StatsState]
    baseline_values: dict[StartKey, dict[str, float | None]]
    waiting: list[tuple[JSONDict, int]]  # (WindowResult.to_dict(), arrival ms)
    streaks: dict[str, list[JSONDict]]
    insufficient_windows: Count
    insufficient_samples: Count
    rolled_back: bool
    pauses: Count
    baseline_wait_ms: Count = 2000
    regime_start_ms: int | None = None
    regime_index: Count = 0
    next_regime_ms: int | None = None
    recent: list[tuple[int, StatsState]] = []
    decisive: dict[str, DecisiveState] = {}
    strongest: dict[str, StrongestState] | None = None  # older checkpoints only
    last_good_recent: dict[StartKey, StatsState] = {}
    # Per rule: the observed and expected spread across user groups, summed over both arms' windows, and how many.
    clustering: dict[str, tuple[Sum, Sum, Sum]] = {}
    # Free-form (the shock's rule, state and windows); anything but an object reads as no shock, as before.
    shock: Any = None


def _all_fragments(d: JSONDict) -> bool:
    """Whether every window statistics of a checkpoint (:meth:`DeploymentJudge._checkpoint`) has its fragment."""
    return (
        d["candidate"] is not None
        and d["baseline"] is not None
        and all(v is not None for v in d["pending_baseline"].values())
        and all(w is not None for _, w in d["recent"])
        and all(v is not None for v in d["last_good_recent"].values())
    )


@dataclass
class DeploymentJudge:
    """The SLO agent's state and logic for one deployment (checkpointed with ``to_dict``)."""

    deployment_id: str
    policy: SLOPolicy
    candidate: WindowStats = field(default_factory=WindowStats)  # pooled since the current regime began
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
    # The regime the pooled evidence belongs to (a rollout step is a new one), its start and number.
    regime_start_ms: int | None = None
    regime_index: int = 0
    next_regime_ms: int | None = None  # a step that began: the regime changes at the first window after it
    recent: list[tuple[int, WindowStats]] = field(default_factory=list)  # the detector's windows, oldest first
    decisive: dict[str, _Decisive] = field(default_factory=dict)
    last_good_recent: dict[int, WindowStats] = field(default_factory=dict)  # last_good's windows by start
    shock: JSONDict | None = None  # a shock shared with last_good: its rule, state and windows
    # Per rule, the observed and expected spread across user groups summed over every window of both arms since the
    # start, and the number of those windows: how much one user's requests cluster (canary.core.evidence).
    clustering: dict[str, tuple[float, float, float]] = field(default_factory=dict)

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

    def begin_regime(self, start_ms: int) -> None:
        """A rollout step began at ``start_ms`` (the ledger's instant): windows starting at or after it are a
        new regime, whose pooled evidence starts from nothing."""
        if (self.regime_start_ms is None or start_ms > self.regime_start_ms) and (
            self.next_regime_ms is None or start_ms > self.next_regime_ms
        ):
            self.next_regime_ms = start_ms

    def _take_baseline(self, window: WindowResult) -> None:
        start = window.window_start_ms
        if self.last_baseline_start is not None and start <= self.last_baseline_start:
            return
        stats = window_stats(window)
        self._cluster(stats)
        self.last_good_recent[start] = stats
        while len(self.last_good_recent) > DETECTOR_WINDOWS:
            del self.last_good_recent[min(self.last_good_recent)]
        if not self.policy.has_relative or start in self.pending_baseline:
            return
        self.pending_baseline[start] = stats
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

    def _baseline_ready(self, start: int, window_ms: int) -> bool:
        if self.policy.has_relative:
            newest = max(self.pending_baseline, default=self.last_baseline_start)
            return newest is not None and newest >= start
        # Absolute rules: the same slot's last_good window tells a shared shock from the candidate's own
        # failure. Waited for only while last_good is publishing (at 100 % weight it never comes).
        seen = [s for s in self.last_good_recent if s >= start - BASELINE_RECENT * window_ms]
        return not seen or max(seen) >= start

    def _release(self, now_ms: int, *, force: bool) -> list[Judgement]:
        out: list[Judgement] = []
        while self.waiting:
            window, arrived = self.waiting[0]
            size = max(1, window.window_end_ms - window.window_start_ms)
            if not (
                self._baseline_ready(window.window_start_ms, size)
                or (force and now_ms - arrived >= self.baseline_wait_ms)
            ):
                break
            self.waiting.pop(0)
            out.append(self._judge(window, now_ms))
        return out

    # -- judging ----------------------------------------------------------------------------------------------
    def _alphas(self, rule: SLORule) -> tuple[float, float, float]:
        """(pooled, detector, baseline) levels of one rule. Its 1 - confidence, for a relative rule, goes half to
        last_good's bounds (one bound, shared by both paths) and half to the tests; the tests' part is split
        between the two paths (see POOLED_SHARE), the pooled share again over the regimes (each regime's pool
        is its own test). The failure chances add up to at most 1 - confidence."""
        alpha = rule.alpha / (2.0 if rule.relative else 1.0)
        return alpha * POOLED_SHARE / max(1, self.policy.regimes), alpha * (1.0 - POOLED_SHARE), alpha

    def _detector_needed(self, alpha: float, window_ms: int) -> float:
        horizon = max(1, math.ceil(self.policy.horizon_s * 1000 / max(1, window_ms)))
        return math.log(horizon / alpha)

    def _enter_regime(self, start: int) -> None:
        if self.next_regime_ms is None or start < self.next_regime_ms:
            return
        self.regime_start_ms = self.next_regime_ms
        self.next_regime_ms = None
        self.regime_index += 1
        self.candidate = WindowStats()
        self.decisive = {}

    def _judge(self, window: WindowResult, now_ms: int) -> Judgement:
        start = window.window_start_ms
        window_ms = max(1, window.window_end_ms - window.window_start_ms)
        self.last_judged_start = start
        self._enter_regime(start)
        stats = window_stats(window)
        last_good_now = self.last_good_recent.get(start)
        if self.policy.has_relative:
            self._pool_baseline_until(start)
        self._cluster(stats)
        self.candidate = self.candidate.merge(stats)
        self.candidate_windows += 1
        self.recent.append((start, stats))
        del self.recent[:-DETECTOR_WINDOWS]
        detector_windows = list(self.recent)
        baseline_now = self.baseline_values.get(start, {})
        verdicts: list[RuleVerdict] = []
        quiet: set[str] = set()  # rules without a value in this window (see rule_window_n)
        shared: list[tuple[SLORule, RuleVerdict, WindowStats | None]] = []
        for rule in self.policy.rules:
            if rule.method == "point":
                verdicts.append(judge_window(rule, window, baseline_now.get(rule.metric)))
                continue
            if rule.metric == "response_count":
                v = judge_window(rule, window)
                verdicts.append(
                    msgspec.structs.replace(v, evidence={**(v.evidence or {}), "windows": self.candidate_windows})
                )
                continue
            v, reference = self._judge_rule(rule, window, stats, detector_windows, last_good_now, window_ms)
            if v.outcome == "shared":
                shared.append((rule, v, reference))
            if rule_window_n(rule, stats) == 0 and window.response_count > 0:
                quiet.add(rule.name)
            verdicts.append(v)
        judged = msgspec.structs.replace(window, verdicts=tuple(verdicts))
        n = window.response_count
        for rule, v in zip(self.policy.rules, verdicts, strict=True):
            if v.outcome == "fail":
                streak = self.streaks.setdefault(rule.name, [])
                streak.append(_evidence_entry(judged, v))
                del streak[:-MAX_EVIDENCE]
            elif rule.name in quiet or v.outcome == "shared":
                # Nothing new about the candidate's own fault: its streak neither grows nor breaks.
                if v.outcome == "shared":
                    self._leave_out(rule.name, stats, start, shared=True)
                continue
            elif v.outcome == "pass" or (v.outcome == "inconclusive" and n > 0 and rule.method != "point"):
                self.streaks.pop(rule.name, None)
        decision = self._rollback(judged) if not self.rolled_back else None
        if decision is None and not self.rolled_back:
            decision = self._shock(judged, shared, last_good_now)
        if decision is None:
            decision = self._low_traffic(judged, verdicts)
        else:
            self.insufficient_windows = self.insufficient_samples = 0
        streaks = {r.name: len(self.streaks.get(r.name, [])) for r in self.policy.rules}
        return Judgement(judged, streaks, self.insufficient_windows, decision, now_ms)

    def _cluster(self, stats: WindowStats) -> None:
        """Add one window (either arm: they share the users' habits) to every sequential rule's clustering sums."""
        for rule in self.policy.rules:
            if rule.method == "point" or rule.metric == "response_count":
                continue
            observed, expected = clustering_spread(rule, stats)
            if expected > 0:
                old_observed, old_expected, windows = self.clustering.get(rule.name, (0.0, 0.0, 0.0))
                self.clustering[rule.name] = (old_observed + observed, old_expected + expected, windows + 1.0)

    def _leave_out(self, rule: str, stats: WindowStats, start: int, *, shared: bool = False) -> None:
        """Leave one window out of the evidence later buckets of ``rule`` may lean on: it is decisive on its own, or
        (``shared``) its data are the platform's shock, not evidence against the candidate — then it also leaves
        the detector's segments. Without that, the healthy windows after a shock broke the rule on their point
        estimates and failed on the detector's shock-filled segments, two in a row (bench_decisions' shock row at
        7adf76a: 6 of 500 healthy canaries rolled back)."""
        decisive = self.decisive.get(rule)
        if decisive is None:
            self.decisive[rule] = _Decisive(stats, [start], [start] if shared else [])
            return
        if start not in decisive.starts:
            decisive.stats = decisive.stats.merge(stats)
            decisive.starts = [*decisive.starts, start][-MAX_EVIDENCE:]
        if shared and start not in decisive.shared:
            decisive.shared = [*decisive.shared, start][-MAX_EVIDENCE:]

    def previous_figures(self) -> dict[str, float]:
        """last_good's figure for each relative rule's metric, pooled over every window of it this judge took
        (the bake judges a promoted config against these: canary.core.bake)."""
        if self.baseline.count == 0:
            return {}
        window = {"stats": self.baseline.to_dict(), **_summary(self.baseline)}
        values = {}
        for rule in self.policy.rules:
            if rule.relative:
                value = window_point_value(rule.metric, window, rule.custom)
                if value is not None and math.isfinite(value):
                    values[rule.metric] = float(value)
        return values

    def dispersion(self, rule: SLORule) -> float:
        """The rule's design effect so far (1: requests as good as independent)."""
        return dispersion(*self.clustering.get(rule.name, (0.0, 0.0, 0.0)))

    def _judge_rule(
        self,
        rule: SLORule,
        window: WindowResult,
        stats: WindowStats,
        detector_windows: list[tuple[int, WindowStats]],
        last_good_now: WindowStats | None,
        window_ms: int,
    ) -> tuple[RuleVerdict, WindowStats | None]:
        """One sequential rule on one window: the bucket fails when it breaks the rule on its own data and the
        pooled evidence of its regime, or the change detector, is significant — neither resting on other decisive
        windows (no earlier spike makes this bucket fail)."""
        value = window_point_value(rule.metric, window, rule.custom)
        alpha_pool, alpha_detect, alpha_base = self._alphas(rule)
        baseline = self.baseline if rule.relative else None
        phi = self.dispersion(rule)
        test = replace(RuleTest.prepare(rule, baseline, alpha_pool, baseline_alpha=alpha_base), dispersion=phi)
        pooled = pooled_evidence(test, self.candidate)
        own = test.sample(stats)
        own_e = test.log_e_fail(own)
        figure = test.estimate(own)
        figure_name = "window_mean" if test.kind == "mean" else "window_rate"
        evidence: JSONDict = {
            **pooled.evidence,
            "windows": self.candidate_windows,
            "regime": self.regime_index,
            "regime_start_ms": self.regime_start_ms,
            figure_name: figure,
            "window_n": stats.count,
            "window_log_e_fail": _finite(own_e),
            "dispersion": phi,
        }
        # Decisive windows (their own data prove the rule broken) must not make other buckets fail: the pooled
        # evidence has to hold without them too. Windows that are not decisive on their own pool as they are.
        decisive = self.decisive.get(rule.name)
        robust_e = pooled.log_e_fail
        if decisive is not None:
            everything = test.sample(self.candidate)
            spikes = test.sample(decisive.stats)
            if everything is not None and spikes is not None:
                robust_e = test.log_e_fail(everything - spikes)  # type: ignore[operator]
        evidence["log_e_fail_without_decisive"] = _finite(robust_e)
        if own is not None and own_e >= test.log_needed:
            self._leave_out(rule.name, stats, window.window_start_ms)
        detector_test = replace(test, alpha=alpha_detect)  # the same thresholds, its own level
        # A window is left out of the detector's robust reading when it alone reaches the detector's threshold —
        # what alone would trigger the detector — as the pool leaves out what alone reaches the pool's. At the
        # pool's (lower) threshold a breach's own stronger windows (8 of 30 above T at p95 1.5 T: 39 % of them)
        # were left out too, and a late breach waited a window longer for one that carried its share (median
        # 31 -> 26 s; rare x3 windows, ~40 nats each, are left out either way).
        needed_detect = self._detector_needed(alpha_detect, window_ms)
        shared = set(decisive.shared) if decisive is not None else set()
        mine = [w for s, w in detector_windows if s not in shared]  # a shared shock is no evidence of the candidate's
        reading = detect(detector_test, mine, needed_detect, needed_detect)
        evidence["detector"] = reading.to_dict()

        def verdict(outcome: Outcome, reason: str) -> RuleVerdict:
            return RuleVerdict(
                rule.name, rule.metric, rule.operator, float(rule.threshold), value, outcome, reason, evidence
            )

        shown = f"{figure_name}={'-' if figure is None else format(figure, '.4f')}"
        if window.response_count == 0:
            return verdict(
                "inconclusive", f"no candidate outcomes in this window (pooled: {pooled.outcome}, {pooled.reason})"
            ), None
        if own is None:
            if test.kind == "none":
                return verdict("inconclusive", pooled.reason), None
            return verdict(
                "inconclusive", f"no {rule.metric} values in this window (pooled: {pooled.outcome}, {pooled.reason})"
            ), None
        breaks = test.breaks(own)
        # Leaning on a decisive earlier window is allowed when this window's own data carry a share of the
        # evidence a window alone would need: a second bucket of a real breach usually does, the healthy
        # window after a spike almost never (OWN_SHARE).
        own_carries = own_e >= OWN_SHARE * test.log_needed
        # Without the decisive windows, the rest of the regime must still carry half the threshold (as this window's
        # own data may instead): after a spike in a healthy canary the rest points the other way, in a breach it
        # goes on growing. Asking the rest for the whole threshold again cost a marginal breach (p95 1.25 T) ~8
        # points of "within 60 s"; asking only log e >= 0 let a spike in the 2nd window plus 6 of 60 slow
        # requests around it fail the 3rd (rare x3: 3 of 500 against 2 of 500; bench_decisions probes). The
        # guarantee is the pooled test's either way: these conditions only remove failures.
        pooled_alarm = pooled.log_e_fail >= test.log_needed and (robust_e >= OWN_SHARE * test.log_needed or own_carries)
        if breaks and (pooled_alarm or reading.alarms(own_carries)):
            path = "pooled" if pooled_alarm else "detector"
            evidence["path"] = path
            reason = (
                pooled.reason
                if pooled_alarm
                else f"{shown}: changed in a recent window (detector log e {reading.log_e:.2f} of {reading.needed:.2f})"
            )
            shock = self._last_good_shock(rule, window.window_start_ms, alpha_pool)
            if shock is not None:
                info, reference = shock
                evidence["last_good_shock"] = info
                return (
                    verdict(
                        "shared",
                        f"{shown} breaks it, but last_good is hit too in this window ({info['text']}): "
                        "a shock both arms share, not proven the candidate's fault",
                    ),
                    reference,
                )
            return verdict("fail", reason), None
        if breaks:
            if pooled.log_e_fail >= test.log_needed:
                why = f"pooled evidence rests on earlier decisive windows (without them log e {_finite(robust_e):.2f})"
                return verdict(
                    "inconclusive", f"this window breaks it ({shown}) but {why}; pooled: {pooled.reason}"
                ), None
            return verdict(
                "inconclusive", f"this window breaks it ({shown}); not significant yet: {pooled.reason}"
            ), None
        if pooled.outcome == "pass":
            return verdict("pass", pooled.reason), None
        if pooled.outcome == "fail":
            return verdict("inconclusive", f"this window does not break it ({shown}); pooled: {pooled.reason}"), None
        return verdict("inconclusive", pooled.reason), None

    def _last_good_shock(self, rule: SLORule, start: int, alpha: float) -> tuple[JSONDict, WindowStats] | None:
        """Is last_good, in the window starting at ``start``, significantly worse on ``rule``'s metric than in
        its own windows before (a shock both arms share)? The figures if so, else None.

        Tested like a relative rule of last_good against its own recent past (up to DETECTOR_WINDOWS windows
        before this one but for the rule's last ``consecutive_buckets``, at least two): latency quantiles
        ``SHOCK_RATIO`` times slower, error rate ``SHOCK_ERROR_OFFSET`` higher, recall ``SHOCK_RECALL_OFFSET``
        lower, each with anytime-valid evidence at the pooled path's level. Relative rules need no such test
        (they compare the arms in the same window), and custom metrics have none (their scales are the
        preset's)."""
        if rule.relative or rule.custom is not None:
            return None
        now = self.last_good_recent.get(start)
        if now is None:
            return None
        # Not the last windows right before this one: a shock may have begun there while the candidate rode it
        # through (not failing, so nothing was paused), and last_good compared with a past holding the shock
        # no longer looks worse — the candidate's next shocked windows became its own failing buckets.
        before = [s for t, s in sorted(self.last_good_recent.items()) if t < start][: -rule.consecutive_buckets]
        kept = WindowStats.from_dict(self.shock["reference"]) if self.shock and self.shock.get("reference") else None
        if kept is not None and kept.count > 0:
            # After a shock, last_good is compared with what it was before the first one (its recent windows
            # hold the shock itself).
            before_count = -1
            reference = kept
        elif kept is not None or len(before) < 2:
            # No history to compare with (a shock as the deployment starts, or after one that began so): the
            # issue's own criterion needs none — last_good breaks the same absolute rule, with evidence.
            shocked, info = _shock_test(rule, now, None, alpha)
            return ({**info, "reference_windows": 0}, WindowStats()) if shocked else None
        else:
            before_count = len(before)
            reference = before[0]
            for s in before[1:]:
                reference = reference.merge(s)
        shocked, info = _shock_test(rule, now, reference, alpha)
        if not shocked:
            return None
        return {**info, "reference_windows": before_count}, reference

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

    # -- shocks shared with last_good -------------------------------------------------------------------------
    def _shock(
        self,
        window: WindowResult,
        shared: list[tuple[SLORule, RuleVerdict, WindowStats | None]],
        last_good_now: WindowStats | None,
    ) -> Decision | None:
        """A shock both arms share stops candidate traffic (pause) until last_good recovers (resume). Whether
        shocks come back as soon as the candidate resumes is scored per resume (see RECURRENCE_WINDOWS);
        when that evidence is significant the candidate is rolled back, otherwise every shock is a pause."""
        start = window.window_start_ms
        shock = self.shock
        # A resume not yet scored as a trial: a shock within RECURRENCE_WINDOWS is a quick return, none is quiet.
        pending = shock if shock is not None and shock.get("state") == "resumed" and "trial" not in shock else None
        quick = pending is not None and start - int(pending["resumed_at"]) <= RECURRENCE_WINDOWS * _window_ms(window)
        if pending is not None and not quick:
            # A resume the shock did not follow quickly: a trial against the candidate causing them.
            pending["trial"] = "quiet"
            pending["log_e"] = float(pending.get("log_e", 0.0)) + math.log(
                (1.0 - RECURRENCE_P1) / (1.0 - RECURRENCE_P0)
            )
        if shared:
            rules = [r.name for r, _, _ in shared]
            entries = [_evidence_entry(window, v) for _, v, _ in shared]
            if shock is not None and shock.get("state") == "paused":
                return None  # already stopped: candidate windows now are empty, this one was in flight
            log_e = float(shock.get("log_e", 0.0)) if shock is not None else 0.0
            if quick:
                assert shock is not None
                log_e += math.log(RECURRENCE_P1 / RECURRENCE_P0)
                needed = max(math.log(1.0 / (1.0 - r.confidence)) for r, _, _ in shared)
                if log_e >= needed:
                    self.rolled_back = True
                    self.shock = {**shock, "state": "blamed", "returned_at": start, "log_e": log_e}
                    return Decision(
                        deployment_id=self.deployment_id,
                        rule=",".join(rules),
                        reason=(
                            f"shared shock returned {(start - int(shock['resumed_at'])) // 1000} s after the "
                            f"candidate resumed ({', '.join(rules)} broken on both arms again), as after earlier "
                            f"resumes: evidence e = {math.exp(log_e):.0f} >= {math.exp(needed):.0f} that the "
                            "candidate causes the shocks"
                        ),
                        evidence={"rules": rules, "windows": entries, "first_shock": shock, "log_e": log_e},
                        window_id=window.window_id,
                        command_id=rollback_command_id(self.deployment_id),
                        type="rollback",
                    )
            episode = (int(shock.get("episode", 0)) if shock is not None else 0) + 1
            # What last_good was before the shock: its recovery is judged against it.
            reference = next((ref for _, _, ref in shared if ref is not None), WindowStats())
            self.shock = {
                "state": "paused",
                "rules": rules,
                "since": start,
                "episode": episode,
                "healthy": 0,
                "reference": reference.to_dict(),
                "log_e": log_e,
            }
            return Decision(
                deployment_id=self.deployment_id,
                rule=",".join(rules),
                reason=(
                    f"shared shock: last_good breaks {', '.join(rules)} too in the same window; the candidate is not "
                    "proven at fault — candidate traffic stops until last_good recovers"
                ),
                evidence={"rules": rules, "windows": entries, "episode": episode},
                window_id=window.window_id,
                command_id=shock_pause_command_id(self.deployment_id, start),
                type="shock",
            )
        if shock is None or shock.get("state") != "paused":
            return None
        # Paused by a shared shock: decide from what last_good does next.
        if last_good_now is None:
            return None
        reference = WindowStats.from_dict(shock["reference"])
        shocked_rules = [r for r in self.policy.rules if r.name in shock.get("rules", [])]
        # Healthy: back within the margin of what it was before the shock (no evidence needed to end it).
        healthy = all(
            not _shock_test(r, last_good_now, reference, self._alphas(r)[0])[1]["worse"] for r in shocked_rules
        )
        shock["healthy"] = int(shock.get("healthy", 0)) + 1 if healthy else 0
        if shock["healthy"] < RECOVERY_WINDOWS:
            return None
        self.shock = {**shock, "state": "resumed", "resumed_at": start}
        return Decision(
            deployment_id=self.deployment_id,
            rule=",".join(shock.get("rules", [])),
            reason=(
                f"last_good healthy again for {RECOVERY_WINDOWS} windows: the shared shock was the platform's; "
                "candidate traffic resumes"
            ),
            evidence={"rules": shock.get("rules", []), "since": shock.get("since"), "episode": shock.get("episode")},
            window_id=window.window_id,
            command_id=shock_resume_command_id(self.deployment_id, start),
            type="recover",
        )

    def _low_traffic(self, window: WindowResult, verdicts: list[RuleVerdict]) -> Decision | None:
        n = window.response_count
        limit = self.policy.inconclusive_limit
        if n == 0 or self.rolled_back:
            return None
        starved = (
            n < self.policy.min_samples
            and not any(v.outcome in ("fail", "shared") for v in verdicts)
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
    def state(self) -> JudgeState:
        return JudgeState(
            deployment_id=self.deployment_id,
            policy=self.policy.to_dict(),
            candidate=self.candidate.shared_dict(),
            baseline=self.baseline.shared_dict(),
            candidate_windows=self.candidate_windows,
            last_judged_start=self.last_judged_start,
            last_baseline_start=self.last_baseline_start,
            pending_baseline={str(k): v.shared_dict() for k, v in sorted(self.pending_baseline.items())},
            baseline_values={str(k): v for k, v in sorted(self.baseline_values.items())},
            waiting=[(w.to_dict(), a) for w, a in self.waiting],
            streaks=self.streaks,
            insufficient_windows=self.insufficient_windows,
            insufficient_samples=self.insufficient_samples,
            rolled_back=self.rolled_back,
            pauses=self.pauses,
            baseline_wait_ms=self.baseline_wait_ms,
            regime_start_ms=self.regime_start_ms,
            regime_index=self.regime_index,
            next_regime_ms=self.next_regime_ms,
            recent=[(s, w.shared_dict()) for s, w in self.recent],
            decisive={k: v.state() for k, v in sorted(self.decisive.items())},
            last_good_recent={str(k): v.shared_dict() for k, v in sorted(self.last_good_recent.items())},
            clustering=dict(sorted(self.clustering.items())),
            shock=self.shock,
        )

    def to_dict(self) -> JSONDict:
        """The checkpoint, for a serializer: the window statistics in it are the judge's shared dicts (the same
        objects from one call to the next), which a caller must not change."""
        # Every window statistics (pooled, pending, recent) goes in as its shared dict, not through to_builtins
        # (which would copy it, sketch bins and all): they are most of the checkpoint, and the pending and recent
        # ones the same from one window to the next. The SLO agent writes this after every window it receives.
        return self._checkpoint(WindowStats.shared_dict)

    def to_json(self) -> bytes:
        """:meth:`to_dict` as ``jsonio.dumps_as_json_would`` writes it (the SLO agent's table entry, after every
        window): each window statistics goes in as its JSON, encoded once and kept (its recent windows are the
        same from one window to the next: encoding them again was a third of the agent's time at 41 window keys)."""
        fragments = self._checkpoint(WindowStats.shared_fragment)
        out = jsonio.exact_bytes(fragments) if _all_fragments(fragments) else None
        return out if out is not None else jsonio.dumps_as_json_would(self.to_dict())

    def _checkpoint(self, encoded: Callable[[WindowStats], Any]) -> JSONDict:
        """The checkpoint with each window statistics as ``encoded`` gives it."""
        st = self.state()
        d: JSONDict = msgspec.to_builtins(
            msgspec.structs.replace(st, recent=[], last_good_recent={}, candidate={}, baseline={}, pending_baseline={})
        )
        d["waiting"] = [list(pair) for pair in d["waiting"]]  # to_builtins keeps tuples; the JSON has lists
        d["candidate"] = encoded(self.candidate)  # assigned in place: the keys keep their order
        d["baseline"] = encoded(self.baseline)
        d["pending_baseline"] = {str(k): encoded(v) for k, v in sorted(self.pending_baseline.items())}
        d["recent"] = [[s, encoded(w)] for s, w in self.recent]
        d["last_good_recent"] = {str(k): encoded(v) for k, v in sorted(self.last_good_recent.items())}
        del d["strongest"]  # read from older checkpoints, never written
        return d

    @classmethod
    def from_state(cls, st: JudgeState) -> DeploymentJudge:
        """The judge a checkpoint describes; InvalidEvent if a nested record (policy, window, statistics)
        is malformed."""
        stats = WindowStats.from_dict
        judge = cls(
            deployment_id=st.deployment_id,
            policy=SLOPolicy.from_dict(st.policy),
            candidate=stats(st.candidate),
            baseline=stats(st.baseline),
            candidate_windows=st.candidate_windows,
            last_judged_start=st.last_judged_start,
            last_baseline_start=st.last_baseline_start,
            pending_baseline={int(k): stats(v) for k, v in st.pending_baseline.items()},
            baseline_values={int(k): dict(v) for k, v in st.baseline_values.items()},
            waiting=[(WindowResult.from_dict(w), a) for w, a in st.waiting],
            streaks={k: list(v) for k, v in st.streaks.items()},
            insufficient_windows=st.insufficient_windows,
            insufficient_samples=st.insufficient_samples,
            rolled_back=st.rolled_back,
            pauses=st.pauses,
            baseline_wait_ms=st.baseline_wait_ms,
            regime_start_ms=st.regime_start_ms,
            regime_index=st.regime_index,
            next_regime_ms=st.next_regime_ms,
            recent=[(s, stats(w)) for s, w in st.recent],
            decisive={k: _Decisive(stats(v.stats), list(v.starts), list(v.shared)) for k, v in st.decisive.items()},
            last_good_recent={int(k): stats(v) for k, v in st.last_good_recent.items()},
            clustering={k: (float(o), float(e), float(w)) for k, (o, e, w) in st.clustering.items()},
            shock=dict(st.shock) if isinstance(st.shock, Mapping) else None,
        )
        for name, old in (st.strongest or {}).items():  # a checkpoint from before ``decisive``
            rule = next((r for r in judge.policy.rules if r.name == name), None)
            if rule is not None and name not in judge.decisive and old.log_e >= math.log(1.0 / judge._alphas(rule)[0]):
                judge.decisive[name] = _Decisive(stats(old.stats), [old.start])
        return judge

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeploymentJudge:
        """A checkpoint as :meth:`to_dict` writes it (today's or an older one); InvalidEvent naming the
        field otherwise."""
        state = structs.convert(JudgeState, d, "DeploymentJudge")
        try:
            return cls.from_state(state)
        except InvalidEvent as exc:  # a nested record: say whose checkpoint it was in
            raise InvalidEvent(f"DeploymentJudge(deployment_id={state.deployment_id!r:.200}): {exc}") from None


def _shock_test(rule: SLORule, now: WindowStats, reference: WindowStats | None, alpha: float) -> tuple[bool, JSONDict]:
    """Is last_good's window ``now`` significantly worse on ``rule``'s metric than ``reference`` (its own
    earlier windows)? With no reference (none, or empty: a shock as the deployment starts), does it break
    ``rule`` itself? (shocked, the figures). The figures' ``worse`` says whether the window's own value is past
    the margin at all (a recovered last_good is not)."""
    now_value = window_point_value(rule.metric, {"stats": now.to_dict(), **_summary(now)})
    fmt = value_format(rule.metric)
    if reference is None or reference.count == 0:
        test = RuleTest.prepare(rule, None, alpha)
        before_value = None
        shown = f"{format(now_value or 0, fmt)} breaks {rule.name} itself, with no earlier window to compare"
    else:
        if rule.metric in QUANTILE_METRICS:
            margin = SHOCK_RATIO
        elif rule.metric == "error_rate":
            margin = SHOCK_ERROR_OFFSET
        else:
            margin = SHOCK_RECALL_OFFSET
        self_relative = SLORule(
            f"{rule.name}:last_good_shock", rule.metric, rule.operator, margin, relative_to="last_good"
        )
        test = RuleTest.prepare(self_relative, reference, alpha)
        before_value = window_point_value(rule.metric, {"stats": reference.to_dict(), **_summary(reference)})
        shown = f"{format(before_value or 0, fmt)} → {format(now_value or 0, fmt)}"
    sample = test.sample(now)
    log_e = test.log_e_fail(sample)
    worse = test.breaks(sample)
    info: JSONDict = {
        "metric": rule.metric,
        "before": before_value,
        "now": now_value,
        "n": now.count,
        "log_e": _finite(log_e),
        "log_e_needed": test.log_needed,
        "worse": worse,
        "text": f"last_good {rule.metric} {shown} (n={now.count}, log e {_finite(log_e):.1f})",
    }
    return sample is not None and worse and log_e >= test.log_needed, info


def _summary(stats: WindowStats) -> JSONDict:
    """The window fields ``window_point_value`` reads, from statistics alone (p95 and recall from them)."""
    return {
        "response_count": stats.count,
        "error_count": stats.error_count,
        "p95_ms": stats.sketch.quantile(0.95) if stats.count else None,
        "recall_at_10": histogram_mean(stats.recall_histogram()) if stats.recall_hist else None,
    }


def _window_ms(window: WindowResult) -> int:
    return max(1, window.window_end_ms - window.window_start_ms)


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
