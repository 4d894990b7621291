"""What a deployment is judged with — SLO rules and the policy — and THE grammar of a preset's ``slo`` section.

A rule is a statement about the candidate's traffic — ``p95_ms <= 1200``, ``recall_at_10 >= 0.30``,
``error_rate <= 0.01`` — either absolute or relative to last_good measured in the same windows
(``relative_to: last_good``); :mod:`canary.core.slo` judges a window against it by its point estimate,
:mod:`canary.core.judge` with pooled evidence.

The ``slo`` section has one grammar, :func:`read_section` (keys, types, ranges, defaults; every problem a
:class:`~canary.core.validation.FieldError` naming file, field, value and why, all of them at once) and one
validated, frozen model, :class:`SLOSection`. Everything that reads a section goes through it: presets
(``canary.config.presets``, which also require ``p95_ms`` and ``recall_at_10``), rules files
(``canary replay --rules``, the dashboard's replay form, ``run_pipeline(rules_override=)``:
``canary.config.rules``), environment overrides (merged into the preset, which is then read again), the
Python API (``SLOMonitor``) and the SLO agent reading a start command's snapshot
(:func:`deployment_policy`, the one resolution used by the live agents, replay and reports). The grammar
is described once, in docs/contracts.md ("The slo section").
"""

from __future__ import annotations

import math
import operator as op
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from canary.core.custom import (
    AGGREGATIONS,
    DEFAULT_QUERY_TIMEOUT_MS,
    MAX_CUSTOM_METRICS,
    MAX_QUERY_CHARS,
    QUERY_PLACEHOLDER,
    QUERY_PLACEHOLDERS,
    RESULT_DIFF_METRICS,
    SOURCES,
    CustomMetric,
)
from canary.core.models import JSONDict
from canary.core.validation import NO_VALUE, Collector, Section
from canary.errors import ConfigError, InvalidEvent

METRICS: tuple[str, ...] = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "recall_at_10", "error_rate", "response_count")
QUANTILE_METRICS: dict[str, float] = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}
RATIO_METRICS: tuple[str, ...] = ("recall_at_10", "error_rate")  # absolute thresholds lie in [0, 1]
METHODS: tuple[str, ...] = ("sequential", "point")
BASELINES: tuple[str, ...] = ("last_good",)

DEFAULT_P95_MS = 1200.0
DEFAULT_RECALL_AT_10 = 0.30
DEFAULT_CONFIDENCE = 0.99
DEFAULT_ERROR_RATE = 0.01
DEFAULT_INCONCLUSIVE_LIMIT = 12
DEFAULT_MIN_SAMPLES = 20  # spec: "min_samples, default 20"; a sparser bucket is inconclusive
DEFAULT_CONSECUTIVE_BUCKETS = 2  # spec: roll back after 2 consecutive failing buckets
DEFAULT_HORIZON_S = 1800.0
"""How long a canary is judged for, by default: the change detector's false-alarm guarantee holds over this
span (30 minutes; the spec's advice is at least 10). A rollout plan's ``max_duration_s`` replaces it."""
HORIZON_RANGE_S: Final = (60.0, 7 * 86_400.0)  # a minute to a week

