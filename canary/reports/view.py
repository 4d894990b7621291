"""The report page's view data: a :class:`DeploymentReport` turned into the texts, classes and charts the
templates (``canary/render/templates/report/``) put on the page. No markup here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canary.core.models import parse_time
from canary.core.outages import OutageNote
from canary.core.rings import split_ring_arm
from canary.errors import CanaryError
from canary.render.charts import Chart
from canary.render.format import clock, duration, fmt_ms, fmt_pct, fmt_recall, fmt_value, rel, utc
from canary.reports.charts import (
    AFTER_END_COLOR,
    ARM_COLORS,
    END_COLORS,
    OPERATORS,
    OUTAGE_COLOR,
    OUTCOME_COLORS,
    attribution,
    metric_chart,
    time_axis,
    traffic_chart,
    verdict_strip,
)
from canary.reports.metrics import summarize
from canary.reports.model import CommandEntry, DeploymentReport, DiffEntry

STATUS_STYLE = {
    "running": ("#dbeafe", "#1d4ed8", "Running"),
    "paused": ("#fef3c7", "#b45309", "Paused"),
    "rolled_back": ("#fee2e2", "#b91c1c", "Rolled back"),
    "promoted": ("#dcfce7", "#15803d", "Promoted"),
    "aborted": ("#e5e7eb", "#374151", "Aborted"),
}


@dataclass(frozen=True, slots=True)
class Swatch:
    """A legend entry's sample: a line (``box`` False) or a box in ``color``, or a plain ``glyph``."""

    label: str
    color: str = ""
    box: bool = False
    dashed: bool = False  # the threshold's dashed red line
    marker: bool = False  # the end marker's short vertical bar
    faded: bool = False  # a see-through box (like the outage bands)
    hollow: bool = False  # a white box with a dashed border in ``color``
    glyph: str = ""


@dataclass(frozen=True, slots=True)
class ChartPanel:
    title: str
    subtitle: str
    legend: list[Swatch]
    chart: Chart
    cls: str
    axis_note: str | None


def header(report: DeploymentReport) -> dict[str, Any]:
    dep = report.deployment
    bg, fg, label = STATUS_STYLE.get(dep.status, ("#e5e7eb", "#374151", dep.status))
    end = dep.ended_at_ms
    span = (end if end is not None else report.generated_at_ms) - dep.started_at_ms
    timing = f"started {utc(dep.started_at_ms)}" + (
        f" · ended {utc(end)} · lasted {duration(span)}" if end is not None else f" · running for {duration(span)}"
    )
    start = next((c for c in report.commands if c.type == "start" and c.applied), None)
    description = str(dep.candidate.snapshot.get("metadata", {}).get("description") or "")
    return {
        "dep": dep,
        "status": {"bg": bg, "fg": fg, "label": label},
        "timing": timing,
        "started_by": start.issued_by if start else "?",
        "description": description,
        "description_short": description if len(description) <= 220 else description[:217] + "…",
    }


def banner(report: DeploymentReport) -> dict[str, Any]:
    dep = report.deployment
    end = report.end_command
    if dep.status == "rolled_back":
        colors, title = ("#fef2f2", "#fecaca", "#991b1b"), "Rolled back to last_good."
    elif dep.status == "promoted":
        colors, title = ("#f0fdf4", "#bbf7d0", "#166534"), f"Promoted: {dep.candidate.name} is the new last_good."
    elif dep.status == "aborted":
        colors, title = ("#f8fafc", "#e2e8f0", "#334155"), "Aborted."
    elif dep.status == "paused":
        colors, title = ("#fffbeb", "#fde68a", "#92400e"), "Paused: the candidate receives no traffic."
    elif dep.shadow_share:
        colors = ("#eff6ff", "#bfdbfe", "#1e40af")
        title = (
            f"Shadow: no user is served by {dep.candidate.name}; {fmt_pct(dep.shadow_share)} of last_good's "
            "requests are mirrored to it and judged."
        )
    else:
        colors = ("#eff6ff", "#bfdbfe", "#1e40af")
        title = f"Running: {fmt_pct(dep.weight)} of traffic goes to {dep.candidate.name}."
    by = f"— {attribution(end)}, {utc(end.issued_at_ms)}" if end is not None else None
    return {"status": dep.status, "colors": colors, "title": title, "reason": dep.reason, "by": by}


