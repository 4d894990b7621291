"""SLO rules, the policy a deployment is judged with, and point-estimate judging.

A rule is a statement about the candidate's traffic — ``p95_ms <= 1200``, ``recall_at_10 >= 0.30``,
``error_rate <= 0.01`` — either absolute or relative to last_good measured in the same windows
(``relative_to: last_good``). How a window is judged against it is ``method``:

* ``sequential`` (default): anytime-valid evidence pooled over the deployment's windows
  (:mod:`canary.core.evidence`, applied by :mod:`canary.core.judge`); a window fails only when the data
  give significant evidence (``confidence``) that the rule is broken.
* ``point``: the window's bare point estimate against the threshold, with a ``min_samples`` floor (the
  original rule, kept for comparison and backtests).

Rules and the deployment-level settings (``inconclusive_limit``) are resolved from a preset's ``slo``
section in exactly one place, :func:`deployment_policy`, used by the live agents, replay and reports.
"""

from __future__ import annotations

import math
import operator as op
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from canary.core.custom import MAX_CUSTOM_METRICS, CustomMetric, CustomStats
from canary.core.models import JSONDict, Outcome, RuleVerdict, WindowResult, iso_ms
from canary.errors import SHAPE_ERRORS, ConfigError, InvalidEvent

VerdictOutcome = Outcome
"""The closed set ``pass | fail | inconclusive | error``."""

METRICS: tuple[str, ...] = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "recall_at_10", "error_rate", "response_count")
QUANTILE_METRICS: dict[str, float] = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}
METHODS: tuple[str, ...] = ("sequential", "point")
BASELINES: tuple[str, ...] = ("last_good",)

DEFAULT_CONFIDENCE = 0.99
DEFAULT_ERROR_RATE = 0.01
DEFAULT_INCONCLUSIVE_LIMIT = 12
DEFAULT_MIN_SAMPLES = 20
DEFAULT_CONSECUTIVE_BUCKETS = 2
DEFAULT_HORIZON_S = 1800.0
"""How long a canary is judged for, by default: the change detector's false-alarm guarantee holds over this
span (30 minutes; the spec's advice is at least 10). A rollout plan's ``max_duration_s`` replaces it."""

_OPS: dict[str, tuple[Callable[[float, float], bool], str, str]] = {
    # operator: (holds, symbol when it holds, symbol when it does not)
    "le": (op.le, "<=", ">"),
    "lt": (op.lt, "<", ">="),
    "ge": (op.ge, ">=", "<"),
    "gt": (op.gt, ">", "<="),
}
_RULE_FIELDS = frozenset(
    {
        "name",
        "metric",
        "operator",
        "threshold",
        "consecutive_buckets",
        "min_samples",
        "confidence",
        "method",
        "relative_to",
    }
)


def value_format(metric: str) -> str:
    if metric in QUANTILE_METRICS:
        return ".1f"
    return {"recall_at_10": ".3f", "error_rate": ".4f", "response_count": "d"}[metric]