_OPS: dict[str, tuple[Callable[[float, float], bool], str, str]] = {
    # operator: (holds, symbol when it holds, symbol when it does not)
    "le": (op.le, "<=", ">"),
    "lt": (op.lt, "<", ">="),
    "ge": (op.ge, ">=", "<"),
    "gt": (op.gt, ">", "<="),
}
OPERATORS: tuple[str, ...] = tuple(_OPS)  # a rule holds if `metric <operator> threshold`
# The section's shorthand thresholds: each is a rule named after its metric, with this operator.
SHORTHAND: Final = (("p95_ms", "le"), ("recall_at_10", "ge"), ("error_rate", "le"))
BUILTIN_RULE_NAMES: tuple[str, ...] = tuple(name for name, _ in SHORTHAND)
# Rule and custom-metric names: lower-case, so a rule name is safe as a key in topics, tables and reports.
NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_NAME_HINT: Final = "must be lower-case letters, digits, '_' or '-'"
# Section-level values every rule inherits unless it sets its own.
RULE_DEFAULT_KEYS: Final = ("consecutive_buckets", "min_samples", "confidence", "method")
SECTION_KEYS: frozenset[str] = frozenset(
    {*BUILTIN_RULE_NAMES, *RULE_DEFAULT_KEYS, "inconclusive_limit", "horizon_s", "rules", "metrics"}
)


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
        """A policy as :meth:`to_dict` writes it (the judge's checkpoints), its rules and custom metrics read
        by the section grammar's readers; InvalidEvent if it is malformed."""
        out = Collector("SLOPolicy")
        s = Section(out, "policy", d)
        declared: dict[str, CustomMetric] = {}
        for entry in s.sections("metrics"):
            metric = read_metric(entry)
            if metric is not None:
                declared[metric.name] = metric
        if not s.has("rules"):
            out.add(s.field("rules"), NO_VALUE, "missing required field")
        rules = [_read_rule(r, _Inherited(), declared) for r in s.sections("rules")]
        inconclusive_limit = s.integer("inconclusive_limit", minimum=0)
        min_samples = s.integer("min_samples", minimum=0)
        # Checkpoints from before the change detector: its defaults.
        horizon_s = DEFAULT_HORIZON_S
        if s.take("horizon_s") is not NO_VALUE:
            horizon_s = s.number("horizon_s", positive=True)
        regimes = s.integer("regimes", default=1)
        s.close()
        if out.errors:
            raise InvalidEvent(f"SLOPolicy: malformed ({'; '.join(str(e) for e in out.errors)})")
        return cls(
            tuple(r for r in rules if r is not None),
            inconclusive_limit,
            min_samples,
            tuple(declared.values()),
            horizon_s,
            regimes,
        )


def default_rules() -> list[SLORule]:
    return SLOSection(DEFAULT_P95_MS, DEFAULT_RECALL_AT_10).all_rules()


def default_policy() -> SLOPolicy:
    return SLOPolicy(tuple(default_rules()))


# -- the grammar --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SLOSection:
    """A validated ``slo`` section, defaults filled in: what a preset snapshot carries (:meth:`to_dict`) and
    what a deployment is judged with (:meth:`policy`). Build it with :func:`parse_section` or
    :func:`read_section`; the constructor does not validate (placeholders never leave the reader)."""

    p95_ms: float | None  # None: no shorthand latency rule
    recall_at_10: float | None
    consecutive_buckets: int = DEFAULT_CONSECUTIVE_BUCKETS
    min_samples: int = DEFAULT_MIN_SAMPLES
    rules: tuple[SLORule, ...] = ()  # the explicit rules, after the shorthand ones
    error_rate: float | None = DEFAULT_ERROR_RATE  # None: no shorthand error-rate rule
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "sequential"
    inconclusive_limit: int = DEFAULT_INCONCLUSIVE_LIMIT
    metrics: tuple[CustomMetric, ...] = ()  # custom metrics the rules may name (canary.core.custom)
    horizon_s: float | None = None  # None: DEFAULT_HORIZON_S, or the rollout plan's max_duration_s

    def to_dict(self) -> JSONDict:
        """The section as snapshots carry it; :func:`parse_section` reads it back to an equal section."""
        return {
            "p95_ms": self.p95_ms,
            "recall_at_10": self.recall_at_10,
            "error_rate": self.error_rate,
            "consecutive_buckets": self.consecutive_buckets,
            "min_samples": self.min_samples,
            "confidence": self.confidence,
            "method": self.method,
            "inconclusive_limit": self.inconclusive_limit,
            "rules": [r.to_dict() for r in self.rules],
            # Absent unless set, so presets written before custom metrics and horizons keep their hashes.
            **({"metrics": [m.to_dict() for m in self.metrics]} if self.metrics else {}),
            **({"horizon_s": self.horizon_s} if self.horizon_s is not None else {}),
        }

    def all_rules(self) -> list[SLORule]:
        """What the SLO agent evaluates: the shorthand ``p95_ms`` / ``recall_at_10`` / ``error_rate`` rules
        (named after their metric, with the section-level defaults) followed by the explicit ``rules``."""
        common = (self.consecutive_buckets, self.min_samples, self.confidence, self.method)
        shorthand = [
            SLORule(name, name, operator, threshold, *common)
            for name, operator in SHORTHAND
            if (threshold := getattr(self, name)) is not None
        ]
        return [*shorthand, *self.rules]

    def policy(self) -> SLOPolicy:
        return SLOPolicy(
            tuple(self.all_rules()),
            self.inconclusive_limit,
            self.min_samples,
            self.metrics,
            DEFAULT_HORIZON_S if self.horizon_s is None else self.horizon_s,
        )


