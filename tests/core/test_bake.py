"""Bake after promotion (issue #23, item 3), Kafka-free: which snapshots bake and for how long, what the
ledger does with a rollback during and after the bake, and the decision step's judge of the promoted config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary.core.bake import DEFAULT_BAKE_S, bake_policy, bake_seconds, revert_command_id
from canary.core.deployment import ControlLedger, snapshot_hash
from canary.core.models import ControlCommand, WindowKey
from canary.pipeline.decisions import DecisionStep
from canary.pipeline.policies import PolicyBook, aggregator_for_policy
from tests.core.helpers import outcome

LAST_GOOD = {"metadata": {"name": "last_good", "version": "1.0.0"}, "slo": {}}
PLAN = {"steps": [{"weight": 0.5}, {"weight": 1.0}], "min_total_duration_s": 0}
W = 5000


def _cand(**extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "cand", "version": "1.0.0"}, "slo": {"p95_ms": 1200, "recall_at_10": 0.3}, **extra}


@pytest.mark.parametrize(
    ("snapshot", "seconds"),
    [
        (_cand(), None),  # no plan, no section: no bake
        (_cand(bake={"duration_s": 90.0}), 90.0),
        (_cand(rollout=PLAN), DEFAULT_BAKE_S),  # a plan bakes by default
        (_cand(rollout=PLAN, bake={"duration_s": 0.0}), None),  # ... unless told not to
        (_cand(bake="soon"), None),  # unreadable (a hand-written command): no bake
    ],
)
def test_which_snapshots_bake(snapshot: dict[str, Any], seconds: float | None) -> None:
    assert bake_seconds(snapshot) == seconds


def test_the_bake_judges_the_absolute_rules_only() -> None:
    relative = {"name": "rel", "metric": "p95_ms", "operator": "le", "threshold": 1.2, "relative_to": "last_good"}
    policy = bake_policy(_cand(slo={"p95_ms": 1200, "recall_at_10": 0.3, "rules": [relative]}))
    assert [r.name for r in policy.rules] == ["p95_ms", "recall_at_10", "error_rate"]
    assert policy.inconclusive_limit == 0


def _cmd(kind: str, dep: str, at: int, **fields: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "candidate_config": None,
        "candidate_config_hash": None,
        "last_good_config": None,
        "weight": None,
        "reason": None,
        "evidence": None,
    }
    base.update(fields)
    return ControlCommand(
        command_id=f"{kind}-{dep}-{at}", type=kind, deployment_id=dep, issued_by="cli:t", issued_at_ms=at, **base
    )  # type: ignore[arg-type]


def _promoted(snapshot: dict[str, Any], dep: str = "d1", at: int = 10_000) -> ControlLedger:
    ledger = ControlLedger()
    start = _cmd(
        "start",
        dep,
        0,
        candidate_config=snapshot,
        candidate_config_hash=snapshot_hash(snapshot),
        last_good_config=LAST_GOOD,
        weight=0.5,
    )
    assert ledger.apply(start).applied
    assert ledger.apply(_cmd("promote", dep, at)).applied
    return ledger


def test_a_rollback_during_the_bake_reverts_and_after_it_is_refused() -> None:
    ledger = _promoted(_cand(bake={"duration_s": 60.0}))
    dep = ledger.deployments["d1"]
    assert (dep.status, dep.bake_until_ms, ledger.last_good.name) == ("promoted", 70_000, "cand")  # type: ignore[union-attr]
    late = ledger.apply(_cmd("rollback", "d1", 70_001))
    assert not late.applied and "already promoted" in late.note
    applied = ledger.apply(_cmd("rollback", "d1", 69_000))
    assert applied.applied and "reverted during its bake" in applied.note
    assert ledger.deployments["d1"].status == "rolled_back" and ledger.last_good.name == "last_good"  # type: ignore[union-attr]
    unbaked = _promoted(_cand())
    assert not unbaked.apply(_cmd("rollback", "d1", 11_000)).applied  # no bake: a promotion is final


def _last_good_window(index: int, latency_ms: float, t0: int = 10_000) -> Any:
    agg = aggregator_for_policy(bake_policy(_cand()))
    start = t0 + index * W
    outcomes = [
        outcome(start + i, latency_ms, arm="last_good", deployment_id="d1", config_name="cand") for i in range(40)
    ]
    state = agg.agg(agg.initialize(), outcomes)
    return agg.result(state, WindowKey("d1", "cand", "last_good"), start, start + W, (), start + W + 1000)


def test_the_decision_step_reverts_a_degraded_bake_and_keeps_a_healthy_one() -> None:
    ledger = _promoted(_cand(bake={"duration_s": 120.0}))
    step = DecisionStep(PolicyBook(ledger), lambda: ledger)
    healthy = [step.observe(_last_good_window(i, 100.0), 10_000 + (i + 1) * W + 1000) for i in range(4)]
    assert all(not issues for _, issues in healthy)
    assert all(j.window.arm == "last_good" and j.window.verdicts for js, _ in healthy for j in js)
    issues = []
    for i in range(4, 8):
        _, got = step.observe(_last_good_window(i, 3000.0), 10_000 + (i + 1) * W + 1000)
        issues += got
    assert [i.command.command_id for i in issues if i.issued and i.command] == [revert_command_id("d1")]
    assert issues[0].command is not None and issues[0].command.type == "rollback"
    state = step.state("d1")
    assert state is not None and "bake" in state  # checkpointed with the judge
    encoded = step.state_json("d1")  # what the SLO agent writes: the same JSON as the standard library's
    assert encoded is not None and json.loads(encoded) == json.loads(json.dumps(state))
    again = DecisionStep(PolicyBook(ledger), lambda: ledger)
    again.restore("d1", state)
    assert again.bakes["d1"].to_dict() == step.bakes["d1"].to_dict()


def test_relative_rules_bake_against_the_previous_configs_recorded_figures() -> None:
    relative = {"name": "rel-p95", "metric": "p95_ms", "operator": "le", "threshold": 1.5, "relative_to": "last_good"}
    offset = {
        "name": "rel-recall",
        "metric": "recall_at_10",
        "operator": "ge",
        "threshold": -0.05,
        "relative_to": "last_good",
    }
    snapshot = _cand(slo={"p95_ms": 1200, "recall_at_10": 0.3, "rules": [relative, offset]})
    policy = bake_policy(snapshot, {"p95_ms": 200.0, "recall_at_10": 0.5})
    rules = {r.name: r for r in policy.rules}
    assert (rules["rel-p95"].threshold, rules["rel-p95"].relative_to) == (300.0, None)
    assert rules["rel-recall"].threshold == pytest.approx(0.45)
    assert "rel-p95" not in {r.name for r in bake_policy(snapshot, {}).rules}  # no recorded figure: left out


def test_the_deployments_judge_records_last_goods_figures_for_the_bake() -> None:
    from canary.core.judge import DeploymentJudge
    from canary.core.policy import policy_from_slo_section

    relative = {"name": "rel-p95", "metric": "p95_ms", "operator": "le", "threshold": 1.5, "relative_to": "last_good"}
    policy = policy_from_slo_section({"p95_ms": 1200, "recall_at_10": 0.3, "rules": [relative]})
    judge = DeploymentJudge("d1", policy, baseline_wait_ms=0)
    for i in range(3):
        judge.observe(_last_good_window(i, 200.0, t0=0), (i + 1) * W + 1000)
        agg = aggregator_for_policy(policy)
        start = i * W
        outcomes = [outcome(start + j, 210.0, deployment_id="d1", config_name="cand") for j in range(40)]
        state = agg.agg(agg.initialize(), outcomes)
        judge.observe(
            agg.result(state, WindowKey("d1", "cand", "candidate"), start, start + W, (), start + W + 1000),
            start + W + 1000,
        )
    figures = judge.previous_figures()
    assert set(figures) == {"p95_ms"} and figures["p95_ms"] == pytest.approx(200.0, rel=0.05)
