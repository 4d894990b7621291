"""``--rules FILE`` parsing (a preset's whole ``slo`` section), and the replay's rules staying in step with the
live registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.config.rules import load_policy_file
from canary.core.custom import CustomMetric
from canary.core.deployment import ControlLedger
from canary.core.models import WindowKey
from canary.core.slo import SLOPolicy, SLORule, deployment_policy, policy_from_slo_section
from canary.errors import ConfigError
from canary.pipeline.policies import PolicyBook, aggregator_for_policy
from streams.registry import DeploymentRegistry
from tests.replay.helpers import start


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param(
            "loose.yaml",
            "slo:\n  p95_ms: 5000\n",
            [SLORule("p95_ms", "p95_ms", "le", 5000), SLORule("error_rate", "error_rate", "le", 0.01)],
            id="yaml-shorthand",
        ),
        pytest.param(
            "bare.yaml",
            "p95_ms: 900\nrecall_at_10: 0.5\nconsecutive_buckets: 3\nmin_samples: 10\n",
            [
                SLORule("p95_ms", "p95_ms", "le", 900, 3, 10),
                SLORule("recall_at_10", "recall_at_10", "ge", 0.5, 3, 10),
                SLORule("error_rate", "error_rate", "le", 0.01, 3, 10),
            ],
            id="bare-section",
        ),
        pytest.param(
            "rules.json",
            '{"slo": {"rules": [{"name": "errors", "metric": "error_rate", "operator": "le", "threshold": 0.05}]}}',
            [SLORule("errors", "error_rate", "le", 0.05)],
            id="json-explicit-rules",
        ),
        pytest.param(
            "preset.yaml",
            "metadata:\n  name: x\nretriever:\n  type: bm25\nslo:\n  recall_at_10: 0.4\n",
            [SLORule("recall_at_10", "recall_at_10", "ge", 0.4), SLORule("error_rate", "error_rate", "le", 0.01)],
            id="whole-preset",
        ),
    ],
)
def test_good_rules_files(tmp_path: Path, name: str, text: str, expected: list[SLORule]) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert list(load_policy_file(path).rules) == expected


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        pytest.param("bad.yaml", "slo:\n  p95_ms: fast\n", ["bad.yaml", "slo.p95_ms", "expected a number"], id="type"),
        pytest.param(
            "bad.yaml",
            "slo:\n  p95_ms: 100\n  p99_ms: 200\n",
            ["bad.yaml", "slo", "unknown field", "p99_ms"],
            id="unknown",
        ),
        pytest.param(
            "bad.yaml",
            "slo:\n  rules:\n    - name: x\n      metric: p95_ms\n      operator: eq\n      threshold: 1\n",
            ["bad.yaml", "slo.rules[0]", "operator"],
            id="operator",
        ),
        pytest.param(
            "bad.yaml",
            "slo:\n  rules:\n    - name: x\n      metric: p95_ms\n      operator: le\n",
            ["bad.yaml", "slo.rules[0].threshold", "missing"],
            id="missing-threshold",
        ),
        pytest.param(
            "bad.yaml", "slo:\n  consecutive_buckets: 0\n", ["bad.yaml", "consecutive_buckets"], id="zero-buckets"
        ),
        pytest.param("bad.yaml", "slo: [1, 2]\n", ["bad.yaml", "slo", "mapping"], id="slo-not-mapping"),
        pytest.param("bad.yaml", "- 1\n- 2\n", ["bad.yaml", "top level", "mapping"], id="list"),
        pytest.param("bad.yaml", "metadata: {}\n", ["bad.yaml", "no 'slo' section"], id="no-slo"),
        pytest.param("bad.yaml", "slo:\n  p95_ms: [\n", ["bad.yaml", "invalid YAML", "line"], id="yaml-syntax"),
        pytest.param("bad.yaml", "slo:\n  p95_ms: 1\n  p95_ms: 2\n", ["bad.yaml", "duplicate key"], id="dup-key"),
        pytest.param("bad.json", '{"slo": {"p95_ms": 1,}}', ["bad.json", "invalid JSON", "line 1"], id="json-syntax"),
    ],
)
def test_bad_rules_files_name_file_field_reason(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy_file(path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: rules file not found"):
        load_policy_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "slo",
    [
        None,
        {"p95_ms": 800},
        {"p95_ms": 1500, "recall_at_10": 0.6, "consecutive_buckets": 3, "min_samples": 5},
        {"rules": [{"name": "e", "metric": "error_rate", "operator": "le", "threshold": 0.1}]},
        {"p95_ms": "broken"},
    ],
)
def test_rules_and_thresholds_match_the_live_registry(slo: dict[str, object] | None) -> None:
    """One resolution (canary.pipeline.policies.PolicyBook) for the live registry and for replay."""
    cmd = start("dep-1", slo=slo) if slo is not None else start("dep-1")
    registry = DeploymentRegistry("unused:9092", "control")
    ledger = ControlLedger()
    registry.ledger.apply(cmd)
    ledger.apply(cmd)
    dep = ledger.deployments["dep-1"]
    assert isinstance(registry.policies, PolicyBook)
    book = PolicyBook(ledger)
    assert book.policy("dep-1") == registry.policy("dep-1") == deployment_policy(dep.candidate.snapshot)
    key = WindowKey("dep-1", "cand", "candidate")
    live_agg = registry.aggregator_for(key)
    ours = book.aggregator_for(key)
    assert (ours.latency_threshold_ms, ours.recall_threshold, ours.exceed_thresholds_ms) == (
        live_agg.latency_threshold_ms,
        live_agg.recall_threshold,
        live_agg.exceed_thresholds_ms,
    )


def test_override_thresholds_drive_violation_counting() -> None:
    policy = SLOPolicy((SLORule("p95_ms", "p95_ms", "le", 5000), SLORule("r", "recall_at_10", "ge", 0.9)))
    agg = aggregator_for_policy(policy)
    assert (agg.latency_threshold_ms, agg.recall_threshold) == (5000, 0.9)
    assert PolicyBook(ControlLedger(), policy.rules).policy("any") == policy


def test_a_rules_file_keeps_the_whole_policy(tmp_path: Path) -> None:
    """inconclusive_limit, the section's min_samples and declared custom metrics are the policy too: a backtest
    dropped them when a rules file was read as rules alone."""
    section = {
        "p95_ms": 900,
        "min_samples": 5,
        "inconclusive_limit": 4,
        "metrics": [{"name": "timeouts", "aggregation": "rate"}],
        "rules": [{"name": "timeouts", "metric": "timeouts", "operator": "le", "threshold": 0.05}],
    }
    path = tmp_path / "rules.yaml"
    path.write_text(
        "slo:\n  p95_ms: 900\n  min_samples: 5\n  inconclusive_limit: 4\n"
        "  metrics:\n    - {name: timeouts, aggregation: rate}\n"
        "  rules:\n    - {name: timeouts, metric: timeouts, operator: le, threshold: 0.05}\n"
    )
    policy = load_policy_file(path)
    assert policy == policy_from_slo_section(section)  # the parser the SLO agent applies to a snapshot
    assert (policy.inconclusive_limit, policy.min_samples) == (4, 5)
    assert policy.custom_metrics == (CustomMetric("timeouts", "rate"),)
    assert [r.name for r in policy.rules] == ["p95_ms", "error_rate", "timeouts"]
    assert all(r.min_samples == 5 for r in policy.rules)
    # The bare section (no 'slo:' key) takes the same keys.
    bare = tmp_path / "bare.json"
    bare.write_text(
        '{"inconclusive_limit": 0, "metrics": [{"name": "timeouts", "aggregation": "rate"}], "rules": '
        '[{"name": "t", "metric": "timeouts", "operator": "le", "threshold": 0.1}]}'
    )
    assert load_policy_file(bare).inconclusive_limit == 0


def test_a_rules_list_override_still_aggregates_its_custom_metrics() -> None:
    """An override given as bare rules (the old API) carries its rules' declared metrics into the policy, so
    the windows stage aggregates them."""
    declared = CustomMetric("timeouts", "rate")
    rule = SLORule("t", "timeouts", "le", 0.05, custom=declared)
    policy = PolicyBook(ControlLedger(), [rule]).policy("any")
    assert policy.custom_metrics == (declared,)
    assert aggregator_for_policy(policy).custom is not None