def _number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class SLORule:
    """One rule. For ``relative_to: last_good`` the threshold is a ratio for latency quantiles
    (candidate p95 <= threshold x last_good p95) and an offset for rates and recall (candidate recall >=
    last_good recall + threshold, e.g. -0.05)."""

    name: str
    metric: str
    operator: str
    threshold: float
    consecutive_buckets: int = DEFAULT_CONSECUTIVE_BUCKETS
    min_samples: int = DEFAULT_MIN_SAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "sequential"
    relative_to: str | None = None
    # A rule on a declared custom metric (slo.metrics) carries its declaration; None: a built-in metric.
    custom: CustomMetric | None = None

    def __post_init__(self) -> None:
        where = f"slo rule {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"slo rule: name must be a non-empty string, got {self.name!r}")
        if self.custom is not None:
            self._check_custom(where, self.custom)
            return
        if self.metric not in METRICS:
            raise ConfigError(f"{where}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.operator not in _OPS:
            raise ConfigError(f"{where}: operator must be one of {', '.join(_OPS)}, got {self.operator!r}")
        if not _number(self.threshold):
            raise ConfigError(f"{where}: threshold must be a finite number, got {self.threshold!r}")
        for name in ("consecutive_buckets", "min_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "consecutive_buckets" else 0):
                raise ConfigError(f"{where}: {name} must be an integer >= 1 (min_samples >= 0), got {v!r}")
        if not _number(self.confidence) or not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"{where}: confidence must be a number strictly between 0 and 1, got {self.confidence!r}")
        if self.method not in METHODS:
            raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.relative_to is not None:
            if self.relative_to not in BASELINES:
                raise ConfigError(
                    f"{where}: relative_to must be one of {', '.join(BASELINES)}, got {self.relative_to!r}"
                )
            if self.metric == "response_count":
                raise ConfigError(f"{where}: response_count cannot be judged relative to {self.relative_to}")
            if self.metric in QUANTILE_METRICS and self.threshold <= 0:
                raise ConfigError(
                    f"{where}: a relative latency threshold is a ratio and must be > 0, got {self.threshold!r}"
                )
            if self.metric not in QUANTILE_METRICS and not -1.0 <= self.threshold <= 1.0:
                raise ConfigError(
                    f"{where}: a relative {self.metric} threshold is an offset in [-1, 1], got {self.threshold!r}"
                )
        elif self.metric in ("recall_at_10", "error_rate") and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{where}: {self.metric} threshold must be in [0, 1], got {self.threshold!r}")
        elif self.metric in QUANTILE_METRICS and self.threshold <= 0:
            raise ConfigError(f"{where}: a latency threshold must be > 0 ms, got {self.threshold!r}")

    def _check_custom(self, where: str, custom: CustomMetric) -> None:
        if self.metric != custom.name or self.metric in METRICS:
            raise ConfigError(f"{where}: metric {self.metric!r} does not name its custom metric {custom.name!r}")
        if self.operator not in _OPS:
            raise ConfigError(f"{where}: operator must be one of {', '.join(_OPS)}, got {self.operator!r}")
        if not _number(self.threshold):
            raise ConfigError(f"{where}: threshold must be a finite number, got {self.threshold!r}")
        if not _number(self.confidence) or not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"{where}: confidence must be a number strictly between 0 and 1, got {self.confidence!r}")
        if self.method not in METHODS:
            raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if custom.quantile is not None and (self.operator not in ("le", "lt") or self.relative_to is not None):
            raise ConfigError(
                f"{where}: a rule on the quantile metric {custom.name} ({custom.aggregation}) must be an absolute "
                "upper bound (operator le or lt, no relative_to)"
            )
        span = 1.0 if custom.aggregation == "rate" else custom.high - custom.low
        if self.relative_to is not None:
            if self.relative_to not in BASELINES:
                raise ConfigError(f"{where}: relative_to must be one of {', '.join(BASELINES)}")
            if not -span <= self.threshold <= span:
                raise ConfigError(f"{where}: a relative {custom.name} threshold is an offset in [-{span:g}, {span:g}]")
        elif custom.aggregation == "rate" and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{where}: a rate threshold must be in [0, 1], got {self.threshold!r}")
        elif custom.aggregation == "mean" and not custom.low <= self.threshold <= custom.high:
            raise ConfigError(
                f"{where}: threshold {self.threshold:g} is outside {custom.name}'s range "
                f"[{custom.low:g}, {custom.high:g}]"
            )

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def relative(self) -> bool:
        return self.relative_to is not None

    def describe(self) -> str:
        _, symbol, _ = _OPS[self.operator]
        if self.relative_to is None:
            return f"{self.metric} {symbol} {self.threshold:g}"
        if self.metric in QUANTILE_METRICS:
            return f"{self.metric} {symbol} {self.threshold:g} x {self.relative_to}"
        return f"{self.metric} {symbol} {self.relative_to} {self.threshold:+g}"

    def to_dict(self) -> JSONDict:
        return {
            "name": self.name,
            "metric": self.metric,
            "operator": self.operator,
            "threshold": self.threshold,
            "consecutive_buckets": self.consecutive_buckets,
            "min_samples": self.min_samples,
            "confidence": self.confidence,
            "method": self.method,
            "relative_to": self.relative_to,
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, where: str = "slo.rules", custom: Mapping[str, CustomMetric] | None = None
    ) -> SLORule:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {d!r}")
        unknown = set(d) - _RULE_FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for required in ("name", "metric", "operator", "threshold"):
            if required not in d:
                raise ConfigError(f"{where}.{required}: required field is missing")
        try:
            return cls(
                name=d["name"],
                metric=d["metric"],
                operator=d["operator"],
                threshold=d["threshold"],
                consecutive_buckets=d.get("consecutive_buckets", DEFAULT_CONSECUTIVE_BUCKETS),
                min_samples=d.get("min_samples", DEFAULT_MIN_SAMPLES),
                confidence=d.get("confidence", DEFAULT_CONFIDENCE),
                method=d.get("method", "sequential"),
                relative_to=d.get("relative_to"),
                custom=_custom_for(d["metric"], custom, where),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _custom_for(metric: object, custom: Mapping[str, CustomMetric] | None, where: str) -> CustomMetric | None:
    if metric in METRICS:
        return None
    if custom and isinstance(metric, str) and metric in custom:
        return custom[metric]
    declared = ", ".join(sorted(custom or ())) or "none"
    raise ConfigError(
        f"{where}.metric: {metric!r} is neither built in ({', '.join(METRICS)}) nor declared under slo.metrics "
        f"(declared: {declared})"
    )


def default_rules() -> list[SLORule]:
    return [
        SLORule("p95_ms", "p95_ms", "le", 1200, 2),
        SLORule("recall_at_10", "recall_at_10", "ge", 0.30, 2),
        SLORule("error_rate", "error_rate", "le", DEFAULT_ERROR_RATE, 2),
    ]


@dataclass(frozen=True, slots=True)
class SLOPolicy:
    """Everything a deployment is judged with: its rules and the low-traffic limit.

    ``inconclusive_limit``: after this many candidate windows in a row that hold fewer than
    ``min_samples`` outcomes and leave a rule inconclusive, the canary is paused for insufficient data
    (0 disables). ``min_samples`` is the section-level floor. ``horizon_s``: the span the change detector's
    false-alarm guarantee is stated over (canary.core.judge); ``regimes``: how many regimes the pooled
    evidence restarts in (a rollout plan's steps: each step is judged on its own data).
    """

    rules: tuple[SLORule, ...]
    inconclusive_limit: int = DEFAULT_INCONCLUSIVE_LIMIT
    min_samples: int = DEFAULT_MIN_SAMPLES
    custom_metrics: tuple[CustomMetric, ...] = ()
    horizon_s: float = DEFAULT_HORIZON_S
    regimes: int = 1

    @property
    def has_relative(self) -> bool:
        return any(r.relative for r in self.rules)

    @property
    def latency_thresholds(self) -> tuple[float, ...]:
        return tuple(
            sorted({float(r.threshold) for r in self.rules if r.metric in QUANTILE_METRICS and not r.relative})
        )

    def to_dict(self) -> JSONDict:
        return {
            "rules": [r.to_dict() for r in self.rules],
            "inconclusive_limit": self.inconclusive_limit,
            "min_samples": self.min_samples,
            **({"metrics": [m.to_dict() for m in self.custom_metrics]} if self.custom_metrics else {}),
            "horizon_s": self.horizon_s,
            "regimes": self.regimes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SLOPolicy:
        try:
            metrics = tuple(CustomMetric.from_dict(m) for m in d.get("metrics", []))
            declared = {m.name: m for m in metrics}
            return cls(
                tuple(SLORule.from_dict(r, custom=declared) for r in d["rules"]),
                int(d["inconclusive_limit"]),
                int(d["min_samples"]),
                metrics,
                # Checkpoints from before the change detector: its defaults.
                float(d.get("horizon_s", DEFAULT_HORIZON_S)),
                int(d.get("regimes", 1)),
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"SLOPolicy: malformed ({exc!r})") from None


def default_policy() -> SLOPolicy:
    return SLOPolicy(tuple(default_rules()))


SECTION_KEYS = frozenset(
    {
        "p95_ms",
        "recall_at_10",
        "error_rate",
        "consecutive_buckets",
        "min_samples",
        "confidence",
        "method",
        "inconclusive_limit",
        "rules",
        "metrics",
        "horizon_s",
    }
)


def policy_from_slo_section(slo: Mapping[str, Any]) -> SLOPolicy:
    """The policy of a preset's ``slo`` section: shorthand thresholds plus optional explicit ``rules``.

    ``consecutive_buckets``, ``min_samples``, ``confidence`` and ``method`` at section level are defaults
    for every rule. ``error_rate`` defaults to 0.01 (write ``error_rate: null`` to drop that rule).
    """
    if not isinstance(slo, Mapping):
        raise ConfigError(f"slo: expected a mapping, got {slo!r}")
    unknown = set(slo) - SECTION_KEYS
    if unknown:
        raise ConfigError(f"slo: unknown field(s) {', '.join(sorted(unknown))}")
    common = {k: slo[k] for k in ("consecutive_buckets", "min_samples", "confidence", "method") if k in slo}
    for k in ("consecutive_buckets", "min_samples", "inconclusive_limit"):
        v = slo.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"slo.{k}: expected a non-negative integer, got {v!r}")
    if "confidence" in slo and (not _number(slo["confidence"]) or not 0 < slo["confidence"] < 1):
        raise ConfigError(f"slo.confidence: must be a number strictly between 0 and 1, got {slo['confidence']!r}")
    if "method" in slo and slo["method"] not in METHODS:
        raise ConfigError(f"slo.method: must be one of {', '.join(METHODS)}, got {slo['method']!r}")
    declared = custom_metrics_of(slo)
    rules: list[SLORule] = []
    shorthand = {"error_rate": DEFAULT_ERROR_RATE} if any(k in slo for k in ("p95_ms", "recall_at_10")) else {}
    shorthand = {**shorthand, **{k: slo[k] for k in ("p95_ms", "recall_at_10", "error_rate") if k in slo}}
    for metric, operator in (("p95_ms", "le"), ("recall_at_10", "ge"), ("error_rate", "le")):
        if metric in shorthand and shorthand[metric] is not None:
            v = shorthand[metric]
            if not _number(v):
                raise ConfigError(f"slo.{metric}: expected a number, got {v!r}")
            rules.append(
                SLORule.from_dict(
                    {"name": metric, "metric": metric, "operator": operator, "threshold": v, **common},
                    where=f"slo.{metric}",
                )
            )
    extra = slo.get("rules", [])
    if not isinstance(extra, list):
        raise ConfigError(f"slo.rules: expected a list, got {extra!r}")
    for i, r in enumerate(extra):
        merged = {**common, **r} if isinstance(r, Mapping) else r
        rules.append(SLORule.from_dict(merged, where=f"slo.rules[{i}]", custom=declared))
    if not rules:
        # A canary without rules could never roll back; an slo section naming no rule means the defaults.
        rules = [SLORule.from_dict({**r.to_dict(), **common}, where="slo") for r in default_rules()]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"slo: duplicate rule name(s) {', '.join(dupes)}")
    horizon = slo.get("horizon_s", DEFAULT_HORIZON_S)
    if not _number(horizon) or not 60 <= horizon <= 7 * 86_400:
        raise ConfigError(f"slo.horizon_s: expected seconds between 60 and 604800 (a week), got {horizon!r}")
    return SLOPolicy(
        tuple(rules),
        inconclusive_limit=slo.get("inconclusive_limit", DEFAULT_INCONCLUSIVE_LIMIT),
        min_samples=slo.get("min_samples", DEFAULT_MIN_SAMPLES),
        custom_metrics=tuple(declared.values()),
        horizon_s=float(horizon),
    )


