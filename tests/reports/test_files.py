"""The spec's file shapes: canary_result.json, metrics.json, audit.log — and how they are written."""

from __future__ import annotations

import json
from pathlib import Path

from canary.control.audit import control_event
from canary.core.models import RouterState, iso_ms
from canary.reports.files import (
    audit_lines,
    canary_result,
    export_all,
    metrics_export,
    read_audit_file,
    rebuild_audit,
    write_audit,
)
from canary.reports.model import build_report
from tests.reports.sample import CANDIDATE_COUNTS, LAST_GOOD_COUNTS, build

T0 = 1_700_000_000_000

SPEC_RESULT_KEYS = {
    "deployment_id",
    "start_time",
    "end_time",
    "status",
    "active_config",
    "candidate_config",
    "traffic_split",
    "metrics_summary",
    "rollback_reason",
    "total_requests",
    "duration_seconds",
}
# Beside the spec's keys: who ended the deployment (automatic or not), and how to read the counts.
EXTRA_RESULT_KEYS = {"ended_by", "notes"}
SPEC_BUCKET_KEYS = {
    "timestamp",
    "duration_sec",
    "p95_ms",
    "recall_at_10",
    "response_count",
    "slo_violations",
    "config_name",
}
SPEC_AUDIT_KEYS = {
    "event_id",
    "event_type",
    "timestamp",
    "deployment_id",
    "user_id",
    "config_name",
    "details",
    "success",
    "error_message",
}


