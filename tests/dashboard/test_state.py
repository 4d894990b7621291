"""The dashboard's fold and panels, Kafka-free: the same verification as the routers, the report's charts,
the moment banner, poison records skipped, the audit log followed across torn lines."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from canary.core.models import ControlCommand
from canary.dashboard.feed import AuditTail, Changes, DashboardState, _fold
from canary.dashboard.views import render_panels
from canary.kafka.topics import Topics
from canary.security import ControlSecurity
from canary.settings import load_settings
from tests.reports.dom import parse, select
from tests.reports.sample import build, command

T0 = 1_700_000_000_000


def _state() -> DashboardState:
    return DashboardState(ControlSecurity.operator(load_settings()).verifier())


def _signed(cmd: ControlCommand) -> bytes:
    signer = ControlSecurity.operator(load_settings()).signer()
    assert signer is not None
    return json.dumps(signer.sign_command(cmd)).encode()


def _append(state: DashboardState, value: bytes, offset: int, at_ms: int) -> Changes:
    changes = Changes()
    state.add_control(value, offset, at_ms, changes)
    return changes


def _folded() -> tuple[DashboardState, Any, list[Changes]]:
    sc = build(T0, "canary_dash")
    state = _state()
    log = []
    for offset, cmd in enumerate(sc.commands):
        if cmd.type == "rollback":
            for w in sc.windows:
                changes = Changes()
                state.add_window(w, changes, judged_at_ms=w.emitted_at_ms + 5)
                log.append(changes)
        log.append(_append(state, _signed(cmd), offset, cmd.issued_at_ms + 20))
    return state, sc, log


def test_the_rollback_is_a_moment_with_its_reason_and_append_time() -> None:
    state, sc, log = _folded()
    moments = [m for c in log for m in c.moments]
    assert [m.command_id for m in moments] == [sc.rollback.command_id]
    dom = parse(render_panels(state, now=T0 + 120_000)["moment"])
    (banner,) = select(dom, "div.moment-rollback")
    assert banner.attrs["data-command-id"] == sc.rollback.command_id
    assert banner.attrs["data-appended-at-ms"] == str(sc.rollback.issued_at_ms + 20)
    assert "ROLLED BACK" in banner.all_text() and (sc.rollback.reason or "") in banner.all_text()


def test_panels_carry_the_reports_charts_with_thresholds() -> None:
    state, _, log = _folded()
    panels = render_panels(state, now=T0 + 120_000)
    charts = parse(panels["charts"])
    for cls in ("chart-p95", "chart-recall", "chart-errors"):
        assert len(select(charts, f"svg.{cls} line.threshold")) == 1, cls
    assert select(charts, "svg.verdict-strip rect.verdict-fail")
    assert select(charts, "svg.chart-p95 g.rollback-marker")
    arrivals = [w for c in log for w in c.windows]
    assert len(arrivals) == len(state.deployment_windows("canary_dash")) and any(w.failed for w in arrivals)
    assert "canary_dash" in panels["history"] and "/deployments/canary_dash/report" in panels["history"]
    assert "no rollout plan" in panels["plan"]


def test_forged_and_poison_control_records_are_shown_not_applied() -> None:
    sc = build(T0, "canary_forged")
    state = _state()
    _append(state, _signed(sc.commands[0]), 0, T0 + 20)
    forged = command("promote", "canary_forged", T0 + 1000)
    changes = _append(state, json.dumps(forged.to_dict()).encode(), 1, T0 + 1020)  # unsigned
    _append(state, b"{not json", 2, T0 + 1030)
    assert not changes.moments and state.shown is not None and state.shown.status == "running"
    assert [(r.verdict.reason, r.applied) for r in state.control] == [
        (None, True),
        ("unsigned", False),
        ("not_json", False),
    ]
    timeline = render_panels(state, now=T0 + 2000)["timeline"]
    assert "unsigned" in timeline and "not_json" in timeline


def test_poison_on_the_data_topics_is_counted_and_skipped() -> None:
    state = _state()
    topics = Topics("x.")
    for topic, value in ((topics.windows, b"[1, 2]"), (topics.verdicts, b"{}"), (topics.state, b"nope")):
        _fold(state, topics, topic, SimpleNamespace(value=value, offset=0, timestamp=T0), Changes())
    assert state.poison == 3 and not state.windows and not state.routers


def test_audit_tail_waits_for_a_torn_line_and_survives_truncation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    tail = AuditTail(path)
    assert tail.read_new() == []  # no file yet
    path.write_bytes(b'{"event_id": "a"}\n{"event_id": "b"')
    assert [e["event_id"] for e in tail.read_new()] == ["a"]
    with path.open("ab") as fh:
        fh.write(b'}\nnot json\n{"event_id": "c"}\n')
    assert [e["event_id"] for e in tail.read_new()] == ["b", "c"]
    path.write_bytes(b'{"event_id": "d"}\n')  # replaced by a shorter file
    assert [e["event_id"] for e in tail.read_new()] == ["d"]


def test_two_candidates_side_by_side_are_both_on_the_page() -> None:
    state = _state()
    a, b = (
        build(T0, "canary_a", candidate="candidate_slow"),
        build(T0 + 10, "canary_b", candidate="candidate_high_recall"),
    )
    starts = [next(c for c in sc.commands if c.type == "start") for sc in (a, b)]
    for offset, cmd in enumerate(starts):
        _append(state, _signed(cmd), offset, cmd.issued_at_ms + 20)
    assert [d.deployment_id for d in state.ledger.live] == ["canary_a", "canary_b"]
    for w in a.windows[:2] + b.windows[:2]:
        state.add_window(w, Changes(), judged_at_ms=w.emitted_at_ms + 5)
    panel = render_panels(state, now=T0 + 60_000)["running"]
    doc = parse(panel)
    rows = select(doc, "tr")
    assert len(rows) == 3  # header + one per running candidate
    assert "canary_a" in panel and "canary_b" in panel and "/deployments/canary_a/report" in panel
    assert "2 candidates side by side" in panel
    # One candidate alone: no extra panel.
    alone = _state()
    _append(alone, _signed(starts[0]), 0, starts[0].issued_at_ms + 20)
    assert render_panels(alone, now=T0 + 60_000)["running"] == ""