def custom_metrics_of(slo: Mapping[str, Any]) -> dict[str, CustomMetric]:
    """``slo.metrics``: the declared custom metrics by name (ConfigError naming the entry if one is bad)."""
    raw = slo.get("metrics", [])
    if not isinstance(raw, list):
        raise ConfigError(f"slo.metrics: expected a list, got {raw!r}")
    if len(raw) > MAX_CUSTOM_METRICS:
        raise ConfigError(f"slo.metrics: at most {MAX_CUSTOM_METRICS} custom metrics, got {len(raw)}")
    declared: dict[str, CustomMetric] = {}
    for i, entry in enumerate(raw):
        metric = CustomMetric.from_dict(entry, where=f"slo.metrics[{i}]")
        if metric.name in METRICS or metric.name in declared:
            raise ConfigError(f"slo.metrics[{i}].name: {metric.name!r} is built in or declared twice")
        declared[metric.name] = metric
    return declared


def rules_from_slo_section(slo: Mapping[str, Any]) -> list[SLORule]:
    return list(policy_from_slo_section(slo).rules)


def deployment_policy(
    snapshot: Mapping[str, Any] | None, *, on_error: Callable[[str], None] | None = None
) -> SLOPolicy:
    """THE rule resolution: a deployment's candidate snapshot → its policy; defaults when it has none.

    Presets are validated before a start command is issued; an unreadable ``slo`` section here means a
    hand-written command. It is judged with the defaults rather than not at all, and ``on_error`` hears why.
    """
    slo = None if snapshot is None else snapshot.get("slo")
    policy = default_policy()
    if isinstance(slo, Mapping):
        try:
            policy = policy_from_slo_section(slo)
        except ConfigError as exc:
            if on_error is not None:
                on_error(str(exc))
    return with_plan(policy, snapshot, explicit_horizon=isinstance(slo, Mapping) and "horizon_s" in slo)


