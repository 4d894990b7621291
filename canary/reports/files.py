"""The spec's output files: canary_result.json, metrics.json, audit.log (plus report.html).

Builders return plain dicts / lines so tests can check shapes without touching disk; writers write
atomically (temporary file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from canary.control import ControlHistory
from canary.control.audit import audit_events, control_event
from canary.core import wire
from canary.core.models import ControlCommand, RouterState, WindowResult, iso_ms, parse_time
from canary.core.rollout import plan_status
from canary.errors import CanaryError
from canary.pipeline.decisions import SLO_AGENT
from canary.reports.metrics import summarize
from canary.reports.model import DeploymentReport

CANARY_RESULT = "canary_result.json"
METRICS = "metrics.json"
AUDIT_LOG = "audit.log"
REPORT_HTML = "report.html"

# The spec's metrics_summary entry per arm; summarize() adds a few more fields.
ARM_SUMMARY_KEYS = ("avg_p95_ms", "avg_recall_at_10", "total_requests", "total_slo_violations", "buckets")


def _arm_summary(report: DeploymentReport, arm: str) -> dict[str, Any]:
    """One arm's figures: every request it served (in-flight ones that finished after the end included), and
    the buckets judged up to the end. last_good is never judged: its ``failed_buckets`` is null, not 0."""
    windows = report.windows(arm)
    stats = summarize(windows)
    if arm == "candidate":
        stats["judged_buckets"] = len(report.judged_windows)
        stats["failed_buckets"] = len(report.failed_windows)
    else:
        stats["judged_buckets"] = 0
        stats["failed_buckets"] = None
    stats["buckets_after_end"] = sum(1 for w in windows if report.after_end(w))
    name = report.candidate_name if arm == "candidate" else report.last_good_name
    return {"config_name": name, "arm": arm, "judged": arm == "candidate", **stats}


def result_notes(report: DeploymentReport) -> list[str]:
    """What a reader of canary_result.json needs to read its counts right."""
    notes = [
        "total_slo_violations counts requests that broke an SLO threshold; failed_buckets counts judged candidate "
        "buckets in which a rule failed (the decision rests on those). last_good is not judged: its "
        "failed_buckets is null"
    ]
    late = [w for w in report.candidate_windows if report.after_end(w)]
    if late:
        notes.append(
            f"{len(late)} candidate bucket(s) after {report.end_verb} hold {sum(w.response_count for w in late)} "
            "requests sent before it that finished after it (in flight): they count in total_requests, not in "
            "judged_buckets or failed_buckets (buckets_after_end counts them, and last_good's of the same slots)"
        )
    return notes


def canary_result(report: DeploymentReport) -> dict[str, Any]:
    """``canary_result.json`` in the spec's shape."""
    dep = report.deployment
    end = dep.ended_at_ms
    duration_end = end if end is not None else report.generated_at_ms
    lg, cand = _arm_summary(report, "last_good"), _arm_summary(report, "candidate")
    plan = plan_status(dep.candidate.snapshot, dep.weight, dep.weight_set_at_ms)
    # The spec's shape, plus the plan and the broker outages (with both arms' p95 per bucket) when there are.
    extra: dict[str, Any] = {"rollout": plan} if plan is not None else {}
    if report.outages:
        extra["broker_outages"] = [
            {
                **o.to_dict(),
                "buckets": [
                    {
                        "window_start": iso_ms(slot.start_ms),
                        "phase": slot.phase,
                        "candidate_p95_ms": slot.candidate.p95_ms if slot.candidate else None,
                        "last_good_p95_ms": slot.last_good.p95_ms if slot.last_good else None,
                        "candidate_verdicts": {v.rule: v.outcome for v in slot.candidate.verdicts}
                        if slot.candidate
                        else {},
                    }
                    for slot in report.outage_slots(o)
                ],
            }
            for o in report.outages
        ]
    return {
        "deployment_id": dep.deployment_id,
        "start_time": iso_ms(dep.started_at_ms),
        "end_time": iso_ms(end) if end is not None else None,
        "status": dep.status,
        "active_config": report.active_config,
        "candidate_config": report.candidate_name,
        "traffic_split": {"active": round(1 - dep.weight, 6), "candidate": dep.weight},
        "metrics_summary": {"active_config": lg, "candidate_config": cand},
        "rollback_reason": dep.reason if dep.status in ("rolled_back", "aborted") else None,
        "total_requests": lg["total_requests"] + cand["total_requests"],
        "duration_seconds": round(max(0, duration_end - dep.started_at_ms) / 1000, 3),
        **extra,
        "ended_by": _ended_by(report),
        "notes": result_notes(report),
    }


def _ended_by(report: DeploymentReport) -> dict[str, Any] | None:
    """Who ended the deployment and how: ``automatic`` for the SLO agent's own decisions (a rollback, a
    rollout plan's promotion), ``operator`` for a person's or a script's command."""
    end = report.end_command
    if end is None:
        return None
    return {
        "command": end.type,
        "command_id": end.command_id,
        "issued_by": end.issued_by,
        "automatic": end.issued_by == SLO_AGENT,
        "reason": end.reason,
    }