def parse_section(data: object, label: str, *, preset: bool = False) -> SLOSection:
    """The section in ``data`` (already-parsed YAML/JSON), or a ConfigError listing every problem, one per
    line, each naming ``label`` (the file, or what the data came from), the field, the value and why."""
    out = Collector(label)
    section = read_section(Section(out, "slo", data), preset=preset)
    if out.errors:
        raise ConfigError("\n".join(str(e) for e in out.errors))
    return section


def policy_from_slo_section(slo: object, label: str = "<snapshot>") -> SLOPolicy:
    """The policy of a preset's ``slo`` section (:func:`parse_section`)."""
    return parse_section(slo, label).policy()


def rules_from_slo_section(slo: object, label: str = "<snapshot>") -> list[SLORule]:
    return parse_section(slo, label).all_rules()


def read_section(s: Section, *, preset: bool = False) -> SLOSection:
    """THE grammar of an ``slo`` section, read field by field into ``s.out`` (see docs/contracts.md, "The slo
    section"). Every key is optional, with two rules for what is left out: a section naming no rule at all
    (no ``p95_ms``, ``recall_at_10``, ``error_rate`` or ``rules``) means the default rules, and ``error_rate``
    defaults to 0.01 where ``p95_ms`` or ``recall_at_10`` is named; ``null`` drops a shorthand rule. A
    ``preset`` must state ``p95_ms`` and ``recall_at_10`` (the spec's preset does)."""
    errors_before = len(s.out.errors)
    names_a_rule = any(s.has(k) for k in (*BUILTIN_RULE_NAMES, "rules"))
    names_a_threshold = s.has("p95_ms") or s.has("recall_at_10")
    consecutive = s.integer("consecutive_buckets", default=DEFAULT_CONSECUTIVE_BUCKETS)
    min_samples = s.integer("min_samples", minimum=0, default=DEFAULT_MIN_SAMPLES)
    p95_ms = _threshold(s, "p95_ms", DEFAULT_P95_MS if not names_a_rule else None, preset, positive=True)
    recall = _threshold(s, "recall_at_10", DEFAULT_RECALL_AT_10 if not names_a_rule else None, preset, low=0, high=1)
    default_error_rate = DEFAULT_ERROR_RATE if names_a_threshold or not names_a_rule else None
    error_rate = _threshold(s, "error_rate", default_error_rate, False, low=0, high=1)
    confidence = _confidence(s, DEFAULT_CONFIDENCE)
    method = _method(s, "sequential")
    inconclusive_limit = s.integer("inconclusive_limit", minimum=0, default=DEFAULT_INCONCLUSIVE_LIMIT)
    horizon_s = None
    if s.take("horizon_s") is not NO_VALUE:
        horizon_s = s.number("horizon_s", low=HORIZON_RANGE_S[0], high=HORIZON_RANGE_S[1])
    # Rules inherit the section's values; a broken one is reported already, so rules fall back to the default.
    inherited = _Inherited(
        consecutive if s.out.ok(s.field("consecutive_buckets")) else DEFAULT_CONSECUTIVE_BUCKETS,
        min_samples if s.out.ok(s.field("min_samples")) else DEFAULT_MIN_SAMPLES,
        confidence,
        method,
    )
    declared = _read_metrics(s)
    rules: list[SLORule] = []
    names = set(BUILTIN_RULE_NAMES)
    for entry in s.sections("rules"):
        rule = _read_rule(entry, inherited, {**RESULT_DIFF_METRICS, **declared})
        if rule is None:
            continue
        if rule.custom is not None and rule.metric not in declared:  # a result-diff metric, declared for it
            declared[rule.metric] = rule.custom
        if rule.name in names:
            builtin = ", ".join(BUILTIN_RULE_NAMES)
            s.out.add(entry.field("name"), rule.name, f"duplicate rule name ({builtin} are built in)")
        names.add(rule.name)
        rules.append(rule)
    s.close()
    section = SLOSection(
        p95_ms,
        recall,
        consecutive,
        min_samples,
        tuple(rules),
        error_rate,
        confidence,
        method,
        inconclusive_limit,
        tuple(declared.values()),
        horizon_s,
    )
    if len(s.out.errors) == errors_before and s.out.ok(s.path) and not section.all_rules():
        # A canary without rules could never roll back.
        s.out.add(s.path, NO_VALUE, "names no rule (every threshold null and no rules); omit them for the defaults")
    return section


@dataclass(frozen=True, slots=True)
class _Inherited:
    consecutive_buckets: int = DEFAULT_CONSECUTIVE_BUCKETS
    min_samples: int = DEFAULT_MIN_SAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "sequential"


