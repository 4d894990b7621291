"""One static, offline HTML page per deployment: inline CSS, inline SVG charts drawn here, no scripts.

The page is assembled from :func:`render_sections` — the same fragments the live dashboard
(``canary.dashboard``) pushes to the browser — so the report and the dashboard share one chart renderer.

Every chart shares one time axis (same width and margins), so a bucket, the verdict strip cell below
it and the rollback marker line up vertically. Stable hooks for tests and tooling:

- ``svg.chart-p95``, ``svg.chart-recall``, ``svg.chart-errors``, ``svg.chart-traffic``, ``svg.verdict-strip``
- ``path.series-candidate`` / ``path.series-last_good`` with ``data-points`` = number of plotted buckets
  (one ``M``/``L`` vertex per bucket with a value), and ``circle.point`` per bucket
- ``line.threshold`` (``data-value``), ``rect.violation-zone``, ``rect.evidence-band``
- ``g.end-marker`` plus ``g.rollback-marker`` / ``g.promote-marker`` / ``g.abort-marker`` at the end command
- ``rect.verdict.verdict-pass|fail|inconclusive|error`` in the strip, ``table.preset-diff tr.diff-row``
- ``rect.outage-band`` / ``rect.drain-band`` (``data-start-ms``, ``data-end-ms``) on every metric chart when
  a broker outage was noted; ``section.panel-outages`` with ``table.outage-slots tr.outage-slot``
  (``data-phase``) — both arms' measured values in each bucket of the outage and its drain
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from canary.core.judge import evidence_text
from canary.core.models import WindowResult, iso_ms, parse_time
from canary.core.outages import OutageNote
from canary.errors import CanaryError
from canary.reports.metrics import summarize
from canary.reports.model import CommandEntry, DeploymentReport, DiffEntry

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
STATUS_STYLE = {
    "running": ("#dbeafe", "#1d4ed8", "Running"),
    "paused": ("#fef3c7", "#b45309", "Paused"),
    "rolled_back": ("#fee2e2", "#b91c1c", "Rolled back"),
    "promoted": ("#dcfce7", "#15803d", "Promoted"),
    "aborted": ("#e5e7eb", "#374151", "Aborted"),
}
END_MARKER = {"rollback": "rollback-marker", "promote": "promote-marker", "abort": "abort-marker"}
END_COLORS = {"rollback": "#b91c1c", "promote": "#15803d", "abort": "#374151"}

# -- geometry: all charts share the x axis -----------------------------------------------------------------
WIDTH = 1000
LEFT, RIGHT = 86, 24


@dataclass(frozen=True, slots=True)
class TimeAxis:
    start_ms: int
    end_ms: int

    def x(self, ts_ms: float) -> float:
        span = max(1, self.end_ms - self.start_ms)
        return LEFT + (ts_ms - self.start_ms) / span * (WIDTH - LEFT - RIGHT)

    def ticks(self) -> list[tuple[float, str]]:
        seconds = (self.end_ms - self.start_ms) / 1000
        steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
        step = next((s for s in steps if seconds / s <= 10), 86400 * math.ceil(seconds / 86400 / 10))
        out = []
        t = 0
        while t <= seconds + 1e-9:
            out.append((self.x(self.start_ms + t * 1000), _rel(t)))
            t += step
        return out


def _rel(seconds: float) -> str:
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}h{(s % 3600) // 60:02d}"


def _nice_step(span: float, target: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


@dataclass(frozen=True, slots=True)
class YAxis:
    top: float
    bottom: float
    lo: float
    hi: float

    def y(self, v: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.bottom - (v - self.lo) / span * (self.bottom - self.top)

    @classmethod
    def fit(cls, top: float, bottom: float, values: Iterable[float], floor_hi: float, lo: float = 0.0) -> YAxis:
        hi = max([floor_hi, *values])
        step = _nice_step(hi - lo)
        return cls(top, bottom, lo, math.ceil(hi * 1.12 / step) * step if hi > lo else lo + step)

    def ticks(self) -> list[float]:
        step = _nice_step(self.hi - self.lo)
        n = round((self.hi - self.lo) / step)
        return [self.lo + i * step for i in range(n + 1)]


def _f(v: float) -> str:
    return f"{v:.1f}"


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


# -- formatting --------------------------------------------------------------------------------------------
def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f} ms" if v >= 100 else f"{v:,.1f} ms"


def fmt_recall(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def fmt_pct(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 100:.0f}%" if abs(v * 100 - round(v * 100)) < 0.05 else f"{v * 100:.1f}%"


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return f"{v:g}" if abs(v) < 1e15 else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _utc(ms: int | None) -> str:
    return "–" if ms is None else iso_ms(ms).replace("T", " ").replace(".000Z", "Z")


def _clock(ms: int) -> str:
    return iso_ms(ms)[11:19]


def _duration(ms: int) -> str:
    s = max(0, ms) / 1000
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# -- SVG building blocks -----------------------------------------------------------------------------------
def _x_axis(axis: TimeAxis, top: float, bottom: float) -> list[str]:
    out = ['<g class="axis x-axis">']
    for x, label in axis.ticks():
        out.append(f'<line class="grid" x1="{_f(x)}" y1="{_f(top)}" x2="{_f(x)}" y2="{_f(bottom)}"/>')
        out.append(f'<text class="tick" x="{_f(x)}" y="{_f(bottom + 16)}" text-anchor="middle">{label}</text>')
    out.append(f'<line class="baseline" x1="{LEFT}" y1="{_f(bottom)}" x2="{WIDTH - RIGHT}" y2="{_f(bottom)}"/>')
    out.append("</g>")
    return out


def _y_axis(y: YAxis, fmt: Callable[[float], str]) -> list[str]:
    out = ['<g class="axis y-axis">']
    for v in y.ticks():
        yy = y.y(v)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{_f(yy)}" x2="{WIDTH - RIGHT}" y2="{_f(yy)}"/>')
        out.append(f'<text class="tick" x="{LEFT - 8}" y="{_f(yy + 4)}" text-anchor="end">{escape(fmt(v))}</text>')
    out.append("</g>")
    return out


def _mid(w: WindowResult) -> float:
    return (w.window_start_ms + w.window_end_ms) / 2


def _series(
    arm: str,
    windows: Sequence[WindowResult],
    value: Callable[[WindowResult], float | None],
    axis: TimeAxis,
    y: YAxis,
    describe: Callable[[WindowResult, float], str],
    failed: Callable[[WindowResult], bool],
) -> list[str]:
    """A line through every bucket with a value (a gap where a bucket has none) and a dot per bucket."""
    color = ARM_COLORS[arm]
    d: list[str] = []
    dots: list[str] = []
    pen_down = False
    count = 0
    for w in windows:
        v = value(w)
        if v is None:
            pen_down = False
            continue
        x, yy = axis.x(_mid(w)), y.y(v)
        d.append(f"{'L' if pen_down else 'M'}{_f(x)},{_f(yy)}")
        pen_down = True
        count += 1
        bad = failed(w)
        cls = f"point point-{arm}" + (" point-fail" if bad else "")
        dots.append(
            f'<circle class="{cls}" cx="{_f(x)}" cy="{_f(yy)}" r="{4.5 if bad else 3.2}" '
            f'fill="{"#fff" if bad else color}" stroke="{THRESHOLD_COLOR if bad else color}" '
            f'stroke-width="{2.2 if bad else 1}"><title>{escape(describe(w, v))}</title></circle>'
        )
    if not count:
        return []
    return [
        f'<g class="series-group series-group-{arm}">',
        f'<path class="series series-{arm}" data-arm="{arm}" data-points="{count}" d="{" ".join(d)}" '
        f'fill="none" stroke="{color}" stroke-width="{2.4 if arm == "candidate" else 1.8}" '
        f'stroke-linejoin="round" stroke-linecap="round"/>',
        *dots,
        "</g>",
    ]


def _threshold(y: YAxis, value: float, label: str, zone_above: bool) -> list[str]:
    yy = y.y(value)
    zone_y, zone_h = (y.top, yy - y.top) if zone_above else (yy, y.bottom - yy)
    return [
        f'<rect class="violation-zone" x="{LEFT}" y="{_f(zone_y)}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{_f(max(0.0, zone_h))}" fill="{THRESHOLD_COLOR}" fill-opacity="0.06"/>',
        f'<line class="threshold" data-value="{value:g}" x1="{LEFT}" y1="{_f(yy)}" x2="{WIDTH - RIGHT}" '
        f'y2="{_f(yy)}" stroke="{THRESHOLD_COLOR}" stroke-width="1.6" stroke-dasharray="7 5"/>',
        f'<text class="threshold-label" x="{LEFT + 6}" y="{_f(yy - 6 if zone_above else yy + 15)}" '
        f'text-anchor="start" fill="{THRESHOLD_COLOR}">{escape(label)}</text>',
    ]


def _end_marker(report: DeploymentReport, axis: TimeAxis, top: float, bottom: float, with_label: bool) -> list[str]:
    end = report.end_command
    if end is None or end.type not in END_MARKER:
        return []
    x = axis.x(end.issued_at_ms)
    color = END_COLORS[end.type]
    verb = {"rollback": "rolled back", "promote": "promoted", "abort": "aborted"}[end.type]
    title = f"{verb} at {_utc(end.issued_at_ms)} by {end.issued_by}" + (f": {end.reason}" if end.reason else "")
    out = [
        f'<g class="end-marker {END_MARKER[end.type]}" data-at-ms="{end.issued_at_ms}"><title>{escape(title)}</title>',
        f'<line x1="{_f(x)}" y1="{_f(top - 4)}" x2="{_f(x)}" y2="{_f(bottom)}" stroke="{color}" stroke-width="2"/>',
        f'<path d="M{_f(x - 6)},{_f(top - 10)} L{_f(x + 6)},{_f(top - 10)} L{_f(x)},{_f(top - 2)} Z" fill="{color}"/>',
    ]
    if with_label:
        text = verb + (f" — {end.reason}" if end.reason else "")
        if len(text) > 90:
            text = text[:87] + "…"
        width = 7.0 * len(text) + 16
        right_side = x + width + 8 < WIDTH - RIGHT
        bx = x + 8 if right_side else x - 8 - width
        out += [
            f'<rect class="marker-label-bg" x="{_f(bx)}" y="{_f(top + 2)}" width="{_f(width)}" height="22" '
            f'rx="4" fill="{color}"/>',
            f'<text class="marker-label" x="{_f(bx + 8)}" y="{_f(top + 17)}" fill="#fff">{escape(text)}</text>',
        ]
    out.append("</g>")
    return out


def _evidence_bands(report: DeploymentReport, metric: str, axis: TimeAxis, y: YAxis) -> list[str]:
    end = report.end_command
    ev = end.evidence if end is not None else None
    if not ev or ev.get("metric") != metric:
        return []
    out = []
    for item in ev.get("windows") or []:
        try:
            s, e = parse_time(item["window_start"]), parse_time(item["window_end"])
        except (KeyError, TypeError, CanaryError):
            continue
        out.append(
            f'<rect class="evidence-band" x="{_f(axis.x(s))}" y="{_f(y.top)}" width="{_f(axis.x(e) - axis.x(s))}" '
            f'height="{_f(y.bottom - y.top)}" fill="{THRESHOLD_COLOR}" fill-opacity="0.10">'
            f"<title>evidence window {escape(str(item.get('window_id', '')))}</title></rect>"
        )
    return out


OUTAGE_COLOR = "#475569"


def _outage_bands(report: DeploymentReport, axis: TimeAxis, y: YAxis) -> list[str]:
    """Grey bands where the worker could not reach the broker, lighter ones over the assumed drain."""
    out = []
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
                f'<rect class="{cls}" data-start-ms="{s}" data-end-ms="{e}" x="{_f(x0)}" y="{_f(y.top)}" '
                f'width="{_f(x1 - x0)}" height="{_f(y.bottom - y.top)}" fill="{OUTAGE_COLOR}" '
                f'fill-opacity="{opacity}"><title>{escape(what)}: {_utc(s)} – {_utc(e)}</title></rect>'
            )
    return out


def _svg_open(cls: str, height: int, label: str) -> str:
    return (
        f'<svg class="chart {cls}" id="{cls}" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{_attr(label)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    )


def _no_data(axis_mid_y: float, text: str) -> str:
    x = (LEFT + WIDTH - RIGHT) / 2
    return f'<text class="no-data" x="{_f(x)}" y="{_f(axis_mid_y)}" text-anchor="middle">{escape(text)}</text>'


def _verdict_failed(metric: str) -> Callable[[WindowResult], bool]:
    return lambda w: any(v.metric == metric and v.outcome == "fail" for v in w.verdicts)


def _metric_chart(
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
) -> str:
    height, top, bottom = 270, 34, 238
    rule = report.rule_for(metric)
    values = [v for a in ("last_good", "candidate") for w in report.windows(a) if (v := value(w)) is not None]
    if fixed_hi is not None:
        y = YAxis(top, bottom, 0.0, fixed_hi)
    else:
        y = YAxis.fit(top, bottom, values, max(default_hi, rule.threshold if rule else 0.0))
    parts = [_svg_open(cls, height, f"{metric} per bucket"), *_y_axis(y, tick_fmt), *_x_axis(axis, top, bottom)]
    parts += _outage_bands(report, axis, y)
    parts += _evidence_bands(report, metric, axis, y)
    if rule is not None:
        op = {"le": "≤", "lt": "<", "ge": "≥", "gt": ">"}.get(rule.operator, rule.operator)
        label = f"SLO {metric} {op} {fmt(rule.threshold)}"
        parts += _threshold(y, rule.threshold, label, rule.operator in ("le", "lt"))
    for arm in ("last_good", "candidate"):

        def describe(w: WindowResult, v: float, arm: str = arm) -> str:
            return (
                f"{ARM_LABELS[arm]} {w.config_name} · bucket {_clock(w.window_start_ms)}–{_clock(w.window_end_ms)} UTC"
                f" · {metric} {fmt(v)} · {w.response_count} responses"
            )

        failed = _verdict_failed(metric) if arm == "candidate" else (lambda _w: False)
        parts += _series(arm, report.windows(arm), value, axis, y, describe, failed)
    if not values:
        parts.append(_no_data((top + bottom) / 2, "no buckets with data"))
    parts += _end_marker(report, axis, top, bottom, with_label=(cls == "chart-p95"))
    parts.append("</svg>")
    return "".join(parts)


def _traffic_chart(report: DeploymentReport, axis: TimeAxis) -> str:
    height, top, bottom = 210, 30, 178
    weights = [p.weight for p in report.weight_timeline]
    lg = {w.window_start_ms: w for w in report.last_good_windows}
    observed: list[tuple[WindowResult, float, int]] = []
    for w in report.candidate_windows:
        total = w.response_count + (lg[w.window_start_ms].response_count if w.window_start_ms in lg else 0)
        if total:
            observed.append((w, w.response_count / total, total))
    hi_seen = max([0.05, *weights, *(o[1] for o in observed)])
    hi = min(1.0, math.ceil(hi_seen * 1.25 / _nice_step(hi_seen * 1.25)) * _nice_step(hi_seen * 1.25))
    y = YAxis(top, bottom, 0.0, hi)
    parts = [_svg_open("chart-traffic", height, "candidate traffic share"), *_y_axis(y, fmt_pct)]
    parts += _x_axis(axis, top, bottom)
    color = ARM_COLORS["candidate"]
    if report.weight_timeline:
        pts = report.weight_timeline
        end_x = axis.x(axis.end_ms)
        d = [f"M{_f(axis.x(pts[0].at_ms))},{_f(y.y(0))}"]
        for i, p in enumerate(pts):
            x = axis.x(p.at_ms)
            prev = pts[i - 1].weight if i else 0.0
            d.append(f"L{_f(x)},{_f(y.y(prev))} L{_f(x)},{_f(y.y(p.weight))}")
        d.append(f"L{_f(end_x)},{_f(y.y(pts[-1].weight))}")
        line = " ".join(d)
        area = f"{line} L{_f(end_x)},{_f(y.y(0))} Z"
        parts += [
            f'<path class="weight-area" d="{area}" fill="{color}" fill-opacity="0.12" stroke="none"/>',
            f'<path class="series series-weight" data-points="{len(pts)}" d="{line}" fill="none" stroke="{color}" '
            'stroke-width="2.2" stroke-linejoin="round"/>',
        ]
        for p in pts:
            x = axis.x(p.at_ms)
            label = f"{p.cause}: {fmt_pct(p.weight)}"
            parts.append(
                f'<g class="weight-change" data-cause="{_attr(p.cause)}"><circle cx="{_f(x)}" cy="{_f(y.y(p.weight))}" '
                f'r="3.5" fill="{color}"/><title>{escape(label)} at {_utc(p.at_ms)}</title></g>'
            )
    if observed:
        for w, share, total in observed:
            x, yy = axis.x(_mid(w)), y.y(share)
            parts.append(
                f'<circle class="point point-observed" cx="{_f(x)}" cy="{_f(yy)}" r="2.6" fill="#fff" '
                f'stroke="{color}" stroke-width="1.4"><title>observed candidate share {fmt_pct(share)} of {total} '
                f"responses in bucket {_clock(w.window_start_ms)}</title></circle>"
            )
    if not report.weight_timeline and not observed:
        parts.append(_no_data((top + bottom) / 2, "no traffic data"))
    parts += _end_marker(report, axis, top, bottom, with_label=False)
    parts.append("</svg>")
    return "".join(parts)


def _verdict_strip(report: DeploymentReport, axis: TimeAxis) -> str:
    rules = [r.name for r in report.rules]
    for w in report.candidate_windows:
        rules += [v.rule for v in w.verdicts if v.rule not in rules]
    row_h, gap, top = 24, 6, 14
    bottom = top + max(1, len(rules)) * (row_h + gap) - gap
    height = int(bottom + 26)
    parts = [_svg_open("verdict-strip", height, "SLO verdicts per candidate bucket"), *_x_axis(axis, top, bottom)]
    for i, rule in enumerate(rules):
        y0 = top + i * (row_h + gap)
        parts.append(
            f'<text class="row-label" x="{LEFT - 8}" y="{_f(y0 + row_h / 2 + 4)}" text-anchor="end">'
            f"{escape(rule)}</text>"
        )
        parts.append(
            f'<rect class="strip-bg" x="{LEFT}" y="{_f(y0)}" width="{WIDTH - LEFT - RIGHT}" height="{row_h}" rx="3"/>'
        )
        for w in report.candidate_windows:
            verdict = next((v for v in w.verdicts if v.rule == rule), None)
            if verdict is None:
                continue
            x0, x1 = axis.x(w.window_start_ms), axis.x(w.window_end_ms)
            wide = max(1.0, x1 - x0 - 1.5)
            value = "–" if verdict.value is None else f"{verdict.value:g}"
            tip = f"{rule} {verdict.outcome} · bucket {_clock(w.window_start_ms)} · value {value}"
            if verdict.reason:
                tip += f" · {verdict.reason}"
            if verdict.evidence:
                tip += f" · evidence: {evidence_text(verdict)}"
            parts.append(
                f'<rect class="verdict verdict-{verdict.outcome}" data-rule="{_attr(rule)}" x="{_f(x0 + 0.75)}" '
                f'y="{_f(y0)}" width="{_f(wide)}" height="{row_h}" rx="2" fill="{OUTCOME_COLORS[verdict.outcome]}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    if not report.candidate_windows:
        parts.append(_no_data(top + row_h / 2 + 4, "no candidate buckets"))
    parts += _end_marker(report, axis, top + 4, bottom, with_label=False)
    parts.append("</svg>")
    return "".join(parts)


# -- HTML sections -----------------------------------------------------------------------------------------
CSS = """
:root{--bg:#f4f6fa;--card:#fff;--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--lg:#2563eb;--cand:#ea580c;
--bad:#dc2626;--good:#16a34a}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 40px}
header.summary{display:flex;justify-content:space-between;align-items:flex-start;gap:24px;margin-bottom:14px}
.eyebrow{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted);font-weight:600}
h1{margin:2px 0 6px;font-size:26px;letter-spacing:-.01em}
h2{font-size:15px;margin:0 0 2px}
.sub{color:var(--muted);font-size:12.5px;margin:0 0 10px}
.configs{font-size:15px}
.configs .vs{color:var(--muted);margin:0 8px}
.tag{display:inline-block;font:600 12px/1 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
padding:4px 7px;border-radius:6px;color:#fff;vertical-align:1px}
.tag.candidate{background:var(--cand)}.tag.last_good{background:var(--lg)}
.meta{color:var(--muted);font-size:12.5px;margin-top:6px}
.description{margin:6px 0 0;max-width:760px;font-size:13px;color:#334155}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.status{font-weight:700;font-size:14px;padding:8px 16px;border-radius:999px;white-space:nowrap}
.banner{border-radius:10px;padding:12px 16px;margin:0 0 16px;border:1px solid;font-size:14.5px}
.banner b{margin-right:6px}
.banner .by{color:inherit;opacity:.75;font-size:12.5px;margin-left:6px}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:14px 16px;
box-shadow:0 1px 2px rgba(15,23,42,.04)}
.kpi .label{font-size:12px;color:var(--muted);font-weight:600}
.kpi .value{font-size:22px;font-weight:700;margin-top:2px;font-variant-numeric:tabular-nums}
.kpi .value.bad{color:var(--bad)}.kpi .value.good{color:var(--good)}
.kpi .compare{font-size:12px;color:var(--muted);margin-top:2px}
.panel{margin-bottom:16px}
.panel-head{display:flex;justify-content:space-between;align-items:baseline;gap:16px;margin-bottom:6px}
.legend{display:flex;gap:14px;flex-wrap:wrap;justify-content:flex-end;font-size:12px;color:var(--muted);
max-width:55%}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:18px;height:3px;border-radius:2px}
.sw.box{width:12px;height:12px;border-radius:3px}
.sw.dash{height:0;border-top:2px dashed var(--bad);background:none}
svg.chart{display:block;overflow:visible}
svg.chart text{font-family:inherit;font-size:11.5px;fill:#475569}
svg.chart text.tick{fill:#94a3b8;font-size:11px}
svg.chart text.threshold-label{font-weight:600;fill:#dc2626}
svg.chart text.marker-label{fill:#fff;font-weight:600;font-size:12px}
svg.chart text.row-label{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11px;fill:#334155}
svg.chart text.no-data{fill:#94a3b8;font-size:13px}
svg.chart .grid{stroke:#eef2f7;stroke-width:1}
svg.chart .baseline{stroke:#cbd5e1;stroke-width:1}
svg.chart .strip-bg{fill:#f1f5f9}
.axis-note{font-size:11.5px;color:var(--muted);text-align:right;margin-top:-2px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);
font-weight:600;padding:6px 8px;border-bottom:1px solid var(--line)}
td{padding:7px 8px;border-bottom:1px solid #f1f5f9;vertical-align:top}
tr:last-child td{border-bottom:none}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pill{display:inline-block;font-size:11.5px;font-weight:700;padding:2px 8px;border-radius:999px;
background:#e2e8f0;color:#334155}
.pill.start{background:#dbeafe;color:#1d4ed8}.pill.rollback{background:#fee2e2;color:#b91c1c}
.pill.promote{background:#dcfce7;color:#15803d}.pill.abort{background:#e5e7eb;color:#374151}
.pill.pause,.pill.set_weight,.pill.resume{background:#fef3c7;color:#92400e}
.rejected{opacity:.55}
.evidence{margin:6px 0 0;padding:0;list-style:none;font-size:12px;color:#475569}
.evidence li{padding:2px 0}
.diff-old{color:#1e40af}.diff-new{color:#9a3412;font-weight:600}
.delta{font-size:11.5px;color:var(--muted);margin-left:6px}
tr.diff-added td:first-child::after{content:" new";color:var(--good);font-size:11px}
tr.diff-removed td:first-child::after{content:" removed";color:var(--bad);font-size:11px}
details summary{cursor:pointer;font-weight:600}
.v-pass{color:#15803d}.v-fail{color:#b91c1c;font-weight:700}.v-inconclusive{color:#64748b}.v-error{color:#7e22ce}
.v-shared{color:#b45309;font-weight:700}
footer{color:var(--muted);font-size:12px;margin-top:20px;text-align:center}
.empty{color:var(--muted);font-style:italic}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}.grid2{grid-template-columns:1fr}}
"""


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f"<span>{sw}{escape(label)}</span>" for sw, label in items) + "</div>"


def _arm_swatch(arm: str) -> str:
    return f'<i class="sw" style="background:{ARM_COLORS[arm]}"></i>'


def _header(report: DeploymentReport) -> str:
    dep = report.deployment
    bg, fg, label = STATUS_STYLE.get(dep.status, ("#e5e7eb", "#374151", dep.status))
    cand, lg = dep.candidate, dep.last_good
    end = dep.ended_at_ms
    span = (end if end is not None else report.generated_at_ms) - dep.started_at_ms
    timing = f"started {_utc(dep.started_at_ms)}" + (
        f" · ended {_utc(end)} · lasted {_duration(span)}" if end is not None else f" · running for {_duration(span)}"
    )
    return (
        '<header class="summary"><div>'
        '<div class="eyebrow">Canary deployment report</div>'
        f'<h1 class="deployment-id">{escape(dep.deployment_id)}</h1>'
        '<div class="configs">'
        f'<span class="tag candidate">{escape(cand.name)}</span> <span class="mono">v{escape(cand.version)} '
        f"#{escape(cand.content_hash[:8])}</span>"
        '<span class="vs">vs</span>'
        f'<span class="tag last_good">{escape(lg.name)}</span> <span class="mono">v{escape(lg.version)} '
        f"#{escape(lg.content_hash[:8])}</span></div>"
        f'<div class="meta">{escape(timing)} · started by {escape(_started_by(report))}</div>'
        f"{_description(report)}"
        "</div>"
        f'<div class="status status-{_attr(dep.status)}" style="background:{bg};color:{fg}">{escape(label)}</div>'
        "</header>"
    )


def _description(report: DeploymentReport) -> str:
    text = str(report.deployment.candidate.snapshot.get("metadata", {}).get("description") or "")
    if not text:
        return ""
    short = text if len(text) <= 220 else text[:217] + "…"
    return f'<p class="description" title="{_attr(text)}">{escape(short)}</p>'


def _started_by(report: DeploymentReport) -> str:
    start = next((c for c in report.commands if c.type == "start" and c.applied), None)
    return start.issued_by if start else "?"


def _banner(report: DeploymentReport) -> str:
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
    else:
        share = fmt_pct(dep.weight)
        colors = ("#eff6ff", "#bfdbfe", "#1e40af")
        title = f"Running: {share} of traffic goes to {dep.candidate.name}."
    reason = f'<span class="reason">{escape(dep.reason)}</span>' if dep.reason else ""
    by = f'<span class="by">— {escape(end.issued_by)}, {_utc(end.issued_at_ms)}</span>' if end is not None else ""
    bg, border, fg = colors
    return (
        f'<div class="banner banner-{_attr(dep.status)}" style="background:{bg};border-color:{border};color:{fg}">'
        f"<b>{escape(title)}</b>{reason}{by}</div>"
    )


def _kpi(label: str, value: str, compare: str = "", cls: str = "") -> str:
    return (
        f'<div class="card kpi"><div class="label">{escape(label)}</div>'
        f'<div class="value {cls}">{escape(value)}</div><div class="compare">{escape(compare)}</div></div>'
    )


def _cards(report: DeploymentReport) -> str:
    cand, lg = summarize(report.candidate_windows), summarize(report.last_good_windows)

    def judged(metric: str) -> str:
        """Red if any candidate bucket failed the metric's rule, green if some passed and none failed."""
        outcomes = {v.outcome for w in report.candidate_windows for v in w.verdicts if v.metric == metric}
        return "bad" if "fail" in outcomes else "good" if "pass" in outcomes else ""

    total = cand["total_requests"] + lg["total_requests"]
    judged_buckets = sum(1 for w in report.candidate_windows if w.verdicts)
    return (
        '<section class="cards">'
        + _kpi(
            "Candidate avg p95",
            fmt_ms(cand["avg_p95_ms"]),
            f"worst {fmt_ms(cand['max_p95_ms'])} · last_good {fmt_ms(lg['avg_p95_ms'])}".replace(" ms ·", " ·"),
            judged("p95_ms"),
        )
        + _kpi(
            "Candidate recall@10",
            fmt_recall(cand["avg_recall_at_10"]),
            f"last_good {fmt_recall(lg['avg_recall_at_10'])}",
            judged("recall_at_10"),
        )
        + _kpi(
            "Requests",
            f"{total:,}",
            f"candidate {cand['total_requests']:,} ({fmt_pct(cand['total_requests'] / total) if total else '–'})",
        )
        + _kpi(
            "Failed candidate buckets",
            f"{cand['failed_buckets']} / {judged_buckets}",
            f"{cand['total_slo_violations']:,} requests broke the SLO",
            "bad" if cand["failed_buckets"] else "good" if judged_buckets else "",
        )
        + _kpi(
            "Traffic split",
            f"{fmt_pct(1 - report.deployment.weight)} / {fmt_pct(report.deployment.weight)}",
            "last_good / candidate",
        )
        + "</section>"
    )


def _panel(title: str, subtitle: str, legend: str, body: str, cls: str) -> str:
    return (
        f'<section class="card panel {cls}"><div class="panel-head"><div><h2>{escape(title)}</h2>'
        f'<p class="sub">{escape(subtitle)}</p></div>{legend}</div>{body}</section>'
    )


def _charts(report: DeploymentReport) -> str:
    start, end = report.span_ms()
    axis = TimeAxis(start, end)
    arms = [(_arm_swatch("last_good"), report.last_good_name), (_arm_swatch("candidate"), report.candidate_name)]
    threshold = [('<i class="sw dash"></i>', "SLO threshold")]
    end_cmd = report.end_command
    marker = []
    if end_cmd is not None and end_cmd.type in END_COLORS:
        swatch = f'<i class="sw" style="background:{END_COLORS[end_cmd.type]};width:3px;height:12px"></i>'
        marker = [(swatch, end_cmd.type)]
    note = f'<div class="axis-note">time since {_utc(start)} (m:ss)</div>'
    if report.outages:
        swatch = f'<i class="sw box" style="background:{OUTAGE_COLOR};opacity:.35"></i>'
        marker = [*marker, (swatch, "broker outage")]
    p95 = _metric_chart(
        report,
        axis,
        cls="chart-p95",
        metric="p95_ms",
        value=lambda w: w.p95_ms if w.response_count else None,
        fmt=lambda v: f"{v:,.0f} ms",
        tick_fmt=lambda v: f"{v:,.0f}",
        default_hi=100.0,
    )
    recall = _metric_chart(
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
    errors = _metric_chart(
        report,
        axis,
        cls="chart-errors",
        metric="error_rate",
        value=lambda w: w.error_count / w.response_count if w.response_count else None,
        fmt=fmt_pct,
        tick_fmt=fmt_pct,
        default_hi=0.02,
    )
    outcome_legend = [(f'<i class="sw box" style="background:{c}"></i>', o) for o, c in OUTCOME_COLORS.items()]
    bucket_s = report.all_windows[0].duration_sec if report.all_windows else 5
    return (
        _panel(
            "p95 latency",
            f"ms per {bucket_s} s bucket · ringed dots failed the rule · shaded: the rollback's evidence",
            _legend([*arms, *threshold, *marker]),
            p95 + note,
            "panel-p95",
        )
        + _panel(
            "recall@10",
            "mean over requests with a recall (labels, or a sampled exact search) per bucket",
            _legend([*arms, *threshold, *marker]),
            recall + note,
            "panel-recall",
        )
        + _panel(
            "Error rate",
            "errored responses per bucket (timeouts and backend errors)",
            _legend([*arms, *threshold, *marker]),
            errors + note,
            "panel-errors",
        )
        + _panel(
            "Candidate traffic share",
            "line: configured share (start, weight changes, pause/resume, end) · dots: observed share per bucket",
            _legend([(_arm_swatch("candidate"), "configured"), ("○", "observed"), *marker]),
            _traffic_chart(report, axis) + note,
            "panel-traffic",
        )
        + _panel(
            "SLO verdicts",
            "candidate buckets judged per rule · inconclusive: too few samples, neither counts nor resets the streak",
            _legend(outcome_legend),
            _verdict_strip(report, axis),
            "panel-verdicts",
        )
    )


def _evidence_list(c: CommandEntry) -> str:
    ev = c.evidence or {}
    windows = ev.get("windows") or []
    if not ev:
        return ""
    head = ""
    if "rule" in ev:
        op = {"le": "≤", "lt": "<", "ge": "≥", "gt": ">"}.get(str(ev.get("operator")), str(ev.get("operator", "")))
        head = (
            f"<li><b>{escape(str(ev.get('rule')))}</b>: {escape(str(ev.get('metric', '')))} {escape(op)} "
            f"{escape(fmt_value(ev.get('threshold')))}, {escape(fmt_value(ev.get('consecutive_buckets')))} "
            "consecutive failing buckets:</li>"
        )
    items = []
    for w in windows[:12] if isinstance(windows, list) else []:  # evidence is the issuer's: any shape
        if isinstance(w, str):  # a rollout step cites the windows it counted by id
            items.append(f"<li>counted window {escape(w)}</li>")
            continue
        if not isinstance(w, dict):
            continue
        try:
            when = _clock(parse_time(w["window_start"])) + "–" + _clock(parse_time(w["window_end"]))
        except (KeyError, TypeError, CanaryError):
            when = str(w.get("window_id", "?"))
        value = w.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = fmt_ms(value) if ev.get("metric") == "p95_ms" else f"{value:.3g}"
        else:
            shown = fmt_value(value)
        items.append(
            f"<li>bucket {escape(when)} · value <b>{escape(shown)}</b> · "
            f"{escape(fmt_value(w.get('response_count')))} responses</li>"
        )
    note = OutageNote.from_context(ev.get("context"))
    if note is not None:
        items.append(f'<li class="outage-note">decided on a bucket {escape(note.text())}</li>')
    return f'<ul class="evidence">{head}{"".join(items)}</ul>'


def _commands_table(report: DeploymentReport) -> str:
    start = report.deployment.started_at_ms
    rows = []
    for c in report.commands:
        rel = _rel((c.issued_at_ms - start) / 1000) if c.issued_at_ms >= start else "–"
        weight = fmt_pct(c.weight) if c.weight is not None else ""
        reason = escape(c.reason or "")
        if not c.applied:
            reason += f' <span class="empty">(not applied: {escape(c.note)})</span>'
        rows.append(
            f'<tr class="command command-{_attr(c.type)}{"" if c.applied else " rejected"}">'
            f'<td class="mono">+{rel}<br><span class="sub">{_clock(c.issued_at_ms)}Z</span></td>'
            f'<td><span class="pill {_attr(c.type)}">{escape(c.type)}</span></td>'
            f'<td class="mono">{escape(c.issued_by)}</td><td class="num">{weight}</td>'
            f"<td>{reason}{_evidence_list(c)}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="5" class="empty">no commands</td></tr>'
    return (
        '<table class="commands"><thead><tr><th>when</th><th>command</th><th>by</th><th>weight</th>'
        f"<th>reason / evidence</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _delta(d: DiffEntry) -> str:
    a, b = d.last_good, d.candidate
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        diff = b - a
        text = f"{diff:+g}"
        if a:
            text += f" ({(b / a - 1) * 100:+.0f}%)"
        return f'<span class="delta">{escape(text)}</span>'
    return ""


def _diff_table(report: DeploymentReport) -> str:
    interesting = [d for d in report.diff if d.key not in ("metadata.description",)]
    rows = []
    for d in interesting:
        rows.append(
            f'<tr class="diff-row diff-{d.change}" data-key="{_attr(d.key)}"><td class="mono">{escape(d.key)}</td>'
            f'<td class="mono diff-old">{escape(fmt_value(d.last_good))}</td>'
            f'<td class="mono diff-new">{escape(fmt_value(d.candidate))}{_delta(d)}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="3" class="empty">the snapshots are identical</td></tr>'
    return (
        f'<table class="preset-diff"><thead><tr><th>key</th><th>{escape(report.last_good_name)}</th>'
        f"<th>{escape(report.candidate_name)}</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _buckets_table(report: DeploymentReport) -> str:
    rows = []
    for w in report.all_windows:
        verdicts = " ".join(f'<span class="v-{v.outcome}">{escape(v.rule)}:{v.outcome}</span>' for v in w.verdicts)
        rows.append(
            f'<tr class="bucket bucket-{_attr(w.arm)}"><td class="mono">{_clock(w.window_start_ms)}</td>'
            f'<td><span class="tag {_attr(w.arm)}">{escape(w.arm)}</span></td>'
            f'<td class="num">{fmt_ms(w.p95_ms)}</td><td class="num">{fmt_recall(w.recall_at_10)}</td>'
            f'<td class="num">{w.response_count}</td><td class="num">{w.error_count}</td>'
            f'<td class="num">{w.slo_violations}</td><td>{verdicts}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="8" class="empty">no buckets</td></tr>'
    return (
        f"<details><summary>All {len(report.all_windows)} buckets</summary>"
        '<table class="buckets"><thead><tr><th>start (UTC)</th><th>arm</th><th>p95</th><th>recall@10</th>'
        "<th>responses</th><th>errors</th><th>SLO violations</th><th>verdicts</th></tr></thead>"
        f"<tbody>{body}</tbody></table></details>"
    )


def _outages_panel(report: DeploymentReport) -> str:
    """Each broker outage with both arms' measured values in every bucket it (or its drain) touched."""
    if not report.outages:
        return ""
    blocks = []
    for o in report.outages:
        ended = f"to {_utc(o.end_ms)} ({o.duration_s:g} s)" if o.end_ms is not None else "(still unreachable)"
        drain = f"; backlog drain assumed until {_utc(o.drain_until_ms)}" if o.drain_until_ms is not None else ""
        rows = []
        for slot in report.outage_slots(o):
            c, lg = slot.candidate, slot.last_good
            verdicts = (
                " ".join(f'<span class="v-{v.outcome}">{escape(v.rule)}:{v.outcome}</span>' for v in c.verdicts)
                if c is not None
                else ""
            )
            rows.append(
                f'<tr class="outage-slot" data-phase="{slot.phase}" data-start-ms="{slot.start_ms}">'
                f'<td class="mono">{_clock(slot.start_ms)}</td><td>{escape(slot.phase)}</td>'
                f'<td class="num cand-p95">{fmt_ms(c.p95_ms if c else None)}</td>'
                f'<td class="num lg-p95">{fmt_ms(lg.p95_ms if lg else None)}</td>'
                f'<td class="num">{c.response_count if c else 0} / {lg.response_count if lg else 0}</td>'
                f"<td>{verdicts}</td></tr>"
            )
        body = "".join(rows) or '<tr><td colspan="6" class="empty">no buckets of this deployment</td></tr>'
        end_attr = "" if o.end_ms is None else str(o.end_ms)
        blocks.append(
            f'<div class="outage" data-start-ms="{o.start_ms}" data-end-ms="{end_attr}">'
            f"<p><b>Broker unreachable from {_utc(o.start_ms)} {escape(ended)}</b>{escape(drain)}.</p>"
            '<table class="outage-slots"><thead><tr><th>bucket (UTC)</th><th>phase</th><th>candidate p95</th>'
            "<th>last_good p95</th><th>responses (cand / lg)</th><th>verdicts</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>"
        )
    return _panel(
        "Broker outages",
        "seen by the worker; the verdicts of these buckets are the judge's as usual (nothing is discounted) — "
        "both arms' latency is shown so a shock both arms share can be told from the candidate's own",
        "",
        "".join(blocks),
        "panel-outages",
    )


def render_sections(report: DeploymentReport) -> dict[str, str]:
    """The page's parts as HTML fragments, keyed by name: ``header``, ``banner``, ``cards``, ``charts``,
    ``outages`` (empty without one), ``commands``, ``diff``, ``buckets``. The report page joins them; the
    dashboard swaps them in live."""
    return {
        "header": _header(report),
        "banner": _banner(report),
        "cards": _cards(report),
        "charts": _charts(report),
        "outages": _outages_panel(report),
        "commands": _panel(
            "Control commands",
            "everything issued for this deployment, in order",
            "",
            _commands_table(report),
            "panel-commands",
        ),
        "diff": _panel(
            "Preset diff",
            f"{len(report.diff)} changed keys, last_good → candidate",
            "",
            _diff_table(report),
            "panel-diff",
        ),
        "buckets": _panel(
            "Buckets", "every finalized window of both arms", "", _buckets_table(report), "panel-buckets"
        ),
    }


def render_report(report: DeploymentReport) -> str:
    """The whole page as one string: no external resources, no JavaScript."""
    title = f"Canary {report.deployment_id} — {report.status}"
    notes = "".join(f'<p class="sub">{escape(n)}</p>' for n in report.notes)
    parts = render_sections(report)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        + parts["header"]
        + parts["banner"]
        + parts["cards"]
        + parts["charts"]
        + parts["outages"]
        + '<div class="grid2">'
        + parts["commands"]
        + parts["diff"]
        + "</div>"
        + parts["buckets"]
        + notes
        + f"<footer>generated {_utc(report.generated_at_ms)} from {escape(report.source)} · canary</footer>"
        + "</main></body></html>\n"
    )