def cards(report: DeploymentReport) -> list[dict[str, str]]:
    cand, lg = summarize(report.candidate_windows), summarize(report.last_good_windows)

    def judged(metric: str) -> str:
        """Red if any candidate bucket failed the metric's rule, green if some passed and none failed."""
        outcomes = {v.outcome for w in report.candidate_windows for v in w.verdicts if v.metric == metric}
        return "bad" if "fail" in outcomes else "good" if "pass" in outcomes else ""

    total = cand["total_requests"] + lg["total_requests"]
    judged_buckets, failed_buckets = len(report.judged_windows), len(report.failed_windows)
    late = sum(1 for w in report.candidate_windows if report.after_end(w))
    judged_note = f"judged until {report.end_verb}" if report.end_ms is not None else "judged so far"
    failed_note = f"{judged_note} · {cand['total_slo_violations']:,} requests broke the SLO"
    if late:
        failed_note += f" · {late} in-flight bucket(s) after {report.end_verb.removeprefix('the ')} not counted"

    def kpi(label: str, value: str, compare: str = "", cls: str = "") -> dict[str, str]:
        return {"label": label, "value": value, "compare": compare, "cls": cls}

    diff = cand["result_diff"]
    diff_cards = []
    if diff is not None:  # how much the candidate changed the answers, against last_good's for the same query
        changed = diff.get("top1_changed")
        diff_cards.append(
            kpi(
                "Candidate vs last_good top 10",
                f"RBO {fmt_value(diff.get('rbo_at_10'))}",
                f"Jaccard {fmt_value(diff.get('jaccard_at_10'))} · first result changed "
                f"{fmt_pct(changed) if changed is not None else '–'} · {diff['samples']:,} queries compared",
                judged("rbo_at_10") or judged("jaccard_at_10") or judged("top1_changed"),
            )
        )
    ring_cards = []
    for (arm, ring), windows in _ring_series(report).items():
        stats = summarize(windows)
        target = report.candidate_name if arm == "candidate" else report.last_good_name
        ring_cards.append(
            kpi(
                f"Ring {ring} → {arm}",
                f"{stats['total_requests']:,} requests",
                f"{target} · avg p95 {fmt_ms(stats['avg_p95_ms'])} · recall@10 {fmt_recall(stats['avg_recall_at_10'])}"
                f" · not judged (random candidate traffic: avg p95 {fmt_ms(cand['avg_p95_ms'])}, "
                f"{cand['total_requests']:,} requests)",
            )
        )
    return [
        kpi(
            "Candidate avg p95",
            fmt_ms(cand["avg_p95_ms"]),
            f"worst {fmt_ms(cand['max_p95_ms'])} · last_good {fmt_ms(lg['avg_p95_ms'])}".replace(" ms ·", " ·"),
            judged("p95_ms"),
        ),
        kpi(
            "Candidate recall@10",
            fmt_recall(cand["avg_recall_at_10"]),
            f"last_good {fmt_recall(lg['avg_recall_at_10'])}",
            judged("recall_at_10"),
        ),
        kpi(
            "Requests",
            f"{total:,}",
            f"candidate {cand['total_requests']:,} ({fmt_pct(cand['total_requests'] / total) if total else '–'})",
        ),
        kpi(
            "Failed candidate buckets",
            f"{failed_buckets} / {judged_buckets}",
            failed_note,
            "bad" if failed_buckets else "good" if judged_buckets else "",
        ),
        kpi(
            "Traffic split",
            f"{fmt_pct(1 - report.deployment.weight)} / {fmt_pct(report.deployment.weight)}",
            "last_good / candidate",
        ),
        *diff_cards,
        *ring_cards,
    ]


