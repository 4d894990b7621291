"""The report's chart geometry: a deployment's buckets, rules and commands as :class:`~canary.render.charts.Chart`
data (drawn by the chart kit's template). Every chart shares one time axis (same width and margins), so a
bucket, the verdict strip cell below it and the end marker line up vertically.

Stable hooks for tests and tooling (see :mod:`canary.reports.html`): ``path.series-<arm>`` with
``data-points``, ``circle.point``, ``line.threshold`` (``data-value``), ``rect.violation-zone``,
``rect.evidence-band``, ``g.end-marker``, ``rect.verdict``, ``rect.outage-band`` / ``rect.drain-band``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from canary.core.judge import evidence_text
from canary.core.models import WindowResult, parse_time
from canary.errors import CanaryError
from canary.pipeline.decisions import SLO_AGENT
from canary.render.charts import (
    Chart,
    Dot,
    Group,
    Label,
    Line,
    Path,
    Rect,
    Shape,
    Tick,
    TimeAxis,
    YAxis,
    nice_step,
    polyline,
    x_grid,
    y_grid,
)
from canary.render.format import clock, fmt_pct, utc
from canary.reports.model import CommandEntry, DeploymentReport

# -- palette -----------------------------------------------------------------------------------------------
ARM_COLORS = {"last_good": "#2563eb", "candidate": "#ea580c"}
ARM_LABELS = {"last_good": "last_good", "candidate": "candidate"}
OUTCOME_COLORS = {
    "pass": "#22c55e",
    "fail": "#ef4444",
    "inconclusive": "#cbd5e1",
    "error": "#a855f7",
    "shared": "#f59e0b",  # a shock both arms share: not the candidate's fault, not healthy either
}
THRESHOLD_COLOR = "#dc2626"
AFTER_END_COLOR = "#94a3b8"  # buckets after the deployment ended: in-flight requests, not part of the decision
OUTAGE_COLOR = "#475569"
END_MARKER = {"rollback": "rollback-marker", "promote": "promote-marker", "abort": "abort-marker"}
END_COLORS = {"rollback": "#b91c1c", "promote": "#15803d", "abort": "#374151"}
OPERATORS = {"le": "≤", "lt": "<", "ge": "≥", "gt": ">"}

# -- geometry: all charts share the x axis -----------------------------------------------------------------
WIDTH = 1000
LEFT, RIGHT = 86, 24


def time_axis(report: DeploymentReport) -> TimeAxis:
    start, end = report.span_ms()
    return TimeAxis(start, end, LEFT, WIDTH - RIGHT)


def attribution(c: CommandEntry) -> str:
    """Who decided: the SLO agent's own decisions (a rollback, a rollout plan's steps and promotion) read
    as automatic; anyone else's command as theirs."""
    return f"automatic, by {c.issued_by}" if c.issued_by == SLO_AGENT else f"by {c.issued_by}"


def _mid(w: WindowResult) -> float:
    return (w.window_start_ms + w.window_end_ms) / 2


def _y_grid(y: YAxis, fmt: Callable[[float], str]) -> Group:
    return y_grid([Tick(y.y(v), fmt(v)) for v in y.ticks()], LEFT, WIDTH - RIGHT)


def _series(
    arm: str,
    windows: Sequence[WindowResult],
    value: Callable[[WindowResult], float | None],
    axis: TimeAxis,
    y: YAxis,
    describe: Callable[[WindowResult, float], str],
    failed: Callable[[WindowResult], bool],
    late: Callable[[WindowResult], str | None],
) -> list[Shape]:
    """A line through every bucket with a value (a gap where a bucket has none) and a dot per bucket. A bucket
    ``late`` explains (the candidate's requests in flight at the deployment's end) is a hollow grey dot
    off the line, with that explanation: it is no part of the decision."""
    color = ARM_COLORS[arm]
    vertices: list[tuple[float, float] | None] = []
    dots: list[Shape] = []
    for w in windows:
        v = value(w)
        if v is None:
            vertices.append(None)
            continue
        why_late = late(w)
        x, yy = axis.x(_mid(w)), y.y(v)
        if why_late is not None:
            dots.append(
                Dot(
                    x,
                    yy,
                    3.4,
                    cls="point point-after-end",
                    fill="#fff",
                    stroke=AFTER_END_COLOR,
                    width=1.6,
                    dash="2 1.5",
                    title=f"{describe(w, v)} · {why_late}",
                    data=(("arm", arm),),
                )
            )
            vertices.append(None)
            continue
        vertices.append((x, yy))
        bad = failed(w)
        dots.append(
            Dot(
                x,
                yy,
                4.5 if bad else 3.2,
                cls=f"point point-{arm}" + (" point-fail" if bad else ""),
                fill="#fff" if bad else color,
                stroke=THRESHOLD_COLOR if bad else color,
                width=2.2 if bad else 1,
                title=describe(w, v),
            )
        )
    d, count = polyline(vertices)
    if not count:
        return [Group(dots, cls=f"series-group series-group-{arm}")] if dots else []
    line = Path(
        d,
        cls=f"series series-{arm}",
        stroke=color,
        width=2.4 if arm == "candidate" else 1.8,
        round_joins=True,
        round_caps=True,
        data=(("arm", arm), ("points", str(count))),
    )
    return [Group([line, *dots], cls=f"series-group series-group-{arm}")]


