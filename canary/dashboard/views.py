"""HTML fragments of the dashboard, rendered on the server from :class:`~canary.dashboard.feed.DashboardState`.

The deployment's charts, header, banner, cards and command table are the report's own
(:func:`canary.reports.html.render_sections`): the browser receives the same SVG the static report contains,
so there is one chart renderer. This module only adds what a live view has and a finished report has not:
the moment banner, the latest verdicts with their evidence and streaks, the rollout plan, the routers,
the whole command timeline, the audit feed and the list of past deployments — as view data, drawn by the
shared Jinja2 templates (``canary/render/templates/dashboard/panels.html.j2``).
"""

from __future__ import annotations

from typing import Any

from canary.core.deployment import Deployment
from canary.core.judge import evidence_text
from canary.core.models import iso_ms, parse_time
from canary.core.outages import OutageNote
from canary.core.rollout import plan_status, plan_text
from canary.dashboard.feed import DashboardState, now_ms
from canary.errors import CanaryError
from canary.render import macros
from canary.render.format import clock_ms, fmt_ms
from canary.reports.html import render_sections
from canary.reports.model import build_report

LIVE_ROUTER_MS = 15_000  # as canary status: three missed 5 s heartbeats
PANEL_IDS = (
    "running",
    "deployment",
    "moment",
    "plan",
    "verdicts",
    "charts",
    "commands",
    "routers",
    "timeline",
    "audit",
    "history",
)


def _panels() -> Any:
    return macros("dashboard/panels.html.j2")


def _ago(ms: int, now: int) -> str:
    seconds = max(0, now - ms) / 1000
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def meta(state: DashboardState) -> dict[str, Any]:
    """What the page's script needs besides HTML: which deployment the actions would address."""
    dep = state.shown
    return {
        "deployment_id": dep.deployment_id if dep else None,
        "status": dep.status if dep else "idle",
        "live": bool(dep and dep.live),
        "weight": dep.candidate_weight if dep else 0.0,
        "started_at_ms": dep.started_at_ms if dep else None,
        "ended_at_ms": dep.ended_at_ms if dep else None,
        "caught_up": state.caught_up,
        "control_records": len(state.control),
        "poison_records": state.poison,
    }


def render_panels(state: DashboardState, now: int | None = None) -> dict[str, str]:
    """Every panel, keyed by the id of its element on the page."""
    now = now if now is not None else now_ms()
    panels = deployment_panels(state, now)
    panels.update(
        routers=routers_panel(state, now),
        timeline=timeline_panel(state),
        audit=audit_panel(state),
        history=history_panel(state),
    )
    return panels


def deployment_panels(state: DashboardState, now: int | None = None) -> dict[str, str]:
    """The panels about the shown deployment (re-rendered whenever it or its windows change)."""
    now = now if now is not None else now_ms()
    dep = state.shown
    if dep is None:
        return {
            "running": "",
            "deployment": str(_panels().empty("no canary has been started yet")),
            "moment": "",
            "plan": plan_panel(None),
            "verdicts": str(_panels().no_verdicts("no judged window yet")),
            "charts": "",
            "commands": "",
        }
    try:
        report = build_report(
            commands=state.accepted_commands(),
            command_times=state.accepted_command_times(),
            windows=state.deployment_windows(dep.deployment_id),
            deployment_id=dep.deployment_id,
            now_ms=now,
            source="live",
            outages=state.outages,
        )
    except CanaryError as exc:  # the ledger and the report fold the same commands; this is a bug guard
        return {"deployment": str(_panels().broken(dep.deployment_id, str(exc)))}
    sections = render_sections(report)
    return {
        "running": running_panel(state, dep),
        "deployment": sections["header"] + sections["banner"] + sections["cards"],
        "moment": moment_panel(state, dep),
        "plan": plan_panel(dep),
        "verdicts": verdicts_panel(state, dep),
        "charts": sections["charts"] + sections["outages"],
        "commands": sections["commands"],
    }


def running_panel(state: DashboardState, shown: Deployment) -> str:
    """Every running candidate (A/B/n: several side by side, each on its own users); the panels below are
    about the most recent one, and each row links to its own live report."""
    live = state.ledger.live
    if len(live) <= 1:
        return ""
    rows = []
    for dep in live:
        windows = [w for w in state.deployment_windows(dep.deployment_id) if w.arm == "candidate"]
        latest = max(windows, key=lambda w: w.window_start_ms) if windows else None
        rows.append(
            {
                "dep": dep,
                "shown": dep.deployment_id == shown.deployment_id,
                "outcomes": ", ".join(f"{v.rule} {v.outcome}" for v in latest.verdicts) if latest else "no window yet",
                "p95": fmt_ms(latest.p95_ms) if latest and latest.p95_ms is not None else "–",
                "recall": f"{latest.recall_at_10:.2f}" if latest and latest.recall_at_10 is not None else "–",
            }
        )
    subtitle = f"{len(live)} candidates side by side, each on its own users; below: {shown.deployment_id}"
    return str(_panels().running(rows, subtitle))