def _threshold(
    s: Section,
    key: str,
    default: float | None,
    required: bool,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    value = s.take(key)
    if value is NO_VALUE and not required:
        return default
    if value is None and not required:
        return None  # explicitly no such shorthand rule
    return s.number(key, positive=positive, low=low, high=high)


def _optional_number(s: Section, key: str, default: float, *, low: float, high: float) -> float:
    """An optional finite number; ``low``/``high`` are open bounds (infinite: unbounded)."""
    value = s.take(key)
    if value is NO_VALUE:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        s.out.add(s.field(key), value, "expected a finite number")
    elif not low < value < high:
        s.out.add(s.field(key), value, f"must be strictly between {low:g} and {high:g}")
    else:
        return float(value)
    return default


def _confidence(s: Section, default: float) -> float:
    return _optional_number(s, "confidence", default, low=0, high=1)


def _method(s: Section, default: str) -> str:
    if s.take("method") is NO_VALUE:
        return default
    return s.string("method", choices=METHODS) or default


def _read_metrics(s: Section) -> dict[str, CustomMetric]:
    """``metrics``: custom metrics the outcomes carry (``SearchOutcome.metrics``), with their aggregation."""
    declared: dict[str, CustomMetric] = {}
    entries = s.sections("metrics")
    if len(entries) > MAX_CUSTOM_METRICS:
        s.out.add(s.field("metrics"), NO_VALUE, f"at most {MAX_CUSTOM_METRICS} custom metrics, got {len(entries)}")
        return declared
    for m in entries:
        metric = read_metric(m)
        if metric is None:
            continue
        if metric.name in METRICS or metric.name in declared:
            m.out.add(m.field("name"), metric.name, "is a built-in metric or declared twice")
        else:
            declared[metric.name] = metric
    return declared


def read_metric(m: Section) -> CustomMetric | None:
    """One ``metrics`` entry; None if it is invalid (the problems are in ``m.out``)."""
    errors_before = len(m.out.errors)
    name = m.string("name", pattern=NAME, hint=_NAME_HINT)
    aggregation = m.string("aggregation", choices=AGGREGATIONS, required=False) or "mean"
    low = _optional_number(m, "low", 0.0, low=-math.inf, high=math.inf)
    high = _optional_number(m, "high", 1.0, low=-math.inf, high=math.inf)
    # Snapshots write an absent description as "": both mean none.
    description = "" if m.take("description") in (NO_VALUE, "") else m.string("description")
    source = m.string("source", choices=SOURCES, required=False) or "outcomes"
    query, timeout_ms = "", DEFAULT_QUERY_TIMEOUT_MS
    if source == "outcomes":
        for key in ("query", "timeout_ms"):
            if m.take(key) is not NO_VALUE:
                m.out.add(m.field(key), m.take(key), "only for an external metric (source: prometheus)")
    else:
        query = _query(m)
        timeout_ms = m.integer("timeout_ms", minimum=100, default=DEFAULT_QUERY_TIMEOUT_MS)
        if timeout_ms > 10_000:
            m.out.add(m.field("timeout_ms"), timeout_ms, "must be <= 10000 (a window is judged after its query)")
        if aggregation != "mean":
            m.out.add(m.field("aggregation"), aggregation, "an external metric is one value per window: mean only")
    m.close()
    if len(m.out.errors) > errors_before:
        return None
    try:
        return CustomMetric(name, aggregation, low, high, description, source, query, timeout_ms)
    except ConfigError as exc:  # low must be below high
        m.out.add(m.path, NO_VALUE, str(exc))
        return None


def _query(m: Section) -> str:
    """An external metric's PromQL: required, bounded, and naming only the window's placeholders."""
    query = m.string("query")
    if not query:
        return ""
    if len(query) > MAX_QUERY_CHARS:
        m.out.add(m.field("query"), query, f"{len(query)} characters, more than {MAX_QUERY_CHARS}")
    for name in QUERY_PLACEHOLDER.findall(query):
        if name not in QUERY_PLACEHOLDERS:
            allowed = ", ".join("{{" + p + "}}" for p in QUERY_PLACEHOLDERS)
            m.out.add(m.field("query"), query, f"names {{{{{name}}}}}; a query may name only {allowed}")
    return query


def _read_rule(s: Section, inherited: _Inherited, declared: Mapping[str, CustomMetric]) -> SLORule | None:
    """One explicit rule; None if it is invalid (the problems are in ``s.out``: SLORule takes no placeholders)."""
    errors_before = len(s.out.errors)
    name = s.string("name", pattern=NAME, hint=_NAME_HINT)
    raw_metric = s.take("metric")
    if isinstance(raw_metric, str) and raw_metric not in METRICS and raw_metric not in declared:
        known = ", ".join(sorted(set(declared) - set(RESULT_DIFF_METRICS))) or "none"
        builtin = ", ".join((*METRICS, *RESULT_DIFF_METRICS))
        s.out.add(
            s.field("metric"),
            raw_metric,
            f"is neither built in ({builtin}) nor declared under slo.metrics (declared: {known})",
        )
        metric = ""  # reported; the other fields are still checked
    else:
        metric = s.string("metric", choices=(*METRICS, *declared))
    relative_to: str | None = None
    if s.take("relative_to") not in (NO_VALUE, None):  # null (as snapshots write it) means absolute
        relative_to = s.string("relative_to", choices=BASELINES) or None
    if metric in declared:
        threshold = s.number("threshold")  # its range is the declared metric's: SLORule checks it
    elif relative_to is not None and metric in QUANTILE_METRICS:
        threshold = s.number("threshold", positive=True)  # a ratio to last_good's quantile
    elif relative_to is not None:
        threshold = s.number("threshold", low=-1, high=1)  # an offset from last_good's value
    elif metric in RATIO_METRICS:
        threshold = s.number("threshold", low=0, high=1)
    elif metric == "response_count":
        threshold = s.number("threshold", low=0)
    else:
        threshold = s.number("threshold", positive=True)
    operator = s.string("operator", choices=OPERATORS)
    # Per-rule values fall back to the section's, so the snapshot shows what is really applied. An external
    # metric is one value per window: judged by its point value, one sample enough (docs: "External metrics").
    external = metric in declared and declared[metric].external
    if external and relative_to is not None:
        s.out.add(s.field("relative_to"), relative_to, "an external metric is judged absolutely (no last_good query)")
    consecutive = s.integer("consecutive_buckets", default=inherited.consecutive_buckets)
    min_samples = s.integer("min_samples", minimum=0, default=1 if external else inherited.min_samples)
    confidence = _confidence(s, inherited.confidence)
    method = _method(s, "point" if external else inherited.method)
    s.close()
    if len(s.out.errors) > errors_before:
        return None
    try:
        return SLORule(
            name,
            metric,
            operator,
            threshold,
            consecutive,
            min_samples,
            confidence,
            method,
            relative_to,
            declared.get(metric),
        )
    except ConfigError as exc:  # the relations SLORule checks (a custom metric's range, a relative response_count)
        s.out.add(s.path, NO_VALUE, str(exc))
        return None


# -- a deployment's policy ----------------------------------------------------------------------------------
def deployment_policy(
    snapshot: Mapping[str, Any] | None, *, on_error: Callable[[str], None] | None = None
) -> SLOPolicy:
    """THE rule resolution: a deployment's candidate snapshot → its policy; defaults when it has none.

    Presets are validated before a start command is issued; an unreadable ``slo`` section here means a
    hand-written command. It is judged with the defaults rather than not at all, and ``on_error`` hears why.
    """
    slo = None if snapshot is None else snapshot.get("slo")
    policy = default_policy()
    explicit_horizon = False
    if isinstance(slo, Mapping):
        try:
            section = parse_section(slo, "<snapshot>")
        except ConfigError as exc:
            if on_error is not None:
                on_error(str(exc))
        else:
            policy, explicit_horizon = section.policy(), section.horizon_s is not None
    return with_plan(policy, snapshot, explicit_horizon=explicit_horizon)


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
    if (
        not explicit_horizon
        and isinstance(limit, int | float)
        and _number(limit)
        and HORIZON_RANGE_S[0] <= limit <= HORIZON_RANGE_S[1]
    ):
        horizon = float(limit)
    return replace(policy, regimes=regimes, horizon_s=horizon)


def aggregator_settings(policy: SLOPolicy) -> tuple[float, float, tuple[float, ...]]:
    """(latency threshold for ``slo_violations``, recall threshold, every absolute latency threshold)."""
    latency, recall = DEFAULT_P95_MS, DEFAULT_RECALL_AT_10
    for rule in policy.rules:
        if rule.relative:
            continue
        if rule.metric == "p95_ms":
            latency = rule.threshold
        elif rule.metric == "recall_at_10":
            recall = rule.threshold
    return latency, recall, policy.latency_thresholds
