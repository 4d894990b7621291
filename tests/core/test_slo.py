from __future__ import annotations

import json
import math
from typing import Any

import pytest

from canary.core.models import RuleVerdict, WindowResult
from canary.core.slo import (
    SLOEvaluator,
    SLOMonitor,
    SLORule,
    StreakTracker,
    default_rules,
    judge_window,
    rollback_command_id,
    rules_from_slo_section,
)
from canary.errors import ConfigError, InvalidEvent

P95 = SLORule("p95_ms", "p95_ms", "le", 1200, 2)
RECALL = SLORule("recall_at_10", "recall_at_10", "ge", 0.30, 2)


def window(
    start_s: int = 0,
    *,
    n: int = 48,
    p95: float | None = 800.0,
    recall: float | None = 0.5,
    recall_n: int = 30,
    errors: int = 0,
    arm: str = "candidate",
    deployment_id: str | None = "dep-1",
) -> WindowResult:
    return WindowResult(
        deployment_id=deployment_id,
        config_name="cand",
        arm=arm,
        window_start_ms=start_s * 1000,
        window_end_ms=start_s * 1000 + 5000,
        duration_sec=5,
        response_count=n,
        error_count=errors,
        p95_ms=p95,
        recall_at_10=recall,
        recall_samples=recall_n,
        slo_violations=0,
        verdicts=(),
        late_count=0,
        emitted_at_ms=start_s * 1000 + 6000,
    )


@pytest.mark.parametrize(
    ("rule", "fields", "outcome", "reason"),
    [
        (P95, {"p95": 1530.24}, "fail", "p95_ms=1530.2 > 1200 (n=48)"),
        (P95, {"p95": 1200.0}, "pass", "p95_ms=1200.0 <= 1200 (n=48)"),
        (SLORule("p", "p95_ms", "lt", 1200), {"p95": 1200.0}, "fail", "p95_ms=1200.0 >= 1200 (n=48)"),
        (SLORule("p", "p95_ms", "lt", 1200), {"p95": 1199.9}, "pass", "p95_ms=1199.9 < 1200 (n=48)"),
        (RECALL, {"recall": 0.3}, "pass", "recall_at_10=0.300 >= 0.3 (n=30)"),
        (RECALL, {"recall": 0.21}, "fail", "recall_at_10=0.210 < 0.3 (n=30)"),
        (SLORule("r", "recall_at_10", "gt", 0.3), {"recall": 0.3}, "fail", "recall_at_10=0.300 <= 0.3 (n=30)"),
        (SLORule("r", "recall_at_10", "gt", 0.3), {"recall": 0.31}, "pass", "recall_at_10=0.310 > 0.3 (n=30)"),
        (SLORule("e", "error_rate", "le", 0.05), {"errors": 6}, "fail", "error_rate=0.1250 > 0.05 (n=48)"),
        (SLORule("e", "error_rate", "le", 0.05), {"errors": 0}, "pass", "error_rate=0.0000 <= 0.05 (n=48)"),
        (SLORule("c", "response_count", "ge", 50), {"n": 3}, "fail", "response_count=3 < 50 (n=3)"),
        (P95, {"n": 19}, "inconclusive", "too few samples: response_count=19 < 20"),
        (P95, {"n": 0, "p95": None}, "inconclusive", "no responses (n=0)"),
        (
            SLORule("p", "p95_ms", "le", 1200, min_samples=0),
            {"n": 0, "p95": None},
            "inconclusive",
            "no responses (n=0)",
        ),
        (RECALL, {"recall_n": 0, "recall": None}, "inconclusive", "no labeled outcomes (n=48)"),
        (RECALL, {"recall_n": 5}, "inconclusive", "too few samples: recall_samples=5 < 20"),
        (P95, {"p95": None}, "error", "p95_ms missing or NaN although n=48: None"),
        (P95, {"p95": math.nan}, "error", "p95_ms missing or NaN although n=48: nan"),
        (RECALL, {"recall": None}, "error", "recall_at_10 missing or NaN although n=30: None"),
    ],
)
def test_judge_window(rule: SLORule, fields: dict[str, Any], outcome: str, reason: str) -> None:
    v = judge_window(rule, window(**fields))
    assert (v.outcome, v.reason) == (outcome, reason)
    assert (v.rule, v.metric, v.operator, v.threshold) == (rule.name, rule.metric, rule.operator, rule.threshold)