def with_plan(policy: SLOPolicy, snapshot: Mapping[str, Any] | None, *, explicit_horizon: bool = False) -> SLOPolicy:
    """The policy as the candidate's rollout plan shapes it: one regime per step, and — unless the slo
    section says otherwise — the plan's ``max_duration_s`` as the horizon."""
    section = snapshot.get("rollout") if isinstance(snapshot, Mapping) else None
    if not isinstance(section, Mapping):
        return policy
    steps = section.get("steps")
    regimes = len(steps) if isinstance(steps, list) and steps else 1
    horizon = policy.horizon_s
    limit = section.get("max_duration_s")
    if not explicit_horizon and isinstance(limit, int | float) and _number(limit) and 60 <= limit <= 7 * 86_400:
        horizon = float(limit)
    return replace(policy, regimes=regimes, horizon_s=horizon)


def aggregator_settings(policy: SLOPolicy) -> tuple[float, float, tuple[float, ...]]:
    """(latency threshold for ``slo_violations``, recall threshold, every absolute latency threshold)."""
    latency, recall = 1200.0, 0.30
    for rule in policy.rules:
        if rule.relative:
            continue
        if rule.metric == "p95_ms":
            latency = rule.threshold
        elif rule.metric == "recall_at_10":
            recall = rule.threshold
    return latency, recall, policy.latency_thresholds


