from __future__ import annotations

import json
import math
from typing import Any

import pytest

from canary.core.models import WindowResult
from canary.core.monitor import SLOMonitor
from canary.core.slo import (
    SLOPolicy,
    SLORule,
    default_rules,
    deployment_policy,
    judge_window,
    policy_from_slo_section,
    rules_from_slo_section,
)
from canary.errors import ConfigError

P95 = SLORule("p95_ms", "p95_ms", "le", 1200, 2, method="point")
RECALL = SLORule("recall_at_10", "recall_at_10", "ge", 0.30, 2, method="point")
ERRORS = SLORule("error_rate", "error_rate", "le", 0.01, 2)


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
        (P95, {"n": 19}, "inconclusive", "too few samples: n=19 < 20"),
        (P95, {"n": 0, "p95": None}, "inconclusive", "no responses (n=0)"),
        (
            SLORule("p", "p95_ms", "le", 1200, min_samples=0),
            {"n": 0, "p95": None},
            "inconclusive",
            "no responses (n=0)",
        ),
        (RECALL, {"recall_n": 0, "recall": None}, "inconclusive", "no labeled outcomes (n=48)"),
        (RECALL, {"recall_n": 5}, "inconclusive", "too few samples: n=5 < 20"),
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
        ({"confidence": 1.0}, "confidence must be a number strictly between 0 and 1, got 1.0"),
        ({"confidence": 0}, "confidence must be a number strictly between 0 and 1"),
        ({"method": "bayes"}, "method must be one of sequential, point, got 'bayes'"),
        ({"relative_to": "prod"}, "relative_to must be one of last_good, got 'prod'"),
        ({"relative_to": "last_good", "threshold": -1}, "a relative latency threshold is a ratio and must be > 0"),
        ({"metric": "recall_at_10", "relative_to": "last_good", "threshold": 2}, "offset in \\[-1, 1\\]"),
        ({"metric": "error_rate", "threshold": 1.5}, "error_rate threshold must be in \\[0, 1\\]"),
        ({"metric": "response_count", "relative_to": "last_good"}, "response_count cannot be judged relative"),
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
    assert [(r.name, r.operator, r.threshold, r.method, r.confidence) for r in default_rules()] == [
        ("p95_ms", "le", 1200, "sequential", 0.99),
        ("recall_at_10", "ge", 0.30, "sequential", 0.99),
        ("error_rate", "le", 0.01, "sequential", 0.99),
    ]


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
        SLORule("error_rate", "error_rate", "le", 0.01, 3, 10),  # the default error rule comes along
        SLORule("errors", "error_rate", "le", 0.02, 3, 50),
    ]
    assert rules_from_slo_section({}) == default_rules()
    assert rules_from_slo_section({"min_samples": 5})[0].min_samples == 5
    assert [r.name for r in rules_from_slo_section({"p95_ms": 900, "error_rate": None})] == ["p95_ms"]


def test_policy_from_slo_section() -> None:
    policy = policy_from_slo_section(
        {
            "p95_ms": 1200,
            "confidence": 0.995,
            "method": "point",
            "inconclusive_limit": 24,
            "min_samples": 10,
            "rules": [
                {"name": "rel", "metric": "p95_ms", "operator": "le", "threshold": 1.2, "relative_to": "last_good"}
            ],
        }
    )
    assert (policy.inconclusive_limit, policy.min_samples, policy.has_relative) == (24, 10, True)
    assert {r.confidence for r in policy.rules} == {0.995} and {r.method for r in policy.rules} == {"point"}
    assert policy.latency_thresholds == (1200.0,)  # the relative rule's threshold is a ratio, not ms
    assert SLOPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