def _threshold(y: YAxis, value: float, label: str, zone_above: bool) -> list[Shape]:
    yy = y.y(value)
    zone_y, zone_h = (y.top, yy - y.top) if zone_above else (yy, y.bottom - yy)
    return [
        Rect(
            LEFT,
            zone_y,
            WIDTH - LEFT - RIGHT,
            max(0.0, zone_h),
            cls="violation-zone",
            fill=THRESHOLD_COLOR,
            opacity=0.06,
        ),
        Line(
            LEFT,
            yy,
            WIDTH - RIGHT,
            yy,
            cls="threshold",
            stroke=THRESHOLD_COLOR,
            width=1.6,
            dash="7 5",
            data=(("value", f"{value:g}"),),
        ),
        Label(
            LEFT + 6,
            yy - 6 if zone_above else yy + 15,
            label,
            cls="threshold-label",
            anchor="start",
            fill=THRESHOLD_COLOR,
        ),
    ]


def _end_marker(report: DeploymentReport, axis: TimeAxis, top: float, bottom: float, with_label: bool) -> list[Shape]:
    end = report.end_command
    if end is None or end.type not in END_MARKER:
        return []
    x = axis.x(end.issued_at_ms)
    color = END_COLORS[end.type]
    verb = {"rollback": "rolled back", "promote": "promoted", "abort": "aborted"}[end.type]
    title = f"{verb} at {utc(end.issued_at_ms)}, {attribution(end)}" + (f": {end.reason}" if end.reason else "")
    items: list[Shape] = [
        Line(x, top - 4, x, bottom, stroke=color, width=2),
        Path(f"M{x - 6:.1f},{top - 10:.1f} L{x + 6:.1f},{top - 10:.1f} L{x:.1f},{top - 2:.1f} Z", fill=color),
    ]
    if with_label:
        how = "automatically" if end.issued_by == SLO_AGENT else f"by {end.issued_by}"
        text = f"{verb} {how}" + (f" — {end.reason}" if end.reason else "")
        if len(text) > 90:
            text = text[:87] + "…"
        width = 7.0 * len(text) + 16
        bx = x + 8 if x + width + 8 < WIDTH - RIGHT else x - 8 - width
        items += [
            Rect(bx, top + 2, width, 22, cls="marker-label-bg", rx=4, fill=color),
            Label(bx + 8, top + 17, text, cls="marker-label", fill="#fff"),
        ]
    data = (("at-ms", str(end.issued_at_ms)),)
    return [Group(items, cls=f"end-marker {END_MARKER[end.type]}", title=title, data=data)]


def _evidence_bands(report: DeploymentReport, metric: str, axis: TimeAxis, y: YAxis) -> list[Shape]:
    end = report.end_command
    ev = end.evidence if end is not None else None
    if not ev or ev.get("metric") != metric:
        return []
    out: list[Shape] = []
    for item in ev.get("windows") or []:
        try:
            s, e = parse_time(item["window_start"]), parse_time(item["window_end"])
        except (KeyError, TypeError, CanaryError):
            continue
        out.append(
            Rect(
                axis.x(s),
                y.top,
                axis.x(e) - axis.x(s),
                y.bottom - y.top,
                cls="evidence-band",
                fill=THRESHOLD_COLOR,
                opacity=0.10,
                title=f"evidence window {item.get('window_id', '')}",
            )
        )
    return out