def _field(window: WindowResult | Mapping[str, Any], name: str) -> Any:
    return getattr(window, name) if isinstance(window, WindowResult) else window.get(name)


def window_point_value(
    metric: str, window: WindowResult | Mapping[str, Any], custom: CustomMetric | None = None
) -> float | None:
    """The window's point estimate of ``metric`` (errors included as the aggregator counts them); for a
    declared custom metric, its aggregation over the requests that carry it."""
    if custom is not None:
        stats = custom_window_stats(window, custom.name)
        return None if stats is None else stats.value(custom)
    n = int(_field(window, "response_count") or 0)
    if metric == "response_count":
        return float(n)
    if metric == "error_rate":
        return None if n == 0 else int(_field(window, "error_count") or 0) / n
    if metric == "recall_at_10":
        v = _field(window, "recall_at_10")
        return None if v is None else float(v)
    if metric == "p95_ms":
        v = _field(window, "p95_ms")
        return None if v is None else float(v)
    stats = _field(window, "stats")
    if isinstance(stats, Mapping) and "sketch" in stats:
        from canary.core.sketch import QuantileSketch

        return QuantileSketch.from_dict(stats["sketch"]).quantile(QUANTILE_METRICS[metric])
    return None


def custom_window_stats(window: WindowResult | Mapping[str, Any], name: str) -> CustomStats | None:
    stats = _field(window, "stats")
    custom = stats.get("custom") if isinstance(stats, Mapping) else None
    if not isinstance(custom, Mapping) or name not in custom:
        return None
    return CustomStats.from_dict(custom[name])


