"""SLO rules, per-window verdicts and the rollback decision, in the style of Argo Rollouts analysis.

A rule judges one window as pass, fail, inconclusive (too little data to say) or error (data that
should exist is missing or NaN). A rollback fires when one rule fails in ``consecutive_buckets``
judged windows in a row for a deployment; it fires at most once per deployment.
"""

from __future__ import annotations

import math
import operator as op
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from canary.core.models import JSONDict, Outcome, RuleVerdict, WindowResult, iso_ms
from canary.errors import ConfigError, InvalidEvent

VerdictOutcome = Outcome
"""The closed set ``pass | fail | inconclusive | error``."""

Metric = Literal["p95_ms", "recall_at_10", "error_rate", "response_count"]
METRICS: tuple[str, ...] = ("p95_ms", "recall_at_10", "error_rate", "response_count")

_OPS: dict[str, tuple[Callable[[float, float], bool], str, str]] = {
    # operator: (holds, symbol when it holds, symbol when it does not)
    "le": (op.le, "<=", ">"),
    "lt": (op.lt, "<", ">="),
    "ge": (op.ge, ">=", "<"),
    "gt": (op.gt, ">", "<="),
}
_VALUE_FORMAT = {"p95_ms": ".1f", "recall_at_10": ".3f", "error_rate": ".4f", "response_count": "d"}


@dataclass(frozen=True, slots=True)
class SLORule:
    name: str
    metric: str
    operator: str
    threshold: float
    consecutive_buckets: int = 2
    min_samples: int = 20

    def __post_init__(self) -> None:
        where = f"slo rule {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"slo rule: name must be a non-empty string, got {self.name!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"{where}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.operator not in _OPS:
            raise ConfigError(f"{where}: operator must be one of {', '.join(_OPS)}, got {self.operator!r}")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not math.isfinite(self.threshold)
        ):
            raise ConfigError(f"{where}: threshold must be a finite number, got {self.threshold!r}")
        for name in ("consecutive_buckets", "min_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "consecutive_buckets" else 0):
                raise ConfigError(f"{where}: {name} must be an integer >= 1 (min_samples >= 0), got {v!r}")

    def to_dict(self) -> JSONDict:
        return {
            "name": self.name,
            "metric": self.metric,
            "operator": self.operator,
            "threshold": self.threshold,
            "consecutive_buckets": self.consecutive_buckets,
            "min_samples": self.min_samples,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "slo.rules") -> SLORule:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {d!r}")
        unknown = set(d) - {"name", "metric", "operator", "threshold", "consecutive_buckets", "min_samples"}
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
                consecutive_buckets=d.get("consecutive_buckets", 2),
                min_samples=d.get("min_samples", 20),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def default_rules() -> list[SLORule]:
    return [
        SLORule("p95_ms", "p95_ms", "le", 1200, 2),
        SLORule("recall_at_10", "recall_at_10", "ge", 0.30, 2),
    ]


def rules_from_slo_section(slo: Mapping[str, Any]) -> list[SLORule]:
    """Rules from a preset's ``slo`` section: shorthand thresholds plus optional explicit ``rules``.

    ``consecutive_buckets`` and ``min_samples`` at section level are defaults for every rule.
    """
    if not isinstance(slo, Mapping):
        raise ConfigError(f"slo: expected a mapping, got {slo!r}")
    known = {"p95_ms", "recall_at_10", "consecutive_buckets", "min_samples", "rules"}
    unknown = set(slo) - known
    if unknown:
        raise ConfigError(f"slo: unknown field(s) {', '.join(sorted(unknown))}")
    common = {k: slo[k] for k in ("consecutive_buckets", "min_samples") if k in slo}
    for k, v in common.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"slo.{k}: expected an integer, got {v!r}")
    rules: list[SLORule] = []
    for metric, operator in (("p95_ms", "le"), ("recall_at_10", "ge")):
        if metric in slo:
            v = slo[metric]
            if isinstance(v, bool) or not isinstance(v, int | float):
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
        rules.append(SLORule.from_dict(merged, where=f"slo.rules[{i}]"))
    if not rules:
        # A canary without rules could never roll back; an slo section naming no rule means the defaults.
        rules = [SLORule.from_dict({**r.to_dict(), **common}, where="slo") for r in default_rules()]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"slo: duplicate rule name(s) {', '.join(dupes)}")
    return rules


def _field(window: WindowResult | Mapping[str, Any], name: str) -> Any:
    return getattr(window, name) if isinstance(window, WindowResult) else window.get(name)


