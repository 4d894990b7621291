"""DeploymentReport from plain commands and windows: selection, commands, weight timeline, preset diff."""

from __future__ import annotations

from typing import Any

import pytest

from canary.errors import DeploymentError
from canary.reports.model import DiffEntry, build_report, diff_snapshots, flatten, split_arms
from tests.reports.sample import BUCKET_MS, build, command, window

T0 = 1_700_000_000_000


def test_latest_deployment_by_default_and_named_one_on_request() -> None:
    first, second = build(T0, "dep-a"), build(T0 + 600_000, "dep-b")
    commands = first.command_dicts + second.command_dicts
    windows = first.windows + second.windows
    latest = build_report(commands=commands, windows=windows, now_ms=T0 + 900_000)
    assert latest.deployment_id == "dep-b"
    assert {w.deployment_id for w in latest.all_windows} == {"dep-b"}
    named = build_report(commands=commands, windows=windows, deployment_id="dep-a")
    assert named.deployment_id == "dep-a" and named.status == "rolled_back"
    assert len(named.candidate_windows) == 10 and len(named.last_good_windows) == 11


def test_no_deployment_and_unknown_deployment_are_deployment_errors() -> None:
    with pytest.raises(DeploymentError, match="no canary deployment has ever been started"):
        build_report(commands=[], windows=[])
    sc = build(T0, "dep-a")
    with pytest.raises(DeploymentError, match=r"no deployment 'nope'.*known: dep-a"):
        build_report(commands=sc.command_dicts, windows=sc.windows, deployment_id="nope")


def test_report_fields_from_the_rollback() -> None:
    sc = build(T0, "dep-a")
    r = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 900_000)
    assert r.status == "rolled_back"
    assert r.reason == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert r.end_command is not None and r.end_command.type == "rollback"
    assert r.end_command.evidence is not None and len(r.end_command.evidence["windows"]) == 2
    assert r.end_ms == sc.rollback.issued_at_ms
    assert r.active_config == "last_good" and r.candidate_name == "candidate_slow"
    assert [rule.metric for rule in r.rules] == ["p95_ms", "recall_at_10", "error_rate"]
    assert r.span_ms() == (T0, T0 + 11 * BUCKET_MS)


def test_commands_of_the_deployment_only_duplicates_dropped_rejections_kept() -> None:
    sc = build(T0, "dep-a")
    other = build(T0 + 600_000, "dep-b")
    late_promote = command("promote", "dep-a", T0 + 70_000, reason="too late")
    commands = [*sc.command_dicts, sc.rollback.to_dict(), late_promote.to_dict(), *other.command_dicts]
    r = build_report(commands=commands, windows=[], deployment_id="dep-a")
    assert [(c.type, c.applied) for c in r.commands] == [
        ("start", True),
        ("set_weight", True),
        ("rollback", True),
        ("promote", False),
    ]
    assert "already rolled_back" in r.commands[-1].note
    assert r.status == "rolled_back"  # the rejected promote changed nothing


WEIGHT_CASES: list[tuple[str, list[tuple[str, float | None]], list[tuple[str, float]]]] = [
    ("start then rollback", [("start", 0.1), ("rollback", None)], [("start", 0.1), ("rollback", 0.0)]),
    ("promotion gives everything", [("start", 0.1), ("promote", None)], [("start", 0.1), ("promote", 1.0)]),
    (
        "weight change while running",
        [("start", 0.1), ("set_weight", 0.25), ("abort", None)],
        [("start", 0.1), ("set_weight", 0.25), ("abort", 0.0)],
    ),
    (
        "pause sends nothing, a weight set while paused applies on resume",
        [("start", 0.1), ("pause", None), ("set_weight", 0.3), ("resume", None)],
        [("start", 0.1), ("pause", 0.0), ("set_weight", 0.0), ("resume", 0.3)],
    ),
]