def judge_window(rule: SLORule, window: WindowResult | Mapping[str, Any], baseline: float | None = None) -> RuleVerdict:
    """Point-estimate judging of one window (``method: point``): the window's value against the threshold,
    ``inconclusive`` below ``min_samples``. For a relative rule, ``baseline`` is last_good's value in the
    same window."""

    def verdict(outcome: Outcome, value: float | None, reason: str, threshold: float) -> RuleVerdict:
        evidence = {"method": "point", "n": samples, "threshold": threshold}
        return RuleVerdict(
            rule.name, rule.metric, rule.operator, float(rule.threshold), value, outcome, reason, evidence
        )

    n = int(_field(window, "response_count") or 0)
    samples = int(_field(window, "recall_samples") or 0) if rule.metric == "recall_at_10" else n
    if rule.custom is not None:
        own = custom_window_stats(window, rule.metric)
        samples = own.n if own is not None else 0
    threshold = float(rule.threshold)
    if rule.relative:
        if baseline is None:
            return verdict("inconclusive", None, f"no {rule.relative_to} value in this window", threshold)
        ratio = rule.metric in QUANTILE_METRICS
        threshold = baseline * rule.threshold if ratio else baseline + rule.threshold
    if rule.metric != "response_count":
        if samples == 0:
            what = "no labeled outcomes" if rule.metric == "recall_at_10" else "no responses"
            return verdict("inconclusive", None, f"{what} (n={n})", threshold)
        if samples < rule.min_samples:
            return verdict("inconclusive", None, f"too few samples: n={samples} < {rule.min_samples}", threshold)
    value = window_point_value(rule.metric, window, rule.custom)
    if value is None or math.isnan(value):
        return verdict("error", None, f"{rule.metric} missing or NaN although n={samples}: {value!r}", threshold)
    holds, ok_symbol, bad_symbol = _OPS[rule.operator]
    fmt = value_format(rule.metric)
    shown = format(int(value), "d") if fmt == "d" else format(value, fmt)
    passed = holds(value, threshold)
    text = f"{rule.metric}={shown} {ok_symbol if passed else bad_symbol} {threshold:g} (n={samples})"
    return verdict("pass" if passed else "fail", value, text, threshold)


def judge_all(rules: Iterable[SLORule], window: WindowResult | Mapping[str, Any]) -> tuple[RuleVerdict, ...]:
    return tuple(judge_window(r, window) for r in rules)


def rollback_command_id(deployment_id: str) -> str:
    """Deterministic: a redelivered window or a restarted judge issues the same command, which the
    routers then apply once. One rollback per deployment, so the deployment id is a unique suffix."""
    return f"rollback-{deployment_id}"


def pause_command_id(deployment_id: str, window_start_ms: int) -> str:
    """Deterministic per low-traffic episode: the window that reached the limit names it."""
    return f"pause-insufficient-{deployment_id}-{window_start_ms}"


SHOCK_PAUSE_PREFIX = "pause-shared-"
SHOCK_RESUME_PREFIX = "resume-shared-"


def shock_pause_command_id(deployment_id: str, window_start_ms: int) -> str:
    """Deterministic per shared shock: the window where both arms broke the rule names it."""
    return f"{SHOCK_PAUSE_PREFIX}{deployment_id}-{window_start_ms}"


def is_shock_pause(command_id: str | None, deployment_id: str) -> bool:
    """Whether ``command_id`` is the SLO agent's pause of ``deployment_id`` for a shared shock."""
    return command_id is not None and command_id.startswith(f"{SHOCK_PAUSE_PREFIX}{deployment_id}-")