def bucket_entry(w: WindowResult, end_ms: int | None = None) -> dict[str, Any]:
    """One bucket of ``metrics.json``: the spec's fields first, then arm, deployment, window end, verdicts, and
    ``after_end``: the bucket was still open when the deployment ended (its requests were in flight then; it
    is not one of the judged buckets the decision rests on)."""
    d = w.to_dict()
    return {
        "timestamp": d["timestamp"],
        "duration_sec": w.duration_sec,
        "p95_ms": w.p95_ms,
        "recall_at_10": w.recall_at_10,
        "response_count": w.response_count,
        "slo_violations": w.slo_violations,
        "config_name": w.config_name,
        "arm": w.arm,
        "deployment_id": w.deployment_id,
        "window_end": d["window_end"],
        "verdicts": d["verdicts"],
        "after_end": end_ms is not None and w.window_end_ms > end_ms,
    }


def metrics_export(
    windows: Sequence[WindowResult], now_ms: int | None = None, end_ms: int | None = None
) -> dict[str, Any]:
    """``metrics.json`` in the spec's shape, buckets in time order (last_good before candidate); ``end_ms``:
    when the deployment ended, which marks the buckets still open then (``after_end``)."""
    ordered = sorted(windows, key=lambda w: (w.window_start_ms, w.arm != "last_good", w.config_name))
    durations = Counter(w.duration_sec for w in ordered)
    return {
        "export_timestamp": iso_ms(now_ms if now_ms is not None else int(time.time() * 1000)),
        "bucket_duration_sec": durations.most_common(1)[0][0] if durations else 5,
        "total_buckets": len(ordered),
        "buckets": [bucket_entry(w, end_ms) for w in ordered],
    }


# -- audit -------------------------------------------------------------------------------------------------
def read_audit_file(path: Path) -> list[dict[str, Any]]:
    """Complete, valid JSON lines of an audit.log (a torn last line of a live writer is skipped)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                event = wire.decode(line, wire.AUDIT_LINE)
            except wire.Rejected:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                continue
            if event["event_id"] in seen:
                continue
            seen.add(event["event_id"])
            out.append(event)
    return out


def rebuild_audit(
    commands: Iterable[Mapping[str, Any]] | ControlHistory,
    states: Iterable[Mapping[str, Any]] = (),
    values: Sequence[bytes | None] | None = None,
) -> list[dict[str, Any]]:
    """The audit events the worker would have written for these control and state records.

    ``commands``: the control topic folded by :func:`canary.control.fold_records` (verified with the trusted
    keys, as ``canary export`` does) — each record gets exactly the line the worker's audit agent writes
    for it (:func:`canary.control.audit.audit_events`: ``success: false`` with the verifier's or the
    ledger's reason for one not applied; ``values``: the raw records, quoted in a poison record's line); or
    plain commands a reader verified already, each audited as applied. Router heartbeats are skipped,
    duplicates are dropped by event id. The state topic is compacted, so older router states may be gone;
    control events are complete. Ordered by time.
    """
    from canary.control.audit import state_event

    events: dict[str, dict[str, Any]] = {}
    if isinstance(commands, ControlHistory):
        for ev in audit_events(commands, values):
            events.setdefault(ev["event_id"], ev)
    else:
        for raw in commands:
            try:
                cmd = ControlCommand.from_dict(raw)
            except CanaryError:
                continue
            ev = control_event(cmd)
            events.setdefault(ev["event_id"], ev)
    for raw in states:
        try:
            state = RouterState.from_dict(raw)
        except CanaryError:
            continue
        if state.heartbeat:
            continue
        ev = state_event(state)
        events.setdefault(ev["event_id"], ev)
    return sorted(events.values(), key=event_time_ms)


def event_time_ms(event: Mapping[str, Any]) -> int:
    try:
        return parse_time(event.get("timestamp", 0))
    except CanaryError:
        return 0


def audit_lines(events: Iterable[Mapping[str, Any]]) -> str:
    """The audit.log text: one JSON object per line, as the worker writes them."""
    return "".join(json.dumps(dict(e), ensure_ascii=False) + "\n" for e in events)


# -- writing -----------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(path: Path, payload: Any) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_canary_result(report: DeploymentReport, out_dir: Path) -> Path:
    return write_json(out_dir / CANARY_RESULT, canary_result(report))


def write_metrics(report: DeploymentReport, out_dir: Path, now_ms: int | None = None) -> Path:
    return write_json(out_dir / METRICS, metrics_export(report.all_windows, now_ms=now_ms, end_ms=report.end_ms))


def write_audit(events: Sequence[Mapping[str, Any]], out_dir: Path, source_file: Path | None = None) -> Path:
    """Write ``audit.log`` into ``out_dir``. If that is the worker's own file (``source_file``), it is left
    untouched: it already is the log, and rewriting it under a running worker could lose a line."""
    target = out_dir / AUDIT_LOG
    if source_file is not None and target.exists() and target.resolve() == source_file.resolve():
        return target
    return write_atomic(target, audit_lines(events))


def write_report_html(report: DeploymentReport, out_dir: Path) -> Path:
    from canary.reports.html import render_report

    return write_atomic(out_dir / REPORT_HTML, render_report(report))


def export_all(
    report: DeploymentReport,
    out_dir: Path,
    audit_events: Sequence[Mapping[str, Any]],
    audit_source_file: Path | None = None,
    now_ms: int | None = None,
) -> dict[str, Path]:
    """Write all four files; returns their paths by kind."""
    return {
        "canary_result": write_canary_result(report, out_dir),
        "metrics": write_metrics(report, out_dir, now_ms=now_ms),
        "audit": write_audit(audit_events, out_dir, audit_source_file),
        "report_html": write_report_html(report, out_dir),
    }
