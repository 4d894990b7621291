"""A self-contained HTML page for a replay post-mortem: inline SVG charts, no scripts, no external files.

Per deployment: p95 latency and recall@10 per 5 s bucket and arm, the rule thresholds (live rules solid,
backtest rules dashed), and markers at the window that triggered the rollback (replay, live, backtest).
Then the window table with verdicts and streaks, the differences to the live run, and the notes.

Interim renderer: ``canary/reports/html.py`` (``render_report(DeploymentReport)``) is meant to replace it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from canary.core.models import JSONDict, iso_ms

W, H = 900, 250
ML, MR, MT, MB = 64, 190, 28, 40
COLORS = {"last_good": "#2f6fb5", "candidate": "#e07b00"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;max-width:1180px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.ok{color:#137333}.bad{color:#b3261e}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f6}td.l,th.l{text-align:left}tr.decision td{background:#fde8e6}
.pass{color:#137333}.fail{color:#b3261e;font-weight:600}.inconclusive{color:#8a6d00}.error{color:#6b21a8}
code{background:#f4f4f6;padding:0 3px;border-radius:3px}svg{background:#fff;border:1px solid #eee}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for step in (1, 2, 2.5, 5, 10):
        magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.1
        top = step * magnitude
        if top >= value:
            return float(top)
    return float(value)


def chart(
    title: str,
    series: dict[str, list[tuple[int, float | None]]],
    thresholds: Sequence[tuple[str, float, bool]],
    markers: Sequence[tuple[str, int, str]],
    x_range: tuple[int, int],
    window_ms: int,
    y_max: float | None = None,
) -> str:
    """One SVG line chart. ``thresholds``: (label, value, dashed); ``markers``: (label, window start, colour)."""
    values = [y for pts in series.values() for _, y in pts if y is not None] + [t[1] for t in thresholds]
    top = y_max if y_max is not None else _nice_max(max(values) * 1.08 if values else 1.0)
    x0, x1 = x_range[0], max(x_range[1], x_range[0] + window_ms)
    pw, ph = W - ML - MR, H - MT - MB

    def sx(t: int) -> float:
        return ML + (t + window_ms / 2 - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return MT + ph - min(max(v / top, 0.0), 1.0) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
        f"<title>{_e(title)}</title>",
        f'<text x="{ML}" y="18" font-size="13" font-weight="600">{_e(title)}</text>',
    ]
    for i in range(5):
        v = top * i / 4
        y = sy(v)
        parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{ML - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_e(_fmt(v, 2 if top < 5 else 0))}</text>"
        )
    span = x1 - x0
    ticks = max(1, min(8, span // window_ms))
    for i in range(ticks + 1):
        t = x0 + span * i // ticks
        x = ML + (t - x0) / span * pw
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT + ph}" y2="{MT + ph + 4}" stroke="#999"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{MT + ph + 16}" font-size="10" text-anchor="middle">{_e(iso_ms(t)[11:19])}</text>'
        )
    parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{MT + ph}" y2="{MT + ph}" stroke="#999"/>')
    legend_y = MT + 4
    for label, start, color in markers:
        x = sx(start)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{MT + ph}" stroke="{color}" stroke-width="2" '
            f'stroke-dasharray="2 3"><title>{_e(label)}</title></line>'
        )
        parts.append(f'<path d="M{x - 5:.1f},{MT - 2} l5,8 l5,-8 z" fill="{color}"/>')
        parts.append(f'<text x="{ML + pw + 8}" y="{legend_y}" font-size="11" fill="{color}">▼ {_e(label)}</text>')
        legend_y += 15
    for label, value, dashed in thresholds:
        y = sy(value)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#b3261e"{dash}/>')
        parts.append(
            f'<text x="{ML + pw + 8}" y="{legend_y}" font-size="11" fill="#b3261e">'
            f"{'┄' if dashed else '—'} {_e(label)}</text>"
        )
        legend_y += 15
    for arm, pts in series.items():
        color = COLORS.get(arm, "#555")
        segment: list[str] = []
        segments: list[list[str]] = []
        for t, val in sorted(pts, key=lambda p: p[0]):
            if val is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{sx(t):.1f},{sy(val):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for t, val in pts:
            if val is not None:
                parts.append(
                    f'<circle cx="{sx(t):.1f}" cy="{sy(val):.1f}" r="2.6" fill="{color}">'
                    f"<title>{_e(arm)} {_e(iso_ms(t))}: {_e(_fmt(val, 3))}</title></circle>"
                )
        parts.append(f'<text x="{ML + pw + 8}" y="{legend_y}" font-size="11" fill="{color}">● {_e(arm)}</text>')
        legend_y += 15
    parts.append("</svg>")
    return "".join(parts)


def _threshold(rules: Sequence[JSONDict], metric: str) -> float | None:
    for r in rules:
        if r.get("metric") == metric:
            return float(r["threshold"])
    return None


def _start_of(window_id: str | None) -> int | None:
    if not window_id or "@" not in window_id:
        return None
    try:
        return int(window_id.rsplit("@", 1)[1])
    except ValueError:
        return None


def _section(report: JSONDict, dep: JSONDict | None, windows: list[JSONDict], link: str | None = None) -> str:
    window_ms = int(report["settings"]["window_ms"])
    dep_id = dep["deployment_id"] if dep else None
    rules: list[JSONDict] = dep.get("rules", []) if dep else []
    bt = report.get("backtest")
    bt_rules: list[JSONDict] = bt["rules"] if bt else []
    live = report.get("live") or {}
    markers: list[tuple[str, int, str]] = []
    decision = dep.get("decision") if dep else None
    if decision:
        markers.append((f"replay rollback ({decision['rule']})", int(decision["window_start_ms"]), "#b3261e"))
    for issued in dep.get("issued", []) if dep else []:
        cmd = issued.get("command") or {}
        if cmd.get("type") not in (None, "rollback"):
            what = cmd["type"] + (f" {cmd.get('weight'):g}" if cmd["type"] == "set_weight" else "")
            markers.append((f"replay {what}", int(issued["window_start_ms"]), "#1d4ed8"))
    for lv in live.get("decisions", []):
        start = _start_of(lv.get("triggering_window"))
        if lv["deployment_id"] == dep_id and start is not None:
            markers.append((f"live rollback ({lv.get('rule')})", start, "#6b21a8"))
    if bt:
        for d in bt["decisions"]:
            if d["deployment_id"] == dep_id and d["type"] == "rollback":
                markers.append((f"backtest rollback ({d['rule']})", int(d["window_start_ms"]), "#0b7a75"))
    starts = [int(w["window_start_ms"]) for w in windows]
    x_range = (min(starts), max(starts) + window_ms) if starts else (0, window_ms)
    out = []
    title = f"Deployment {dep_id}" if dep_id else "Traffic without a deployment"
    out.append(f"<h2>{_e(title)}</h2>")
    if link:
        out.append(f'<p><a href="{_e(link)}">deployment report page built from the replayed windows</a></p>')
    if dep:
        out.append(
            "<p>"
            + f"candidate <code>{_e(dep.get('candidate_config', '?'))}</code> "
            + f"vs last_good <code>{_e(dep.get('last_good_config', '?'))}</code>, "
            + f"weight {_e(dep.get('weight', '?'))}, status <b>{_e(dep.get('status', 'unknown'))}</b>"
            + (f", ended {_e(dep['ended_at'])} by {_e(dep.get('ended_by'))}" if dep.get("ended_at") else "")
            + f"<br>replay decision: <b>{_e(dep.get('decision_text'))}</b></p>"
        )
    for metric, label, y_max in (("p95_ms", "p95 latency (ms)", None), ("recall_at_10", "recall@10", 1.0)):
        series: dict[str, list[tuple[int, float | None]]] = {}
        for w in windows:
            series.setdefault(w["arm"], []).append((int(w["window_start_ms"]), w.get(metric)))
        thresholds: list[tuple[str, float, bool]] = []
        t_live = _threshold(rules, metric)
        if t_live is not None:
            thresholds.append((f"rule {t_live:g}", t_live, False))
        t_bt = _threshold(bt_rules, metric)
        if t_bt is not None and dep_id is not None:
            thresholds.append((f"backtest {t_bt:g}", t_bt, True))
        out.append(
            chart(f"{label} per {window_ms // 1000} s bucket", series, thresholds, markers, x_range, window_ms, y_max)
        )
    judged = {j["window_id"]: j for j in report.get("judgements", [])}
    trigger = decision["triggering_window"] if decision else None
    rows = []
    for w in windows:
        j = judged.get(w["window_id"])
        verdicts = " ".join(
            f'<span class="{_e(v["outcome"])}" title="{_e(v["reason"])}">{_e(v["rule"])}:{_e(v["outcome"])}</span>'
            for v in w.get("verdicts", [])
        )
        streaks = " ".join(f"{_e(k)}={v}" for k, v in (j["streaks"] if j else {}).items())
        cls = ' class="decision"' if w["window_id"] == trigger else ""
        rows.append(
            f"<tr{cls}><td class=l>{_e(w['window_start'][11:23])}</td><td class=l>{_e(w['arm'])}</td>"
            f"<td>{w['response_count']}</td><td>{w['error_count']}</td><td>{_e(_fmt(w.get('p95_ms')))}</td>"
            f"<td>{_e(_fmt(w.get('recall_at_10'), 3))}</td><td>{_recall_n(w)}</td>"
            f"<td>{w['slo_violations']}</td><td>{w['late_count']}</td><td class=l>{verdicts}</td>"
            f"<td class=l>{streaks}</td></tr>"
        )
    out.append(
        "<h3>Windows</h3><table><tr><th class=l>start (UTC)</th><th class=l>arm</th><th>n</th><th>errors</th>"
        "<th>p95 ms</th><th>recall@10</th><th>recall n</th><th>violations</th><th>late</th>"
        "<th class=l>verdicts</th><th class=l>streaks after</th></tr>" + "".join(rows) + "</table>"
    )
    return "".join(out)


def _recall_n(window: JSONDict) -> str:
    """How many recall values a window has, and how many of them came from sampled exact searches."""
    n = int(window.get("recall_samples") or 0)
    sources = (window.get("stats") or {}).get("recall_source")
    exact = sources.get("exact_sample", 0) if isinstance(sources, dict) else 0
    return f"{n} ({exact} exact)" if exact else str(n)


def render_replay_html(report: JSONDict, links: Mapping[str, str] | None = None) -> str:
    """The overview page; ``links``: deployment id → relative URL of its deployment page."""
    links = links or {}
    span = report["span"]
    title = f"Replay {span['from']} → {span['to']}"
    body: list[str] = [f"<h1>{_e(title)}</h1>"]
    body += [f'<p class="muted">{_e(line)}</p>' for line in report.get("summary", [])[:1]]
    if report.get("empty"):
        body.append('<p class="bad"><b>No traffic in this span.</b> The result is empty.</p>')
    windows: list[JSONDict] = report.get("windows", [])
    deployments: list[JSONDict] = report.get("deployments", [])
    for dep in deployments:
        dep_windows = [w for w in windows if w.get("deployment_id") == dep["deployment_id"]]
        if dep_windows or dep.get("decision"):
            body.append(_section(report, dep, dep_windows, links.get(dep["deployment_id"])))
    rest = [w for w in windows if not w.get("deployment_id")]
    if rest:
        body.append(_section(report, None, rest))
    live: dict[str, Any] | None = report.get("live")
    if live is not None:
        diffs: list[JSONDict] = report.get("differences", [])
        body.append("<h2>Replay vs live</h2>")
        body.append(
            f"<p>{live['windows_identical']} of {live['windows']} live windows identical; "
            + (
                f'<span class="bad">{len(diffs)} difference(s)</span>'
                if diffs
                else '<span class="ok">no differences</span>'
            )
            + "</p>"
        )
        if diffs:
            body.append(
                "<table><tr><th class=l>kind</th><th class=l>subject</th><th class=l>field</th><th class=l>live</th>"
                "<th class=l>replay</th><th class=l>explanation</th></tr>"
                + "".join(
                    f"<tr><td class=l>{_e(d['kind'])}</td><td class=l>{_e(d['subject'])}</td>"
                    f"<td class=l>{_e(d['field'] or '')}</td><td class=l>{_e(d['live'])}</td>"
                    f"<td class=l>{_e(d['replay'])}</td><td class=l>{_e(d['explanation'])}</td></tr>"
                    for d in diffs[:500]
                )
                + "</table>"
            )
    bt = report.get("backtest")
    if bt is not None:
        body.append(f"<h2>Backtest with rules <code>{_e(bt['rules_file'])}</code></h2><ul>")
        body += [
            f'<li class="{"bad" if c["changed"] else "muted"}">{_e(c["summary"])}'
            f" ({c['windows_with_changed_verdicts']} window(s) with other verdicts)</li>"
            for c in bt["changes"]
        ]
        body.append("</ul>")
    notes: list[str] = report.get("notes", [])
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    body.append(f'<p class="muted">generated {_e(report.get("generated_at"))} by canary replay</p>')
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