def _outage_bands(report: DeploymentReport, axis: TimeAxis, y: YAxis) -> list[Shape]:
    """Grey bands where the worker could not reach the broker, lighter ones over the assumed drain."""
    out: list[Shape] = []
    for o in report.outages:
        end = o.end_ms if o.end_ms is not None else axis.end_ms
        spans = [("outage-band", o.start_ms, end, 0.16, "broker unreachable")]
        if o.end_ms is not None and o.drain_until_ms is not None:
            spans.append(("drain-band", o.end_ms, o.drain_until_ms, 0.07, "backlog drain after the outage (assumed)"))
        for cls, s, e, opacity, what in spans:
            x0, x1 = max(axis.x(s), LEFT), min(axis.x(e), WIDTH - RIGHT)
            if x1 <= x0:
                continue
            out.append(
                Rect(
                    x0,
                    y.top,
                    x1 - x0,
                    y.bottom - y.top,
                    cls=cls,
                    fill=OUTAGE_COLOR,
                    opacity=opacity,
                    title=f"{what}: {utc(s)} – {utc(e)}",
                    data=(("start-ms", str(s)), ("end-ms", str(e))),
                )
            )
    return out


def _no_data(mid_y: float, text: str) -> Label:
    return Label((LEFT + WIDTH - RIGHT) / 2, mid_y, text, cls="no-data", anchor="middle")


def _verdict_failed(metric: str) -> Callable[[WindowResult], bool]:
    return lambda w: any(v.metric == metric and v.outcome == "fail" for v in w.verdicts)


def late_text(report: DeploymentReport, w: WindowResult) -> str | None:
    """Why a candidate bucket after the end is shown apart, or None for one before it."""
    if not report.after_end(w):
        return None
    return (
        f"after {report.end_verb}: {w.response_count} request(s) sent before it that finished after it "
        "(in flight); not one of the judged buckets"
    )


def metric_chart(
    report: DeploymentReport,
    axis: TimeAxis,
    *,
    cls: str,
    metric: str,
    value: Callable[[WindowResult], float | None],
    fmt: Callable[[float], str],
    tick_fmt: Callable[[float], str],
    default_hi: float,
    fixed_hi: float | None = None,
) -> Chart:
    """Both arms' value per bucket against the metric's rule, with evidence, outages and the end marker."""
    height, top, bottom = 270, 34, 238
    rule = report.rule_for(metric)
    values = [v for a in ("last_good", "candidate") for w in report.windows(a) if (v := value(w)) is not None]
    if fixed_hi is not None:
        y = YAxis(top, bottom, 0.0, fixed_hi)
    else:
        y = YAxis.fit(top, bottom, values, max(default_hi, rule.threshold if rule else 0.0))
    shapes: list[Shape] = [_y_grid(y, tick_fmt), x_grid(axis.ticks(), top, bottom, LEFT, WIDTH - RIGHT)]
    shapes += _outage_bands(report, axis, y)
    shapes += _evidence_bands(report, metric, axis, y)
    if rule is not None:
        label = f"SLO {metric} {OPERATORS.get(rule.operator, rule.operator)} {fmt(rule.threshold)}"
        shapes += _threshold(y, rule.threshold, label, rule.operator in ("le", "lt"))
    for arm in ("last_good", "candidate"):

        def describe(w: WindowResult, v: float, arm: str = arm) -> str:
            return (
                f"{ARM_LABELS[arm]} {w.config_name} · bucket {clock(w.window_start_ms)}–{clock(w.window_end_ms)} UTC"
                f" · {metric} {fmt(v)} · {w.response_count} responses"
            )

        failed = _verdict_failed(metric) if arm == "candidate" else (lambda _w: False)
        late = (lambda w: late_text(report, w)) if arm == "candidate" else (lambda _w: None)
        shapes += _series(arm, report.windows(arm), value, axis, y, describe, failed, late)
    if not values:
        shapes.append(_no_data((top + bottom) / 2, "no buckets with data"))
    shapes += _end_marker(report, axis, top, bottom, with_label=(cls == "chart-p95"))
    return Chart(WIDTH, height, shapes, cls=cls, label=f"{metric} per bucket")