def test_deployment_policy_is_the_one_resolution() -> None:
    assert deployment_policy(None).rules == tuple(default_rules())
    assert deployment_policy({"slo": {"p95_ms": 800}}).rules[0].threshold == 800
    why: list[str] = []
    assert deployment_policy({"slo": {"p95_ms": "fast"}}, on_error=why.append).rules == tuple(default_rules())
    assert why == ['<snapshot>: slo.p95_ms = "fast": expected a number, got string']


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"p95_ms": "fast"}, r'slo.p95_ms = "fast": expected a number, got string'),
        ({"p95": 1}, r"slo.p95 = 1: unknown field \(did you mean 'p95_ms'\?\)"),
        ({"consecutive_buckets": 1.5}, r"slo.consecutive_buckets = 1.5: expected an integer, got number"),
        ({"confidence": 1.2}, r"slo.confidence = 1.2: must be strictly between 0 and 1"),
        ({"method": "x"}, r'slo.method = "x": must be one of sequential, point'),
        ({"inconclusive_limit": -1}, r"slo.inconclusive_limit = -1: must be >= 0"),
        (
            {"rules": [{"name": "x", "metric": "ndcg", "operator": "le", "threshold": 1}]},
            r'slo.rules\[0\].metric = "ndcg": is neither built in .* nor declared under slo.metrics \(declared: none\)',
        ),
        ({"rules": {"a": 1}}, r"slo.rules = {\"a\": 1}: expected a list"),
        (
            {"rules": [{"name": "x", "metric": "p95_ms", "operator": "le"}]},
            r"slo.rules\[0\].threshold: missing required field",
        ),
        (
            {"rules": [{"name": "x", "metric": "p95_ms", "operator": "le", "threshold": 1, "bad": 1}]},
            r"slo.rules\[0\].bad = 1: unknown field \(allowed: confidence, consecutive_buckets, method, metric,",
        ),
        (
            {"p95_ms": 1, "rules": [{"name": "p95_ms", "metric": "p95_ms", "operator": "le", "threshold": 2}]},
            "duplicate rule name",
        ),
        ([1], r"slo = \[1\]: must be a mapping, got list"),
        (
            {"rules": [{"name": "x", "metric": "p95_ms", "operator": "eq", "threshold": 1}]},
            r'slo.rules\[0\].operator = "eq": must be one of le, lt, ge, gt',
        ),
    ],
)
def test_rules_from_slo_section_rejects(section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rules_from_slo_section(section)


def test_slo_monitor_api() -> None:
    m = SLOMonitor([P95, RECALL])
    assert [r.name for r in m.rules] == ["p95_ms", "recall_at_10"]
    assert [r.name for r in SLOMonitor().rules] == ["p95_ms", "recall_at_10", "error_rate"]
    m.add_slo_rule(SLORule("errors", "error_rate", "le", 0.05, method="point"))
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


def test_a_rule_may_name_a_result_diff_metric_without_declaring_it() -> None:
    """rbo_at_10, jaccard_at_10 and top1_changed are measured by the router (docs/contracts.md, "Result-diff
    metrics"): a rule names them as it names a built-in, and the section then carries their declaration, so the
    windows aggregate them and a snapshot shows what is applied."""
    section = {"rules": [{"name": "same-top", "metric": "top1_changed", "operator": "le", "threshold": 0.2}]}
    policy = policy_from_slo_section(section)
    assert [m.name for m in policy.custom_metrics] == ["top1_changed"]
    assert policy.custom_metrics[0].aggregation == "rate"
    assert SLOPolicy.from_dict(policy.to_dict()) == policy  # the judge's checkpoint reads it back
    with pytest.raises(ConfigError, match=r"threshold|between"):
        policy_from_slo_section({"rules": [{"name": "r", "metric": "rbo_at_10", "operator": "ge", "threshold": 1.5}]})


def test_a_point_rule_on_a_custom_metric_is_judged_not_a_crash() -> None:
    """A custom metric judged by its point value (what every external metric is) used to raise KeyError in
    value_format, stopping the SLO agent on the first window."""
    from canary.core.custom import CustomMetric, with_external

    cpu = CustomMetric("cpu", "mean", 0.0, 1.0, "", "prometheus", "max(cpu)")
    rule = SLORule("cpu", "cpu", "le", 0.8, 2, min_samples=1, method="point", custom=cpu)
    w = window()
    breach = judge_window(rule, msgspec_replace(w, stats=with_external(w.stats, {"cpu": 0.95}, [cpu])))
    assert (breach.outcome, breach.reason) == ("fail", "cpu=0.95 > 0.8 (n=1)")
    missing = judge_window(rule, msgspec_replace(w, stats=with_external(w.stats, {"cpu": "timeout"}, [cpu])))
    assert missing.outcome == "inconclusive"


def msgspec_replace(w: WindowResult, **changes: Any) -> WindowResult:
    import msgspec.structs

    return msgspec.structs.replace(w, **changes)