def test_canary_result_has_the_spec_shape() -> None:
    sc = build(T0, "canary_1")
    report = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 600_000)
    result = canary_result(report)
    assert set(result) == SPEC_RESULT_KEYS | EXTRA_RESULT_KEYS
    assert result["deployment_id"] == "canary_1"
    assert result["start_time"] == iso_ms(T0) and result["end_time"] == iso_ms(sc.rollback.issued_at_ms)
    assert result["status"] == "rolled_back"
    assert result["active_config"] == "last_good" and result["candidate_config"] == "candidate_slow"
    assert result["traffic_split"] == {"active": 0.8, "candidate": 0.2}  # after the set_weight
    assert result["rollback_reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert result["total_requests"] == sum(CANDIDATE_COUNTS) + sum(LAST_GOOD_COUNTS)
    assert result["duration_seconds"] == (sc.rollback.issued_at_ms - T0) / 1000
    summary = result["metrics_summary"]
    assert set(summary) == {"active_config", "candidate_config"}
    for arm_summary in summary.values():
        assert set(arm_summary) >= {
            "avg_p95_ms",
            "avg_recall_at_10",
            "total_requests",
            "total_slo_violations",
            "buckets",
        }
    assert summary["candidate_config"]["buckets"] == 10 and summary["active_config"]["buckets"] == 11
    assert summary["candidate_config"]["total_requests"] == sum(CANDIDATE_COUNTS)
    assert summary["candidate_config"]["avg_p95_ms"] > summary["active_config"]["avg_p95_ms"]
    json.dumps(result)  # JSON-ready


def test_running_deployment_has_no_end_and_no_reason() -> None:
    sc = build(T0, "canary_1")
    report = build_report(commands=sc.command_dicts[:2], windows=sc.windows, now_ms=T0 + 90_000)
    result = canary_result(report)
    assert result["status"] == "running" and result["end_time"] is None and result["rollback_reason"] is None
    assert result["duration_seconds"] == 90.0


def test_metrics_json_has_the_spec_shape_in_time_order() -> None:
    sc = build(T0, "canary_1")
    report = build_report(commands=sc.command_dicts, windows=sc.windows)
    out = metrics_export(report.all_windows, now_ms=T0 + 600_000)
    assert set(out) == {"export_timestamp", "bucket_duration_sec", "total_buckets", "buckets"}
    assert out["export_timestamp"] == iso_ms(T0 + 600_000)
    assert out["bucket_duration_sec"] == 5 and out["total_buckets"] == 21 == len(out["buckets"])
    for b in out["buckets"]:
        assert set(b) == SPEC_BUCKET_KEYS | {"arm", "deployment_id", "window_end", "verdicts", "after_end"}
    first, second = out["buckets"][:2]
    assert (first["arm"], second["arm"]) == ("last_good", "candidate") and first["timestamp"] == iso_ms(T0)
    assert [b["timestamp"] for b in out["buckets"]] == sorted(b["timestamp"] for b in out["buckets"])
    failing = [b for b in out["buckets"] if any(v["outcome"] == "fail" for v in b["verdicts"])]
    assert [b["p95_ms"] for b in failing] == [1300.0, 1480.0, 1650.0]


def _state(seq: int, heartbeat: bool = False) -> dict[str, object]:
    return RouterState(
        router_id="router-1",
        deployment_id="canary_1",
        status="running",
        active_config="last_good",
        last_good="last_good",
        candidate_config="candidate_slow",
        weight=0.1,
        answers_command_id=None,
        applied_at_ms=T0 + seq,
        seq=seq,
        heartbeat=heartbeat,
    ).to_dict()


def test_rebuilt_audit_matches_the_worker_events() -> None:
    sc = build(T0, "canary_1")
    commands = [*sc.command_dicts, sc.rollback.to_dict(), {"garbage": True}]
    states = [_state(1), _state(2, heartbeat=True), _state(1)]
    events = rebuild_audit(commands, states)
    assert [e["event_type"] for e in events] == ["canary_start", "router_state", "canary_set_weight", "canary_rollback"]
    assert all(set(e) == SPEC_AUDIT_KEYS for e in events)
    assert events[-1] == control_event(sc.rollback)
    assert events[-1]["details"]["reason"] == sc.rollback.reason
    assert events[0]["details"]["traffic_split"] == {"active": 0.9, "candidate": 0.1}


def test_audit_file_round_trip_skips_torn_and_duplicate_lines(tmp_path: Path) -> None:
    sc = build(T0, "canary_1")
    events = rebuild_audit(sc.command_dicts)
    path = tmp_path / "audit.log"
    path.write_text(audit_lines(events) + audit_lines(events[:1]) + "not json\n" + '{"event_id": "torn"')
    assert read_audit_file(path) == events


def test_write_audit_leaves_the_workers_own_file_alone(tmp_path: Path) -> None:
    live = tmp_path / "audit.log"
    live.write_text('{"event_id": "x"}\n')
    write_audit([{"event_id": "y"}], tmp_path, source_file=live)
    assert live.read_text() == '{"event_id": "x"}\n'
    out = write_audit([{"event_id": "y"}], tmp_path / "elsewhere", source_file=live)
    assert out.read_text() == '{"event_id": "y"}\n'


def test_export_all_writes_the_four_files(tmp_path: Path) -> None:
    sc = build(T0, "canary_1")
    report = build_report(commands=sc.command_dicts, windows=sc.windows)
    paths = export_all(report, tmp_path / "out", rebuild_audit(sc.command_dicts), now_ms=T0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "audit.log",
        "canary_result.json",
        "metrics.json",
        "report.html",
    ]
    assert json.loads(paths["canary_result"].read_text())["status"] == "rolled_back"
    assert json.loads(paths["metrics"].read_text())["total_buckets"] == 21
    assert len(paths["audit"].read_text().splitlines()) == 3
    assert paths["report_html"].read_text().startswith("<!DOCTYPE html>")


def test_audit_source_order(tmp_path: Path) -> None:
    from canary.reports.export import audit_source_file
    from canary.settings import Settings

    settings = Settings(project_root=tmp_path / "project")
    out = tmp_path / "out"
    assert audit_source_file(settings, out) is None
    worker_default = settings.reports_dir / "audit.log"
    worker_default.parent.mkdir(parents=True)
    worker_default.write_text("")
    assert audit_source_file(settings, out) == worker_default
    out.mkdir()
    (out / "audit.log").write_text("")  # e.g. the demo's worker writes its log into the output directory
    assert audit_source_file(settings, out) == out / "audit.log"
    explicit = tmp_path / "explicit.log"
    explicit.write_text("")
    assert audit_source_file(settings, out, explicit) == explicit


def test_canary_result_of_a_rollout_carries_the_plan_and_the_step_it_reached() -> None:
    sc = build(T0, "canary_2", candidate="candidate_progressive")
    report = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 600_000)
    result = canary_result(report)
    assert set(result) == SPEC_RESULT_KEYS | EXTRA_RESULT_KEYS | {"rollout"}
    rollout = result["rollout"]
    assert [s["weight"] for s in rollout["steps"]] == [0.1, 0.25, 0.5, 1.0]
    # The scenario's operator set_weight 0.2 is off the plan's weights: no current step.
    assert rollout["current_step"] is None and rollout["of_steps"] == 4
    assert "rollout" not in canary_result(build_report(commands=build(T0, "c3").command_dicts, windows=[], now_ms=T0))