def traffic_chart(report: DeploymentReport, axis: TimeAxis) -> Chart:
    """The configured candidate share as a step line (start, weight changes, pause/resume, end) and the
    observed share per bucket as dots."""
    height, top, bottom = 210, 30, 178
    weights = [p.weight for p in report.weight_timeline]
    lg = {w.window_start_ms: w for w in report.last_good_windows}
    observed: list[tuple[WindowResult, float, int]] = []
    for w in report.candidate_windows:
        if report.after_end(w):
            continue  # after the end the candidate gets no new requests: a share of in-flight ones says nothing
        total = w.response_count + (lg[w.window_start_ms].response_count if w.window_start_ms in lg else 0)
        if total:
            observed.append((w, w.response_count / total, total))
    hi_seen = max([0.05, *weights, *(o[1] for o in observed)])
    hi = min(1.0, math.ceil(hi_seen * 1.25 / nice_step(hi_seen * 1.25)) * nice_step(hi_seen * 1.25))
    y = YAxis(top, bottom, 0.0, hi)
    shapes: list[Shape] = [_y_grid(y, fmt_pct), x_grid(axis.ticks(), top, bottom, LEFT, WIDTH - RIGHT)]
    color = ARM_COLORS["candidate"]
    if report.weight_timeline:
        pts = report.weight_timeline
        end_x = axis.x(axis.end_ms)
        d = [f"M{axis.x(pts[0].at_ms):.1f},{y.y(0):.1f}"]
        for i, p in enumerate(pts):
            x = axis.x(p.at_ms)
            prev = pts[i - 1].weight if i else 0.0
            d.append(f"L{x:.1f},{y.y(prev):.1f} L{x:.1f},{y.y(p.weight):.1f}")
        d.append(f"L{end_x:.1f},{y.y(pts[-1].weight):.1f}")
        line = " ".join(d)
        shapes += [
            Path(f"{line} L{end_x:.1f},{y.y(0):.1f} Z", cls="weight-area", fill=color, opacity=0.12, stroke="none"),
            Path(
                line,
                cls="series series-weight",
                stroke=color,
                width=2.2,
                round_joins=True,
                data=(("points", str(len(pts))),),
            ),
        ]
        for p in pts:
            dot = Dot(axis.x(p.at_ms), y.y(p.weight), 3.5, fill=color)
            title = f"{p.cause}: {fmt_pct(p.weight)} at {utc(p.at_ms)}"
            shapes.append(Group([dot], cls="weight-change", title=title, data=(("cause", p.cause),)))
    for w, share, total in observed:
        shapes.append(
            Dot(
                axis.x(_mid(w)),
                y.y(share),
                2.6,
                cls="point point-observed",
                fill="#fff",
                stroke=color,
                width=1.4,
                title=f"observed candidate share {fmt_pct(share)} of {total} responses in bucket "
                f"{clock(w.window_start_ms)}",
            )
        )
    if not report.weight_timeline and not observed:
        shapes.append(_no_data((top + bottom) / 2, "no traffic data"))
    shapes += _end_marker(report, axis, top, bottom, with_label=False)
    return Chart(WIDTH, height, shapes, cls="chart-traffic", label="candidate traffic share")


def verdict_strip(report: DeploymentReport, axis: TimeAxis) -> Chart:
    """One row per rule, one cell per candidate bucket, coloured by the verdict."""
    rules = [r.name for r in report.rules]
    for w in report.candidate_windows:
        rules += [v.rule for v in w.verdicts if v.rule not in rules]
    row_h, gap, top = 24, 6, 14
    bottom = top + max(1, len(rules)) * (row_h + gap) - gap
    height = int(bottom + 26)
    shapes: list[Shape] = [x_grid(axis.ticks(), top, bottom, LEFT, WIDTH - RIGHT)]
    for i, rule in enumerate(rules):
        y0 = top + i * (row_h + gap)
        shapes.append(Label(LEFT - 8, y0 + row_h / 2 + 4, rule, cls="row-label", anchor="end"))
        shapes.append(Rect(LEFT, y0, WIDTH - LEFT - RIGHT, row_h, cls="strip-bg", rx=3))
        for w in report.candidate_windows:
            verdict = next((v for v in w.verdicts if v.rule == rule), None)
            if verdict is None:
                continue
            x0, x1 = axis.x(w.window_start_ms), axis.x(w.window_end_ms)
            value = "–" if verdict.value is None else f"{verdict.value:g}"
            tip = f"{rule} {verdict.outcome} · bucket {clock(w.window_start_ms)} · value {value}"
            late = late_text(report, w)
            if late is not None:
                tip = f"{late} · {tip}"
            if verdict.reason:
                tip += f" · {verdict.reason}"
            if verdict.evidence:
                tip += f" · evidence: {evidence_text(verdict)}"
            shapes.append(
                Rect(
                    x0 + 0.75,
                    y0,
                    max(1.0, x1 - x0 - 1.5),
                    row_h,
                    rx=2,
                    cls=f"verdict verdict-{verdict.outcome}" + (" verdict-after-end" if late is not None else ""),
                    fill=OUTCOME_COLORS[verdict.outcome],
                    opacity=0.28 if late is not None else None,
                    title=tip,
                    data=(("rule", rule),),
                )
            )
    if not report.candidate_windows:
        shapes.append(_no_data(top + row_h / 2 + 4, "no candidate buckets"))
    shapes += _end_marker(report, axis, top + 4, bottom, with_label=False)
    return Chart(WIDTH, height, shapes, cls="verdict-strip", label="SLO verdicts per candidate bucket")