def moment_panel(state: DashboardState, dep: Deployment) -> str:
    """The rollback or promotion, big and with its reason, from the moment its command is on the topic."""
    record = state.end_record(dep)
    if record is None or record.verdict.command is None:
        return ""
    cmd = record.verdict.command
    evidence = cmd.evidence or {}
    failing = [w for w in evidence.get("windows") or [] if isinstance(w, dict)]
    shown = None
    if failing:
        metric = str(evidence.get("metric", ""))
        text = ", ".join(_evidence_window(w, metric) for w in failing[:6])
        shown = {"rule": str(evidence.get("rule", "")), "shown": text}
    return str(
        _panels().moment(
            {
                "cmd": cmd,
                "deployment_id": dep.deployment_id,
                "title": {"rollback": "ROLLED BACK", "promote": "PROMOTED", "abort": "ABORTED"}.get(
                    cmd.type, cmd.type.upper()
                ),
                "target": f"all traffic back to {dep.last_good.name}"
                if cmd.type != "promote"
                else f"{dep.candidate.name} is the new last_good",
                "evidence": shown,
                "appended_at_ms": record.appended_at_ms or "",
                "at_ms": record.appended_at_ms or cmd.issued_at_ms,
            }
        )
    )


def _evidence_window(w: dict[str, Any], metric: str) -> str:
    """``05:59:55–06:00:00 1,518 ms (40 responses)`` for one failing window of a rollback's evidence."""
    try:
        when = f"{iso_ms(parse_time(w['window_start']))[11:19]}–{iso_ms(parse_time(w['window_end']))[11:19]}"
    except (KeyError, TypeError, CanaryError):
        when = str(w.get("window_id", "?"))
    value = w.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = fmt_ms(value) if metric.endswith("_ms") else f"{value:.3g}"
    else:
        text = "–"
    count = w.get("response_count")
    return f"{when} {text}" + (f" ({count} responses)" if isinstance(count, int) else "")


def plan_panel(dep: Deployment | None) -> str:
    """The weight in force and, for a candidate with a rollout plan, its steps with the current one marked."""
    status = plan_status(dep.candidate.snapshot, dep.weight, dep.weight_set_at_ms) if dep is not None else None
    return str(_panels().plan(dep, status, plan_text(status) if status is not None else ""))


def verdicts_panel(state: DashboardState, dep: Deployment) -> str:
    judgement = state.judgements.get(dep.deployment_id)
    if judgement is None:
        return str(_panels().no_verdicts("no judged candidate window yet"))
    w = judgement.window
    note = OutageNote.from_context(judgement.context)
    view = {
        "w": w,
        "start": clock_ms(w.window_start_ms),
        "end": clock_ms(w.window_end_ms),
        "low": f" · low-traffic windows {judgement.insufficient_windows}" if judgement.insufficient_windows else "",
        "outage": note.text() if note is not None else None,
        "rows": [
            {
                "v": v,
                "value": "–" if v.value is None else f"{v.value:g}",
                "streak": judgement.streaks.get(v.rule, 0),
                "evidence": evidence_text(v),
            }
            for v in w.verdicts
        ],
        "decision": judgement.decision,
    }
    return str(_panels().verdicts(view))


def routers_panel(state: DashboardState, now: int | None = None) -> str:
    now = now if now is not None else now_ms()
    dep = state.shown
    rows = []
    for s in sorted(state.routers.values(), key=lambda s: s.router_id):
        live = now - s.applied_at_ms <= LIVE_ROUTER_MS
        if not live and now - s.applied_at_ms > 3_600_000:
            continue  # routers gone for an hour are history, not fleet
        in_sync = dep is None or (s.deployment_id == dep.deployment_id and s.status == dep.status)
        if dep is not None and not dep.live and s.deployment_id == dep.deployment_id:
            in_sync = s.status == dep.status
        rows.append(
            {"s": s, "live": live, "ago": _ago(s.applied_at_ms, now), "sync": "in sync" if in_sync else "behind"}
        )
    return str(_panels().routers(rows))


def timeline_panel(state: DashboardState, limit: int = 40) -> str:
    return str(_panels().timeline(list(reversed(state.control[-limit:]))))


def audit_panel(state: DashboardState, limit: int = 30) -> str:
    return str(_panels().audit(list(state.audit)[-limit:][::-1]))


def history_panel(state: DashboardState) -> str:
    deployments = sorted(state.ledger.deployments.values(), key=lambda d: d.started_at_ms, reverse=True)
    return str(_panels().history(deployments[:50]))