def shock_resume_command_id(deployment_id: str, window_start_ms: int) -> str:
    """The SLO agent's resume after last_good recovered; a worker key may sign only this resume, and the
    ledger applies it only to a deployment paused by a shared-shock pause."""
    return f"{SHOCK_RESUME_PREFIX}{deployment_id}-{window_start_ms}"


@dataclass(frozen=True, slots=True)
class Decision:
    """A command the judge decided on (``rollback`` or ``pause``), with the numbers behind it."""

    deployment_id: str
    rule: str
    reason: str
    evidence: JSONDict
    window_id: str
    command_id: str
    type: str = "rollback"

    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "type": self.type,
            "rule": self.rule,
            "reason": self.reason,
            "evidence": self.evidence,
            "window_id": self.window_id,
            "command_id": self.command_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        try:
            return cls(
                str(d["deployment_id"]),
                str(d["rule"]),
                str(d["reason"]),
                dict(d["evidence"]),
                str(d["window_id"]),
                str(d["command_id"]),
                str(d.get("type", "rollback")),
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"Decision: malformed ({exc!r})") from None


@dataclass(frozen=True, slots=True)
class SLOViolation:
    rule_name: str
    metric: str
    metric_value: float
    threshold: float
    operator: str
    window_start: str  # ISO 8601, as in WindowResult.to_dict()
    config_name: str
    deployment_id: str | None

    def to_dict(self) -> JSONDict:
        return {
            "rule_name": self.rule_name,
            "metric": self.metric,
            "metric_value": self.metric_value,
            "threshold": self.threshold,
            "operator": self.operator,
            "window_start": self.window_start,
            "config_name": self.config_name,
            "deployment_id": self.deployment_id,
        }


class SLOMonitor:
    """The spec's programmatic API: a rule set that records every failing (window, rule).

    Candidate windows of a deployment are judged like the SLO agent judges them (pooled, anytime-valid
    evidence per :mod:`canary.core.judge`); any other window by its point estimate.
    """

    def __init__(self, rules: Iterable[SLORule] | None = None) -> None:
        self._rules: dict[str, SLORule] = {}
        self._violations: list[SLOViolation] = []
        self._judge: Any = None
        for r in default_rules() if rules is None else rules:
            self.add_slo_rule(r)

    @property
    def rules(self) -> tuple[SLORule, ...]:
        return tuple(self._rules.values())

    def add_slo_rule(self, rule: SLORule) -> None:
        if rule.name in self._rules:
            raise ConfigError(f"slo rule {rule.name!r} already exists")
        self._rules[rule.name] = rule
        self._judge = None  # pooled evidence was gathered for the old rule set

    def remove_slo_rule(self, name: str) -> None:
        if self._rules.pop(name, None) is None:
            raise ConfigError(f"slo rule {name!r} does not exist (have: {', '.join(self._rules) or 'none'})")
        self._judge = None

    def evaluate(self, window: WindowResult) -> list[SLOViolation]:
        if window.arm == "candidate" and window.deployment_id is not None:
            from canary.core.judge import Judge

            if self._judge is None:
                policy = SLOPolicy(self.rules)
                self._judge = Judge(lambda _dep: policy)
            judged = [j.window for j in self._judge.observe(window, window.emitted_at_ms)]
            verdicts = [v for w in judged for v in w.verdicts]
        else:
            verdicts = list(judge_all(self.rules, window))
        found = [
            SLOViolation(
                rule_name=v.rule,
                metric=v.metric,
                metric_value=v.value,
                threshold=v.threshold,
                operator=v.operator,
                window_start=iso_ms(window.window_start_ms),
                config_name=window.config_name,
                deployment_id=window.deployment_id,
            )
            for v in verdicts
            if v.outcome == "fail" and v.value is not None
        ]
        self._violations.extend(found)
        return found

    def get_violations(self, config_name: str | None = None, deployment_id: str | None = None) -> list[SLOViolation]:
        return [
            v
            for v in self._violations
            if (config_name is None or v.config_name == config_name)
            and (deployment_id is None or v.deployment_id == deployment_id)
        ]
