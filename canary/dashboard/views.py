"""HTML fragments of the dashboard, rendered on the server from :class:`~canary.dashboard.feed.DashboardState`.

The deployment's charts, header, banner, cards and command table are the report's own
(:func:`canary.reports.html.render_sections`): the browser receives the same SVG the static report contains,
so there is one chart renderer. This module only adds what a live view has and a finished report has not:
the moment banner, the latest verdicts with their evidence and streaks, the rollout plan, the routers,
the whole command timeline, the audit feed and the list of past deployments.
"""

from __future__ import annotations

from html import escape
from typing import Any

from canary.core.deployment import Deployment
from canary.core.judge import evidence_text
from canary.core.models import RouterState, iso_ms, parse_time
from canary.core.outages import OutageNote
from canary.core.rollout import plan_status, plan_text
from canary.dashboard.feed import ControlRecord, DashboardState, now_ms
from canary.errors import CanaryError
from canary.reports.html import fmt_ms, fmt_pct, render_sections
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


def _utc(ms: int | None) -> str:
    return "–" if ms is None else iso_ms(ms).replace("T", " ").replace(".000Z", "Z")


def _clock(ms: int | None) -> str:
    return "–" if ms is None else iso_ms(ms)[11:23]


def _ago(ms: int, now: int) -> str:
    seconds = max(0, now - ms) / 1000
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _card(title: str, body: str, cls: str, subtitle: str = "") -> str:
    sub = f'<p class="sub">{escape(subtitle)}</p>' if subtitle else ""
    return f'<section class="card panel {cls}"><h2>{escape(title)}</h2>{sub}{body}</section>'


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
        empty = '<section class="card panel"><p class="empty">no canary has been started yet</p></section>'
        return {
            "running": "",
            "deployment": empty,
            "moment": "",
            "plan": plan_panel(None),
            "verdicts": _card("Latest verdicts", '<p class="empty">no judged window yet</p>', "panel-verdicts"),
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
        broken = f'<section class="card panel"><p class="bad">cannot render {escape(dep.deployment_id)}: '
        return {"deployment": broken + f"{escape(str(exc))}</p></section>"}
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
        outcomes = ", ".join(f"{v.rule} {v.outcome}" for v in latest.verdicts) if latest else "no window yet"
        p95 = fmt_ms(latest.p95_ms) if latest and latest.p95_ms is not None else "–"
        recall = f"{latest.recall_at_10:.2f}" if latest and latest.recall_at_10 is not None else "–"
        mark = ' class="shown"' if dep.deployment_id == shown.deployment_id else ""
        rows.append(
            f'<tr{mark}><td class="mono"><a href="/deployments/{escape(dep.deployment_id)}/report">'
            f"{escape(dep.deployment_id)}</a></td><td>{escape(dep.candidate.name)}</td>"
            f"<td>{escape(dep.status)}</td><td>{escape(fmt_pct(dep.candidate_weight))}</td>"
            f"<td>{escape(p95)}</td><td>{escape(recall)}</td><td>{escape(outcomes)}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>deployment</th><th>candidate</th><th>status</th><th>share</th>"
        "<th>p95</th><th>recall@10</th><th>latest verdicts</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    subtitle = f"{len(live)} candidates side by side, each on its own users; below: {shown.deployment_id}"
    return _card("Running canaries", table, "panel-running", subtitle)


def moment_panel(state: DashboardState, dep: Deployment) -> str:
    """The rollback or promotion, big and with its reason, from the moment its command is on the topic."""
    record = state.end_record(dep)
    if record is None or record.verdict.command is None:
        return ""
    cmd = record.verdict.command
    title = {"rollback": "ROLLED BACK", "promote": "PROMOTED", "abort": "ABORTED"}.get(cmd.type, cmd.type.upper())
    target = (
        f"all traffic back to {dep.last_good.name}"
        if cmd.type != "promote"
        else f"{dep.candidate.name} is the new last_good"
    )
    evidence = cmd.evidence or {}
    failing = [w for w in evidence.get("windows") or [] if isinstance(w, dict)]
    detail = ""
    if failing:
        metric = str(evidence.get("metric", ""))
        shown = ", ".join(_evidence_window(w, metric) for w in failing[:6])
        detail = (
            f'<div class="moment-evidence">evidence: {escape(str(evidence.get("rule", "")))} — {escape(shown)}</div>'
        )
    return (
        f'<div class="moment moment-{escape(cmd.type)}" role="alert" data-command-id="{escape(cmd.command_id)}" '
        f'data-type="{escape(cmd.type)}" data-deployment-id="{escape(dep.deployment_id)}" '
        f'data-appended-at-ms="{record.appended_at_ms or ""}" data-issued-at-ms="{cmd.issued_at_ms}">'
        f"<b>{escape(title)}</b> {escape(dep.deployment_id)}: {escape(target)}"
        f'<div class="moment-reason">{escape(cmd.reason or "no reason given")}</div>{detail}'
        f'<div class="moment-by">by {escape(cmd.issued_by)} at {_utc(record.appended_at_ms or cmd.issued_at_ms)}</div>'
        "</div>"
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
    if dep is None:
        body = '<p class="empty">no deployment</p>'
    else:
        body = (
            f'<div class="plan-weight"><span class="label">current candidate weight</span> '
            f'<b class="weight-value">{escape(fmt_pct(dep.candidate_weight))}</b>'
            f' <span class="sub">(configured {escape(fmt_pct(dep.weight))}, {escape(dep.status)})</span></div>'
        )
        status = plan_status(dep.candidate.snapshot, dep.weight, dep.weight_set_at_ms)
        if status is None:
            body += '<p class="plan-none empty">no rollout plan: this deployment runs at one fixed weight</p>'
        else:
            steps = "".join(
                f'<li class="plan-step{" current" if i + 1 == status["current_step"] else ""}">'
                f"{escape(fmt_pct(step['weight']))} · {step['min_windows']} windows"
                + (f" · ≥ {step['min_duration_s']:g} s" if step["min_duration_s"] else "")
                + (" · manual gate" if step["gate"] == "manual" else "")
                + "</li>"
                for i, step in enumerate(status["steps"])
            )
            body += f'<p class="plan-text">{escape(plan_text(status))}</p><ol class="plan-steps">{steps}</ol>'
    return _card("Rollout plan", body, "panel-plan")


def verdicts_panel(state: DashboardState, dep: Deployment) -> str:
    judgement = state.judgements.get(dep.deployment_id)
    if judgement is None:
        return _card("Latest verdicts", '<p class="empty">no judged candidate window yet</p>', "panel-verdicts")
    w = judgement.window
    rows = []
    for v in w.verdicts:
        value = "–" if v.value is None else f"{v.value:g}"
        streak = judgement.streaks.get(v.rule, 0)
        rows.append(
            f'<li class="verdict-item v-row-{escape(v.outcome)}"><div class="verdict-line">'
            f'<span class="mono">{escape(v.rule)}</span> <span class="v-{escape(v.outcome)}">{escape(v.outcome)}</span>'
            f' <span class="sub">value {escape(value)} · streak <b class="streak">{streak}</b></span></div>'
            f'<div class="evidence-text">{escape(evidence_text(v))}</div>'
            f'<div class="sub">{escape(v.reason or "")}</div></li>'
        )
    decision = ""
    if judgement.decision is not None:
        decision = (
            f'<p class="decision"><b>{escape(judgement.decision.type.upper())}</b>: '
            f"{escape(judgement.decision.reason)}</p>"
        )
    low = f" · low-traffic windows {judgement.insufficient_windows}" if judgement.insufficient_windows else ""
    note = OutageNote.from_context(judgement.context)
    outage = f'<p class="outage-note">Judged {escape(note.text())}</p>' if note is not None else ""
    body = (
        f'<p class="sub">bucket {_clock(w.window_start_ms)}–{_clock(w.window_end_ms)} UTC · n={w.response_count}'
        f" · errors {w.error_count}{low}</p>{outage}"
        f'<ul class="verdicts">{"".join(rows)}</ul>{decision}'
    )
    return _card("Latest verdicts", body, "panel-verdicts")


def _intake(s: RouterState) -> str:
    """Which request partitions a router holds, and whether it takes the requests waiting there."""
    if s.requests_stalled:
        return f'<br><span class="v-fail">NOT taking requests: {escape(s.requests_stalled)}</span>'
    if s.request_partitions is not None:
        return f", partitions {escape(','.join(map(str, s.request_partitions)) or 'none')}"
    return ""


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
        sync = "in sync" if in_sync else "behind"
        rows.append(
            f'<tr class="router {"live" if live else "gone"}" data-router-id="{escape(s.router_id)}">'
            f'<td class="mono">{escape(s.router_id)}<div class="sub">{"live" if live else "silent"}, '
            f"{escape(_ago(s.applied_at_ms, now))}{_intake(s) if live else ''}</div></td>"
            f'<td>{escape(s.status)}<div class="sub">'
            f'{escape(fmt_pct(s.weight))}</div></td><td class="{sync.replace(" ", "-")}">{sync}</td></tr>'
        )
    body = (
        '<table class="routers"><thead><tr><th>router · last state</th><th>applied · weight</th>'
        f"<th>vs ledger</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">no router has published its state</p>'
    )
    return _card("Routers", body, "panel-routers", "lag = age of the router's last state (heartbeats every 5 s)")


def _timeline_row(r: ControlRecord) -> str:
    cmd = r.verdict.command
    kind = cmd.type if cmd else "invalid"
    if not r.verdict.accepted:
        outcome = f'<span class="v-fail">{escape(r.verdict.reason or "rejected")}</span>'
    elif r.applied:
        outcome = '<span class="v-pass">applied</span>'
    else:
        outcome = f'<span class="v-inconclusive">refused: {escape(r.note)}</span>'
    return (
        f'<tr class="command command-{escape(kind)}" data-offset="{r.offset}">'
        f'<td class="mono">{_clock(r.appended_at_ms)}</td>'
        f'<td><span class="pill {escape(kind)}">{escape(kind)}</span></td>'
        f'<td class="mono">{escape(cmd.deployment_id if cmd else "–")}</td>'
        f'<td class="mono">{escape(cmd.issued_by if cmd else "–")}</td><td>{outcome}</td>'
        f"<td>{escape((cmd.reason or '') if cmd else '')}</td></tr>"
    )


def timeline_panel(state: DashboardState, limit: int = 40) -> str:
    rows = "".join(_timeline_row(r) for r in reversed(state.control[-limit:]))
    body = (
        '<table class="timeline"><thead><tr><th>appended (UTC)</th><th>command</th><th>deployment</th><th>by</th>'
        f"<th>verification / ledger</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="empty">the control topic is empty</p>'
    )
    return _card(
        "Command timeline", body, "panel-timeline", "every control record, newest first, as the routers judged it"
    )


def audit_panel(state: DashboardState, limit: int = 30) -> str:
    rows = []
    for e in list(state.audit)[-limit:][::-1]:
        ok = e.get("success")
        rows.append(
            f'<tr class="audit {"ok" if ok else "failed"}">'
            f'<td class="mono">{escape(str(e.get("timestamp", ""))[11:23])}</td>'
            f'<td class="mono">{escape(str(e.get("event_type", "")))}</td>'
            f'<td class="mono">{escape(str(e.get("user_id", "")))}</td>'
            f"<td>{'ok' if ok else escape(str(e.get('error_message') or 'failed'))}</td></tr>"
        )
    body = (
        '<table class="audit"><thead><tr><th>time</th><th>event</th><th>who</th><th>result</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">no audit events yet (the worker writes them)</p>'
    )
    return _card("Audit feed", body, "panel-audit", "the worker's audit log, newest first")


def history_panel(state: DashboardState) -> str:
    deployments = sorted(state.ledger.deployments.values(), key=lambda d: d.started_at_ms, reverse=True)
    rows = []
    for d in deployments[:50]:
        rows.append(
            f'<tr class="past-deployment status-{escape(d.status)}"><td class="mono">'
            f'<a href="/deployments/{escape(d.deployment_id)}/report" target="_blank">{escape(d.deployment_id)}</a>'
            f"</td><td>{escape(d.candidate.name)}</td><td>{escape(d.status)}</td>"
            f'<td class="mono">{_utc(d.started_at_ms)}</td>'
            f"<td>{escape(d.reason or '')}</td></tr>"
        )
    body = (
        '<table class="history"><thead><tr><th>deployment (report)</th><th>candidate</th><th>status</th>'
        f"<th>started</th><th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">no deployments yet</p>'
    )
    return _card("Deployments", body, "panel-history", "each links to its full report, rendered now from the topics")