def _ring_series(report: DeploymentReport) -> dict[tuple[str, str], list[Any]]:
    """The report's ring windows by (arm, ring), in the order rings first appear."""
    series: dict[tuple[str, str], list[Any]] = {}
    for w in report.ring_windows:
        arm, ring = split_ring_arm(w.arm)
        if ring is not None:
            series.setdefault((arm, ring), []).append(w)
    return series


def chart_panels(report: DeploymentReport) -> list[ChartPanel]:
    axis = time_axis(report)
    arms = [
        Swatch(report.last_good_name, ARM_COLORS["last_good"]),
        Swatch(report.candidate_name, ARM_COLORS["candidate"]),
    ]
    threshold = [Swatch("SLO threshold", dashed=True)]
    end_cmd = report.end_command
    marker: list[Swatch] = []
    if end_cmd is not None and end_cmd.type in END_COLORS:
        marker = [Swatch(end_cmd.type, END_COLORS[end_cmd.type], marker=True)]
    note = f"time since {utc(axis.start_ms)} (m:ss)"
    if report.outages:
        marker = [*marker, Swatch("broker outage", OUTAGE_COLOR, box=True, faded=True)]
    p95 = metric_chart(
        report,
        axis,
        cls="chart-p95",
        metric="p95_ms",
        value=lambda w: w.p95_ms if w.response_count else None,
        fmt=lambda v: f"{v:,.0f} ms",
        tick_fmt=lambda v: f"{v:,.0f}",
        default_hi=100.0,
    )
    recall = metric_chart(
        report,
        axis,
        cls="chart-recall",
        metric="recall_at_10",
        value=lambda w: w.recall_at_10,
        fmt=lambda v: f"{v:.2f}",
        tick_fmt=lambda v: f"{v:.1f}",
        default_hi=1.0,
        fixed_hi=1.0,
    )
    errors = metric_chart(
        report,
        axis,
        cls="chart-errors",
        metric="error_rate",
        value=lambda w: w.error_count / w.response_count if w.response_count else None,
        fmt=fmt_pct,
        tick_fmt=fmt_pct,
        default_hi=0.02,
    )
    outcome_legend = [Swatch(o, c, box=True) for o, c in OUTCOME_COLORS.items()]
    bucket_s = report.all_windows[0].duration_sec if report.all_windows else 5
    late = any(report.after_end(w) for w in report.candidate_windows)
    if late:
        swatch = Swatch(f"after {report.end_verb.removeprefix('the ')}: in flight", AFTER_END_COLOR, hollow=True)
        marker = [*marker, swatch]
    until = f" until {report.end_verb}" if late else ""
    in_flight = (
        f" · dashed grey dots: requests in flight at {report.end_verb}, finishing after it (not judged)" if late else ""
    )

    def shaded(metric: str) -> str:
        """Only a chart that shows the evidence of the end (the rollback's failing buckets) says so."""
        end = report.end_command
        ev = end.evidence if end is not None else None
        if not ev or ev.get("metric") != metric or not ev.get("windows"):
            return ""
        return f" · shaded: the buckets the {end.type if end is not None else 'end'} rests on"

    return [
        ChartPanel(
            "p95 latency",
            f"ms per {bucket_s} s bucket · ringed dots failed the rule{shaded('p95_ms')}{in_flight}",
            [*arms, *threshold, *marker],
            p95,
            "panel-p95",
            note,
        ),
        ChartPanel(
            "recall@10",
            "mean over requests with a recall (labels, or a sampled exact search) per bucket" + shaded("recall_at_10"),
            [*arms, *threshold, *marker],
            recall,
            "panel-recall",
            note,
        ),
        ChartPanel(
            "Error rate",
            "errored responses per bucket (timeouts and backend errors)" + shaded("error_rate"),
            [*arms, *threshold, *marker],
            errors,
            "panel-errors",
            note,
        ),
        ChartPanel(
            "Candidate traffic share",
            "line: configured share (start, weight changes, pause/resume, end) · dots: observed share per bucket"
            + until,
            [Swatch("configured", ARM_COLORS["candidate"]), Swatch("observed", glyph="○"), *marker],
            traffic_chart(report, axis),
            "panel-traffic",
            note,
        ),
        ChartPanel(
            "SLO verdicts",
            "candidate buckets judged per rule · inconclusive: not significant yet, or no data (a window with "
            "candidate requests resets the rule's streak)"
            + (f" · faded: after {report.end_verb} (in-flight requests, not counted)" if late else ""),
            outcome_legend,
            verdict_strip(report, axis),
            "panel-verdicts",
            None,
        ),
    ]