@pytest.mark.parametrize(("name", "steps", "expected"), WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_weight_timeline(name: str, steps: list[tuple[str, float | None]], expected: list[tuple[str, float]]) -> None:
    sc = build(T0, "dep-a")
    start = sc.commands[0].to_dict()
    commands: list[dict[str, Any]] = []
    for i, (kind, weight) in enumerate(steps):
        at = T0 + i * 10_000
        if kind == "start":
            commands.append({**start, "weight": weight, "issued_at_ms": at})
        else:
            commands.append(command(kind, "dep-a", at, weight=weight).to_dict())
    r = build_report(commands=commands, windows=[])
    assert [(p.cause, p.weight) for p in r.weight_timeline] == expected
    assert [p.at_ms for p in r.weight_timeline] == [T0 + i * 10_000 for i in range(len(steps))]


def test_windows_split_by_arm_deduplicated_and_ordered() -> None:
    a = window("d", "c", "candidate", T0 + 5000, p95=900.0, count=30, emitted_at_ms=T0 + 11_000)
    a_redelivered = window("d", "c", "candidate", T0 + 5000, p95=950.0, count=31, emitted_at_ms=T0 + 12_000)
    b = window("d", "c", "candidate", T0, p95=800.0, count=30)
    lg = window("d", "lg", "last_good", T0, p95=400.0, count=300)
    foreign = window("other", "c", "candidate", T0, p95=1.0, count=1)
    no_dep = window(None, "lg", "last_good", T0, p95=1.0, count=1)
    last_good, candidate = split_arms([a, lg, foreign, a_redelivered, b, no_dep], "d")
    assert last_good == (lg,)
    assert candidate == (b, a_redelivered)


def test_with_windows_replaces_the_windows_for_a_replay() -> None:
    sc = build(T0, "dep-a")
    r = build_report(commands=sc.command_dicts, windows=sc.windows)
    recomputed = [window("dep-a", "candidate_slow", "candidate", T0, p95=123.0, count=40)]
    replayed = r.with_windows(recomputed, source="replay")
    assert replayed.candidate_windows == tuple(recomputed) and replayed.last_good_windows == ()
    assert replayed.source == "replay" and replayed.commands == r.commands


FLATTEN_CASES: list[tuple[Any, dict[str, Any]]] = [
    ({"a": {"b": 1, "c": {"d": "x"}}}, {"a.b": 1, "a.c.d": "x"}),
    ({"tags": ["a", "b"]}, {"tags": ["a", "b"]}),
    ({"slo": {"rules": [{"name": "r", "threshold": 5}]}}, {"slo.rules[0].name": "r", "slo.rules[0].threshold": 5}),
    ({"slo": {"rules": []}, "empty": {}}, {"slo.rules": [], "empty": {}}),
    ({"backend": None}, {"backend": None}),
]


@pytest.mark.parametrize(("nested", "flat"), FLATTEN_CASES)
def test_flatten(nested: Any, flat: dict[str, Any]) -> None:
    assert flatten(nested) == flat


DIFF_CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[DiffEntry]]] = [
    ("identical", {"a": {"b": 1}}, {"a": {"b": 1}}, []),
    ("int and float of equal value are the same", {"x": 1200}, {"x": 1200.0}, []),
    ("a bool is not a number", {"x": 1}, {"x": True}, [DiffEntry("x", 1, True, "changed")]),
    (
        "changed leaf",
        {"d": {"ef": 64, "T": 700}},
        {"d": {"ef": 1024, "T": 700}},
        [DiffEntry("d.ef", 64, 1024, "changed")],
    ),
    ("added key", {"a": 1}, {"a": 1, "b": 2}, [DiffEntry("b", None, 2, "added")]),
    ("removed key", {"a": 1, "b": 2}, {"a": 1}, [DiffEntry("b", 2, None, "removed")]),
    ("list leaf", {"tags": ["x"]}, {"tags": ["x", "y"]}, [DiffEntry("tags", ["x"], ["x", "y"], "changed")]),
]


@pytest.mark.parametrize(("name", "a", "b", "expected"), DIFF_CASES, ids=[c[0] for c in DIFF_CASES])
def test_diff_snapshots(name: str, a: dict[str, Any], b: dict[str, Any], expected: list[DiffEntry]) -> None:
    assert diff_snapshots(a, b) == expected