def judge_window(rule: SLORule, window: WindowResult | Mapping[str, Any]) -> RuleVerdict:
    """Judge one window (a WindowResult or a mapping with its metric fields) against one rule."""

    def verdict(outcome: Outcome, value: float | None, reason: str) -> RuleVerdict:
        return RuleVerdict(rule.name, rule.metric, rule.operator, float(rule.threshold), value, outcome, reason)

    n = int(_field(window, "response_count") or 0)
    if rule.metric == "response_count":
        value: float | None = float(n)
        samples = n
    elif rule.metric == "recall_at_10":
        samples = int(_field(window, "recall_samples") or 0)
        if samples == 0:
            return verdict("inconclusive", None, f"no labeled outcomes (n={n})")
        if samples < rule.min_samples:
            return verdict("inconclusive", None, f"too few samples: recall_samples={samples} < {rule.min_samples}")
        value = _field(window, "recall_at_10")
    else:
        samples = n
        if n == 0:
            return verdict("inconclusive", None, "no responses (n=0)")
        if n < rule.min_samples:
            return verdict("inconclusive", None, f"too few samples: response_count={n} < {rule.min_samples}")
        errors = int(_field(window, "error_count") or 0)
        value = errors / n if rule.metric == "error_rate" else _field(window, "p95_ms")

    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return verdict("error", None, f"{rule.metric} missing or NaN although n={samples}: {value!r}")
    value = float(value)
    holds, ok_symbol, bad_symbol = _OPS[rule.operator]
    shown = format(int(value), "d") if rule.metric == "response_count" else format(value, _VALUE_FORMAT[rule.metric])
    passed = holds(value, rule.threshold)
    text = f"{rule.metric}={shown} {ok_symbol if passed else bad_symbol} {rule.threshold:g} (n={samples})"
    return verdict("pass" if passed else "fail", value, text)


def judge_all(rules: Iterable[SLORule], window: WindowResult | Mapping[str, Any]) -> tuple[RuleVerdict, ...]:
    return tuple(judge_window(r, window) for r in rules)


def rollback_command_id(deployment_id: str) -> str:
    """Deterministic: a redelivered window or a restarted judge issues the same command, which the
    routers then apply once. One rollback per deployment, so the deployment id is a unique suffix."""
    return f"rollback-{deployment_id}"


@dataclass(frozen=True, slots=True)
class Decision:
    """A rollback the evaluator decided on, with the failing windows as evidence."""

    deployment_id: str
    rule: str
    reason: str
    evidence: JSONDict
    window_id: str
    command_id: str

    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "rule": self.rule,
            "reason": self.reason,
            "evidence": self.evidence,
            "window_id": self.window_id,
            "command_id": self.command_id,
        }


def _evidence_entry(window: WindowResult, verdict: RuleVerdict) -> JSONDict:
    return {
        "window_id": window.window_id,
        "window_start": iso_ms(window.window_start_ms),
        "window_end": iso_ms(window.window_end_ms),
        "value": verdict.value,
        "response_count": window.response_count,
        "recall_samples": window.recall_samples,
    }


@dataclass(slots=True)
class _DeploymentStreaks:
    last_start_ms: int | None = None
    fired: bool = False
    # rule name -> evidence of the current failing streak (its length is the streak)
    streaks: dict[str, list[JSONDict]] = field(default_factory=dict)