def evidence(c: CommandEntry) -> dict[str, Any] | None:
    """A command's evidence as lines: the rule it rests on and each cited bucket (the issuer's: any shape)."""
    ev = c.evidence or {}
    if not ev:
        return None
    head = None
    if "rule" in ev:
        op = OPERATORS.get(str(ev.get("operator")), str(ev.get("operator", "")))
        head = {
            "rule": str(ev.get("rule")),
            "text": f"{ev.get('metric', '')} {op} {fmt_value(ev.get('threshold'))}, "
            f"{fmt_value(ev.get('consecutive_buckets'))} consecutive failing buckets:",
        }
    windows = ev.get("windows") or []
    items: list[dict[str, str]] = []
    for w in windows[:12] if isinstance(windows, list) else []:
        if isinstance(w, str):  # a rollout step cites the windows it counted by id
            items.append({"counted": w})
            continue
        if not isinstance(w, dict):
            continue
        try:
            when = clock(parse_time(w["window_start"])) + "–" + clock(parse_time(w["window_end"]))
        except (KeyError, TypeError, CanaryError):
            when = str(w.get("window_id", "?"))
        value = w.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = fmt_ms(value) if ev.get("metric") == "p95_ms" else f"{value:.3g}"
        else:
            shown = fmt_value(value)
        items.append({"when": when, "value": shown, "responses": fmt_value(w.get("response_count"))})
    note = OutageNote.from_context(ev.get("context"))
    return {"head": head, "items": items, "outage": note.text() if note is not None else None}


def commands(report: DeploymentReport) -> list[dict[str, Any]]:
    start = report.deployment.started_at_ms
    return [
        {
            "c": c,
            "rel": rel((c.issued_at_ms - start) / 1000) if c.issued_at_ms >= start else "–",
            "clock": clock(c.issued_at_ms),
            "weight": fmt_pct(c.weight) if c.weight is not None else "",
            "evidence": evidence(c),
        }
        for c in report.commands
    ]


def delta(d: DiffEntry) -> str | None:
    a, b = d.last_good, d.candidate
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        text = f"{b - a:+g}"
        if a:
            text += f" ({(b / a - 1) * 100:+.0f}%)"
        return text
    return None


def diff(report: DeploymentReport) -> list[dict[str, Any]]:
    return [
        {"d": d, "old": fmt_value(d.last_good), "new": fmt_value(d.candidate), "delta": delta(d)}
        for d in report.diff
        if d.key not in ("metadata.description",)
    ]


def outages(report: DeploymentReport) -> list[dict[str, Any]]:
    """Each broker outage with both arms' measured values in every bucket it (or its drain) touched."""
    out = []
    for o in report.outages:
        ended = f"to {utc(o.end_ms)} ({o.duration_s:g} s)" if o.end_ms is not None else "(still unreachable)"
        drain = f"; backlog drain assumed until {utc(o.drain_until_ms)}" if o.drain_until_ms is not None else ""
        out.append({"o": o, "ended": ended, "drain": drain, "slots": report.outage_slots(o)})
    return out