def test_preset_diff_of_the_shipped_presets() -> None:
    sc = build(T0, "dep-a")
    r = build_report(commands=sc.command_dicts, windows=[])
    diff = {d.key: d for d in r.diff}
    assert diff["derived_params.ef"].last_good == 64 and diff["derived_params.ef"].candidate == 1024
    assert diff["metadata.name"].candidate == "candidate_slow"
    assert "reranker.model" not in diff and "slo.p95_ms" not in diff  # unchanged keys are left out
    assert diff["reranker.max_tokens"].change == "added"  # only candidate_slow sets it
    assert all(d.change == "changed" for k, d in diff.items() if k != "reranker.max_tokens")


# -- after the end: counts stop at the decision ------------------------------------------------------------
def test_counts_after_a_rollback_stop_at_the_decision() -> None:
    from tests.reports.sample import CANDIDATE_P95, build_with_aftermath

    sc = build_with_aftermath(T0, "dep-a")
    r = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 900_000)
    assert r.end_ms is not None and T0 + 50_000 < r.end_ms < T0 + 55_000
    # Judged until the rollback: the ten buckets before it, three of them failing (the rollback came after
    # the last two). The bucket open at the rollback holds the candidate's in-flight requests: it is shown
    # (with last_good's bucket of the same slot), judged "fail" by the judge, and counted nowhere.
    assert len(r.judged_windows) == len(CANDIDATE_P95) and len(r.failed_windows) == 3
    (late_cand,) = [w for w in r.late_windows if w.arm == "candidate"]
    assert late_cand.response_count == 35 and any(v.outcome == "fail" for v in late_cand.verdicts)
    assert [w.window_start_ms - T0 for w in r.late_windows] == [50_000, 50_000]
    # The empty candidate buckets after it, and last_good's buckets going on, are left out: the axis ends
    # with the last bucket holding the deployment's data.
    assert len(r.candidate_windows) == len(CANDIDATE_P95) + 1 and len(r.last_good_windows) == 11
    assert r.span_ms() == (T0, T0 + 55_000)


def test_result_counts_after_a_rollback_and_last_good_not_judged() -> None:
    from canary.reports.files import canary_result, metrics_export
    from tests.reports.sample import CANDIDATE_P95, build_with_aftermath

    sc = build_with_aftermath(T0, "dep-a")
    r = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 900_000)
    result = canary_result(r)
    cand, lg = result["metrics_summary"]["candidate_config"], result["metrics_summary"]["active_config"]
    assert (cand["judged_buckets"], cand["failed_buckets"], cand["buckets_after_end"]) == (len(CANDIDATE_P95), 3, 1)
    assert cand["buckets"] == len(CANDIDATE_P95) + 1 and cand["judged"] is True
    # last_good is never judged: no failed-bucket figure (not a reassuring 0) beside its violating requests.
    assert (lg["judged"], lg["judged_buckets"], lg["failed_buckets"]) == (False, 0, None)
    assert lg["total_slo_violations"] == 0 and cand["total_slo_violations"] > 0
    assert result["ended_by"] == {
        "command": "rollback",
        "command_id": sc.rollback.command_id,
        "issued_by": "slo-agent",
        "automatic": True,
        "reason": "SLO violation: p95_ms failed for 2 consecutive buckets",
    }
    notes = " ".join(result["notes"])
    assert "last_good is not judged" in notes and "1 candidate bucket(s) after the rollback hold 35 requests" in notes
    buckets = metrics_export(r.all_windows, end_ms=r.end_ms)["buckets"]
    assert [(b["arm"], b["after_end"]) for b in buckets if b["after_end"]] == [("last_good", True), ("candidate", True)]


def test_a_plan_promotion_is_the_agents_and_its_empty_bucket_after_it_is_left_out() -> None:
    from canary.reports.files import canary_result
    from tests.reports.sample import build_promotion

    sc = build_promotion(T0, "dep-p")
    r = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 900_000)
    assert r.status == "promoted" and r.end_command is not None
    assert (r.end_command.command_id, r.end_command.issued_by) == ("rollout-dep-p-promote", "slo-agent")
    assert r.end_command.reason is not None and r.end_command.reason.startswith("rollout: step 4 of 4")
    assert [c.issued_by for c in r.commands] == ["cli:alice", "slo-agent", "slo-agent", "slo-agent", "slo-agent"]
    assert len(r.judged_windows) == 13 and not r.failed_windows and not r.late_windows
    assert r.span_ms() == (T0, r.end_ms)
    assert canary_result(r)["ended_by"]["automatic"] is True