class StreakTracker:
    """Consecutive failing windows per (deployment, rule).

    fail extends the streak, pass resets it; inconclusive and error do neither, because a window with
    too little traffic (or broken data) says nothing about the candidate: it must neither excuse a
    failing candidate nor push a healthy one over the edge. Windows at or before the last one judged for
    a deployment are redeliveries and are ignored.
    """

    MAX_EVIDENCE = 64  # streaks normally end at consecutive_buckets; this only bounds memory

    def __init__(self) -> None:
        self._deployments: dict[str, _DeploymentStreaks] = {}

    def _state(self, deployment_id: str) -> _DeploymentStreaks:
        return self._deployments.setdefault(deployment_id, _DeploymentStreaks())

    def update(self, window: WindowResult, verdicts: Sequence[RuleVerdict]) -> bool:
        """Apply one window's verdicts; ``False`` if the window was a redelivery and was ignored."""
        st = self._state(window.deployment_id or "-")
        if st.last_start_ms is not None and window.window_start_ms <= st.last_start_ms:
            return False
        st.last_start_ms = window.window_start_ms
        for v in verdicts:
            if v.outcome == "fail":
                streak = st.streaks.setdefault(v.rule, [])
                streak.append(_evidence_entry(window, v))
                del streak[: -self.MAX_EVIDENCE]
            elif v.outcome == "pass":
                st.streaks.pop(v.rule, None)
        return True

    def streak(self, deployment_id: str | None, rule: str) -> int:
        st = self._deployments.get(deployment_id or "-")
        return 0 if st is None else len(st.streaks.get(rule, []))

    def evidence(self, deployment_id: str | None, rule: str) -> list[JSONDict]:
        st = self._deployments.get(deployment_id or "-")
        return [] if st is None else list(st.streaks.get(rule, []))

    def fired(self, deployment_id: str | None) -> bool:
        st = self._deployments.get(deployment_id or "-")
        return st is not None and st.fired

    def mark_fired(self, deployment_id: str | None) -> None:
        self._state(deployment_id or "-").fired = True

    def to_dict(self) -> JSONDict:
        return {
            dep: {"last_start_ms": st.last_start_ms, "fired": st.fired, "streaks": st.streaks}
            for dep, st in sorted(self._deployments.items())
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreakTracker:
        out = cls()
        try:
            for dep, st in d.items():
                out._deployments[dep] = _DeploymentStreaks(
                    last_start_ms=None if st["last_start_ms"] is None else int(st["last_start_ms"]),
                    fired=bool(st["fired"]),
                    streaks={str(r): [dict(e) for e in ev] for r, ev in st["streaks"].items()},
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidEvent(f"StreakTracker: malformed state ({exc!r})") from None
        return out


class SLOEvaluator:
    """Consumes candidate windows in order and decides on a rollback at most once per deployment.

    Uses the verdicts already on the window when present (the finalizer's judge), otherwise judges the
    window itself with the deployment's rules.
    """

    def __init__(self, rules: Sequence[SLORule] | None = None) -> None:
        self.rules: tuple[SLORule, ...] = tuple(default_rules() if rules is None else rules)
        self._per_deployment: dict[str, tuple[SLORule, ...]] = {}
        self.streaks = StreakTracker()

    def set_rules(self, deployment_id: str, rules: Sequence[SLORule]) -> None:
        """Rules for one deployment (its preset's slo section), overriding the defaults."""
        self._per_deployment[deployment_id] = tuple(rules)

    def rules_for(self, deployment_id: str | None) -> tuple[SLORule, ...]:
        return self._per_deployment.get(deployment_id or "-", self.rules)

    def judge(self, window: WindowResult) -> tuple[RuleVerdict, ...]:
        """Verdicts for a window; only candidate windows are judged (the finalizer's ``judge`` hook)."""
        if window.arm != "candidate":
            return ()
        return judge_all(self.rules_for(window.deployment_id), window)

    def observe(self, window: WindowResult) -> Decision | None:
        if window.arm != "candidate" or window.deployment_id is None:
            return None
        dep = window.deployment_id
        rules = self.rules_for(dep)
        verdicts = window.verdicts or judge_all(rules, window)
        if not self.streaks.update(window, verdicts) or self.streaks.fired(dep):
            return None
        for rule in rules:
            n = self.streaks.streak(dep, rule.name)
            if n >= rule.consecutive_buckets:
                self.streaks.mark_fired(dep)
                evidence = {
                    "rule": rule.name,
                    "metric": rule.metric,
                    "operator": rule.operator,
                    "threshold": rule.threshold,
                    "consecutive_buckets": rule.consecutive_buckets,
                    "windows": self.streaks.evidence(dep, rule.name),
                }
                return Decision(
                    deployment_id=dep,
                    rule=rule.name,
                    reason=f"SLO violation: {rule.name} failed for {n} consecutive buckets",
                    evidence=evidence,
                    window_id=window.window_id,
                    command_id=rollback_command_id(dep),
                )
        return None

    def to_dict(self) -> JSONDict:
        return {
            "rules": [r.to_dict() for r in self.rules],
            "per_deployment": {d: [r.to_dict() for r in rs] for d, rs in sorted(self._per_deployment.items())},
            "streaks": self.streaks.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SLOEvaluator:
        try:
            out = cls([SLORule.from_dict(r) for r in d["rules"]])
            for dep, rs in d["per_deployment"].items():
                out.set_rules(dep, [SLORule.from_dict(r) for r in rs])
            out.streaks = StreakTracker.from_dict(d["streaks"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidEvent(f"SLOEvaluator: malformed state ({exc!r})") from None
        return out


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
    """The spec's programmatic API: a rule set that records every failing (window, rule)."""

    def __init__(self, rules: Iterable[SLORule] | None = None) -> None:
        self._rules: dict[str, SLORule] = {}
        self._violations: list[SLOViolation] = []
        for r in default_rules() if rules is None else rules:
            self.add_slo_rule(r)

    @property
    def rules(self) -> tuple[SLORule, ...]:
        return tuple(self._rules.values())

    def add_slo_rule(self, rule: SLORule) -> None:
        if rule.name in self._rules:
            raise ConfigError(f"slo rule {rule.name!r} already exists")
        self._rules[rule.name] = rule

    def remove_slo_rule(self, name: str) -> None:
        if self._rules.pop(name, None) is None:
            raise ConfigError(f"slo rule {name!r} does not exist (have: {', '.join(self._rules) or 'none'})")

    def evaluate(self, window: WindowResult) -> list[SLOViolation]:
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
            for v in judge_all(self.rules, window)
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
