"""Point-estimate judging of SLO rules, and the commands and decisions the judge issues.

How a window is judged against a rule (:mod:`canary.core.policy`) is its ``method``:

* ``sequential`` (default): anytime-valid evidence pooled over the deployment's windows
  (:mod:`canary.core.evidence`, applied by :mod:`canary.core.judge`); a window fails only when the data
  give significant evidence (``confidence``) that the rule is broken.
* ``point``: the window's bare point estimate against the threshold, with a ``min_samples`` floor (the
  original rule, kept for comparison and backtests) — :func:`judge_window` here.

The rules, the policy and the ``slo`` section's grammar live in :mod:`canary.core.policy` and are
re-exported here under the names every caller has used; :func:`deployment_policy` is the one resolution
of a deployment's policy, used by the live agents, replay and reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from canary.core import structs
from canary.core.custom import CustomMetric, CustomStats
from canary.core.models import JSONDict, Outcome, RuleVerdict, WindowResult
from canary.core.policy import (
    _OPS,
    BASELINES,
    DEFAULT_CONFIDENCE,
    DEFAULT_CONSECUTIVE_BUCKETS,
    DEFAULT_ERROR_RATE,
    DEFAULT_HORIZON_S,
    DEFAULT_INCONCLUSIVE_LIMIT,
    DEFAULT_MIN_SAMPLES,
    METHODS,
    METRICS,
    QUANTILE_METRICS,
    SECTION_KEYS,
    SLOPolicy,
    SLORule,
    SLOSection,
    aggregator_settings,
    default_policy,
    default_rules,
    deployment_policy,
    parse_section,
    policy_from_slo_section,
    rules_from_slo_section,
    with_plan,
)

__all__ = [
    "BASELINES",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_CONSECUTIVE_BUCKETS",
    "DEFAULT_ERROR_RATE",
    "DEFAULT_HORIZON_S",
    "DEFAULT_INCONCLUSIVE_LIMIT",
    "DEFAULT_MIN_SAMPLES",
    "METHODS",
    "METRICS",
    "QUANTILE_METRICS",
    "SECTION_KEYS",
    "SHOCK_PAUSE_PREFIX",
    "SHOCK_RESUME_PREFIX",
    "_OPS",
    "Decision",
    "SLOPolicy",
    "SLORule",
    "SLOSection",
    "VerdictOutcome",
    "aggregator_settings",
    "custom_window_stats",
    "default_policy",
    "default_rules",
    "deployment_policy",
    "is_shock_pause",
    "judge_all",
    "judge_window",
    "parse_section",
    "pause_command_id",
    "policy_from_slo_section",
    "rollback_command_id",
    "rules_from_slo_section",
    "shock_pause_command_id",
    "shock_resume_command_id",
    "value_format",
    "window_point_value",
    "with_plan",
]

VerdictOutcome = Outcome
"""The closed set ``pass | fail | inconclusive | error``."""


def value_format(metric: str) -> str:
    """How a metric's value is shown; a custom (declared, result-diff or external) metric with 4 significant
    digits — its unit is its own."""
    if metric in QUANTILE_METRICS:
        return ".1f"
    return {"recall_at_10": ".3f", "error_rate": ".4f", "response_count": "d"}.get(metric, ".4g")


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


# What a decision is: the judge's (rollback, pause for too little data, a shock shared with last_good and the
# resume after it) and a rollout plan's steps (canary.core.rollout's actions other than "hold").
DecisionType = Literal["rollback", "pause", "shock", "recover", "advance", "gate", "promote", "expire"]


class Decision(msgspec.Struct, frozen=True):
    """A command the judge (or a rollout plan) decided on — ``rollback``, ``pause``, ``resume``, a plan's
    ``advance`` … — with the numbers behind it; a judgement's ``decision`` on ``canary_verdicts``."""

    deployment_id: str
    rule: str
    reason: str
    evidence: JSONDict
    window_id: str
    command_id: str
    type: DecisionType = "rollback"

    def to_dict(self) -> JSONDict:
        d: JSONDict = {"deployment_id": self.deployment_id, "type": self.type}  # the fields' order on the wire
        d.update(msgspec.to_builtins(self))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return structs.convert(cls, d, "Decision")