def test_judge_window_accepts_mapping() -> None:
    v = judge_window(P95, {"response_count": 48, "p95_ms": 1530.2})
    assert v.reason == "p95_ms=1530.2 > 1200 (n=48)"
    assert judge_window(P95, window(p95=1530.2).to_dict()) == v


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "p99"}, "metric must be one of"),
        ({"operator": "eq"}, "operator must be one of le, lt, ge, gt, got 'eq'"),
        ({"threshold": "1200"}, "threshold must be a finite number"),
        ({"threshold": math.inf}, "threshold must be a finite number"),
        ({"consecutive_buckets": 0}, "consecutive_buckets must be"),
        ({"min_samples": -1}, "min_samples must be"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_rule_validation(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"name": "r", "metric": "p95_ms", "operator": "le", "threshold": 1200}
    with pytest.raises(ConfigError, match=message):
        SLORule(**{**base, **kwargs})


def test_default_rules() -> None:
    assert default_rules() == [P95, RECALL]


def test_rules_from_slo_section() -> None:
    rules = rules_from_slo_section(
        {
            "p95_ms": 900,
            "recall_at_10": 0.4,
            "consecutive_buckets": 3,
            "min_samples": 10,
            "rules": [
                {"name": "errors", "metric": "error_rate", "operator": "le", "threshold": 0.02, "min_samples": 50}
            ],
        }
    )
    assert rules == [
        SLORule("p95_ms", "p95_ms", "le", 900, 3, 10),
        SLORule("recall_at_10", "recall_at_10", "ge", 0.4, 3, 10),
        SLORule("errors", "error_rate", "le", 0.02, 3, 50),
    ]
    assert rules_from_slo_section({}) == default_rules()
    assert rules_from_slo_section({"min_samples": 5})[0].min_samples == 5


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"p95_ms": "fast"}, r"slo.p95_ms: expected a number, got 'fast'"),
        ({"p95": 1}, r"slo: unknown field\(s\) p95"),
        ({"consecutive_buckets": 1.5}, r"slo.consecutive_buckets: expected an integer"),
        ({"rules": {"a": 1}}, r"slo.rules: expected a list"),
        ({"rules": [{"name": "x", "metric": "p95_ms", "operator": "le"}]}, r"slo.rules\[0\].threshold: required"),
        (
            {"rules": [{"name": "x", "metric": "p95_ms", "operator": "le", "threshold": 1, "bad": 1}]},
            r"slo.rules\[0\]: unknown field\(s\) bad",
        ),
        (
            {"p95_ms": 1, "rules": [{"name": "p95_ms", "metric": "p95_ms", "operator": "le", "threshold": 2}]},
            "duplicate rule name",
        ),
        ([1], "slo: expected a mapping"),
        (
            {"rules": [{"name": "x", "metric": "p95_ms", "operator": "eq", "threshold": 1}]},
            r"slo.rules\[0\]: slo rule 'x': operator must be one of le, lt, ge, gt, got 'eq'",
        ),
    ],
)
def test_rules_from_slo_section_rejects(section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rules_from_slo_section(section)


FAIL = {"p95": 1500.0}
PASS = {"p95": 800.0}
QUIET = {"n": 3}
BROKEN = {"p95": math.nan}


@pytest.mark.parametrize(
    ("sequence", "fires_at"),
    [
        ([FAIL, FAIL], 1),
        ([FAIL, PASS, FAIL], None),
        ([FAIL, QUIET, FAIL], 2),
        ([FAIL, BROKEN, FAIL], 2),
        ([FAIL, PASS, FAIL, FAIL], 3),
        ([PASS, PASS, PASS], None),
        ([FAIL], None),
        ([QUIET, QUIET, QUIET], None),
    ],
)
def test_streak_sequences(sequence: list[dict[str, Any]], fires_at: int | None) -> None:
    ev = SLOEvaluator([P95])
    decisions = [ev.observe(window(i * 5, **f)) for i, f in enumerate(sequence)]
    fired = [i for i, d in enumerate(decisions) if d is not None]
    assert fired == ([] if fires_at is None else [fires_at])


def test_rollback_fires_exactly_once() -> None:
    ev = SLOEvaluator()
    decisions = [ev.observe(window(i * 5, p95=1500.0)) for i in range(5)]
    assert [d is not None for d in decisions] == [False, True, False, False, False]


def test_decision_content() -> None:
    ev = SLOEvaluator()
    ev.observe(window(0, p95=1530.2))
    d = ev.observe(window(5, p95=1610.0))
    assert d is not None
    assert d.reason == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert d.rule == "p95_ms"
    assert d.deployment_id == "dep-1"
    assert d.window_id == "dep-1|cand|candidate@5000"
    assert d.command_id == rollback_command_id("dep-1") == "rollback-dep-1"
    assert d.evidence == {
        "rule": "p95_ms",
        "metric": "p95_ms",
        "operator": "le",
        "threshold": 1200,
        "consecutive_buckets": 2,
        "windows": [
            {
                "window_id": "dep-1|cand|candidate@0",
                "window_start": "1970-01-01T00:00:00.000Z",
                "window_end": "1970-01-01T00:00:05.000Z",
                "value": 1530.2,
                "response_count": 48,
                "recall_samples": 30,
            },
            {
                "window_id": "dep-1|cand|candidate@5000",
                "window_start": "1970-01-01T00:00:05.000Z",
                "window_end": "1970-01-01T00:00:10.000Z",
                "value": 1610.0,
                "response_count": 48,
                "recall_samples": 30,
            },
        ],
    }
    json.dumps(d.to_dict())


def test_recall_rule_fires_and_uses_window_verdicts() -> None:
    ev = SLOEvaluator()
    # Verdicts already on the window (from the finalizer's judge) are used as they are.
    fail = (RuleVerdict("recall_at_10", "recall_at_10", "ge", 0.3, 0.1, "fail", "recall_at_10=0.100 < 0.3 (n=30)"),)
    w0 = window(0)
    w1 = window(5)
    assert ev.observe(WindowResult(**{**_fields(w0), "verdicts": fail})) is None
    d = ev.observe(WindowResult(**{**_fields(w1), "verdicts": fail}))
    assert d is not None and d.rule == "recall_at_10"


def _fields(w: WindowResult) -> dict[str, Any]:
    return {name: getattr(w, name) for name in WindowResult.__dataclass_fields__}


def test_redelivered_and_older_windows_ignored() -> None:
    ev = SLOEvaluator()
    assert ev.observe(window(0, p95=1500.0)) is None
    assert ev.observe(window(0, p95=1500.0)) is None  # redelivery of the same window
    assert ev.streaks.streak("dep-1", "p95_ms") == 1
    assert ev.observe(window(5, p95=800.0)) is None
    assert ev.observe(window(0, p95=1500.0)) is None  # older than the last judged
    assert ev.streaks.streak("dep-1", "p95_ms") == 0


def test_non_candidate_and_no_deployment_ignored() -> None:
    ev = SLOEvaluator()
    for i in range(3):
        assert ev.observe(window(i * 5, p95=1500.0, arm="last_good")) is None
        assert ev.observe(window(i * 5, p95=1500.0, deployment_id=None)) is None
    assert ev.judge(window(0, arm="last_good")) == ()


def test_deployments_are_independent() -> None:
    ev = SLOEvaluator()
    ev.set_rules("dep-2", [SLORule("p95_ms", "p95_ms", "le", 2000, 2)])
    for i in range(2):
        assert ev.observe(window(i * 5, p95=1500.0, deployment_id="dep-2")) is None
    assert ev.observe(window(0, p95=1500.0)) is None
    assert ev.observe(window(5, p95=1500.0)) is not None


def test_restored_state_continues() -> None:
    ev = SLOEvaluator()
    ev.set_rules("dep-2", [SLORule("p95_ms", "p95_ms", "le", 1000, 3)])
    ev.observe(window(0, p95=1500.0))
    restored = SLOEvaluator.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert restored.rules_for("dep-2") == (SLORule("p95_ms", "p95_ms", "le", 1000, 3),)
    assert restored.observe(window(0, p95=1500.0)) is None  # redelivered across the restart
    d = restored.observe(window(5, p95=1500.0))
    assert d is not None and d.evidence["windows"][0]["window_id"] == "dep-1|cand|candidate@0"
    again = SLOEvaluator.from_dict(json.loads(json.dumps(restored.to_dict())))
    assert again.observe(window(10, p95=1500.0)) is None  # already fired before the restart


def test_streak_tracker_from_dict_rejects_malformed() -> None:
    with pytest.raises(InvalidEvent, match="StreakTracker"):
        StreakTracker.from_dict({"dep-1": {"fired": True}})
    with pytest.raises(InvalidEvent, match="SLOEvaluator"):
        SLOEvaluator.from_dict({"rules": []})


def test_slo_monitor_api() -> None:
    m = SLOMonitor()
    assert [r.name for r in m.rules] == ["p95_ms", "recall_at_10"]
    m.add_slo_rule(SLORule("errors", "error_rate", "le", 0.05))
    with pytest.raises(ConfigError, match="already exists"):
        m.add_slo_rule(SLORule("errors", "error_rate", "le", 0.05))
    found = m.evaluate(window(0, p95=1500.0, errors=10))
    assert [(v.rule_name, v.metric_value) for v in found] == [("p95_ms", 1500.0), ("errors", 10 / 48)]
    assert found[0].window_start == "1970-01-01T00:00:00.000Z"
    assert found[0].operator == "le" and found[0].threshold == 1200
    m.remove_slo_rule("errors")
    with pytest.raises(ConfigError, match="does not exist"):
        m.remove_slo_rule("errors")
    m.evaluate(window(5, p95=1500.0, deployment_id="dep-2"))
    assert len(m.get_violations()) == 3
    assert len(m.get_violations(deployment_id="dep-2")) == 1
    assert len(m.get_violations(config_name="cand", deployment_id="dep-1")) == 2
    assert m.get_violations(config_name="other") == []
    assert found[0].to_dict()["rule_name"] == "p95_ms"
