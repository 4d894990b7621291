"""A self-contained HTML page for a replay post-mortem: inline SVG charts, no scripts, no external files.

Per deployment: p95 latency and recall@10 per 5 s bucket and arm, the rule thresholds (live rules solid,
backtest rules dashed), and markers at the window that triggered the rollback (replay, live, backtest).
Then the window table with verdicts and streaks, the differences to the live run, and the notes.

The charts' geometry is computed here with the chart kit (:mod:`canary.render.charts`) and drawn, like the
page, by the shared templates (``canary/render/templates/replay/page.html.j2``). Each deployment also gets
the standard report page (``canary/reports/html.py``), linked from this overview.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canary.core.models import JSONDict, iso_ms
from canary.render import css, render
from canary.render.charts import Chart, Dot, Label, Line, Path, Shape, polyline

W, H = 900, 250
ML, MR, MT, MB = 64, 190, 28, 40
COLORS = {"last_good": "#2f6fb5", "candidate": "#e07b00"}
RULE_COLOR = "#b3261e"


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
) -> Chart:
    """One line chart. ``thresholds``: (label, value, dashed); ``markers``: (label, window start, colour)."""
    values = [y for pts in series.values() for _, y in pts if y is not None] + [t[1] for t in thresholds]
    top = y_max if y_max is not None else _nice_max(max(values) * 1.08 if values else 1.0)
    x0, x1 = x_range[0], max(x_range[1], x_range[0] + window_ms)
    pw, ph = W - ML - MR, H - MT - MB

    def sx(t: int) -> float:
        return ML + (t + window_ms / 2 - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return MT + ph - min(max(v / top, 0.0), 1.0) * ph

    shapes: list[Shape] = []
    for i in range(5):
        v = top * i / 4
        y = sy(v)
        shapes.append(Line(ML, y, ML + pw, y, stroke="#eee"))
        shapes.append(Label(ML - 6, y + 4, _fmt(v, 2 if top < 5 else 0), anchor="end", size=11))
    span = x1 - x0
    ticks = max(1, min(8, span // window_ms))
    for i in range(ticks + 1):
        t = x0 + span * i // ticks
        x = ML + (t - x0) / span * pw
        shapes.append(Line(x, MT + ph, x, MT + ph + 4, stroke="#999"))
        shapes.append(Label(x, MT + ph + 16, iso_ms(t)[11:19], anchor="middle", size=10))
    shapes.append(Line(ML, MT + ph, ML + pw, MT + ph, stroke="#999"))
    legend_y = MT + 4
    for label, start, color in markers:
        x = sx(start)
        shapes.append(Line(x, MT, x, MT + ph, stroke=color, width=2, dash="2 3", title=label))
        shapes.append(Path(f"M{x - 5:.1f},{MT - 2} l5,8 l5,-8 z", fill=color))
        shapes.append(Label(ML + pw + 8, legend_y, f"▼ {label}", fill=color, size=11))
        legend_y += 15
    for label, value, dashed in thresholds:
        y = sy(value)
        shapes.append(Line(ML, y, ML + pw, y, stroke=RULE_COLOR, dash="6 4" if dashed else None))
        shapes.append(Label(ML + pw + 8, legend_y, f"{'┄' if dashed else '—'} {label}", fill=RULE_COLOR, size=11))
        legend_y += 15
    for arm, pts in series.items():
        color = COLORS.get(arm, "#555")
        d, _ = polyline(None if val is None else (sx(t), sy(val)) for t, val in sorted(pts, key=lambda p: p[0]))
        if d:
            shapes.append(Path(d, stroke=color, width=1.8))
        shapes += [
            Dot(sx(t), sy(val), 2.6, fill=color, title=f"{arm} {iso_ms(t)}: {_fmt(val, 3)}")
            for t, val in pts
            if val is not None
        ]
        shapes.append(Label(ML + pw + 8, legend_y, f"● {arm}", fill=color, size=11))
        legend_y += 15
    return Chart(W, H, shapes, title=title, heading=Label(ML, 18, title, size=13, bold=True), fluid=False)


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


def _markers(report: JSONDict, dep: JSONDict | None) -> list[tuple[str, int, str]]:
    """Where each decision on this deployment was taken: by the replay, live, and by the backtest's rules."""
    dep_id = dep["deployment_id"] if dep else None
    markers: list[tuple[str, int, str]] = []
    decision = dep.get("decision") if dep else None
    if decision:
        markers.append((f"replay rollback ({decision['rule']})", int(decision["window_start_ms"]), "#b3261e"))
    for issued in dep.get("issued", []) if dep else []:
        cmd = issued.get("command") or {}
        if cmd.get("type") not in (None, "rollback"):
            what = cmd["type"] + (f" {cmd.get('weight'):g}" if cmd["type"] == "set_weight" else "")
            markers.append((f"replay {what}", int(issued["window_start_ms"]), "#1d4ed8"))
    for lv in (report.get("live") or {}).get("decisions", []):
        start = _start_of(lv.get("triggering_window"))
        if lv["deployment_id"] == dep_id and start is not None:
            markers.append((f"live rollback ({lv.get('rule')})", start, "#6b21a8"))
    bt = report.get("backtest")
    if bt:
        for d in bt["decisions"]:
            if d["deployment_id"] == dep_id and d["type"] == "rollback":
                markers.append((f"backtest rollback ({d['rule']})", int(d["window_start_ms"]), "#0b7a75"))
    return markers


def _section(report: JSONDict, dep: JSONDict | None, windows: list[JSONDict], link: str | None = None) -> JSONDict:
    """One deployment's (or the unassigned traffic's) charts and window table as view data."""
    window_ms = int(report["settings"]["window_ms"])
    dep_id = dep["deployment_id"] if dep else None
    rules: list[JSONDict] = dep.get("rules", []) if dep else []
    bt = report.get("backtest")
    bt_rules: list[JSONDict] = bt["rules"] if bt else []
    markers = _markers(report, dep)
    starts = [int(w["window_start_ms"]) for w in windows]
    x_range = (min(starts), max(starts) + window_ms) if starts else (0, window_ms)
    charts = []
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
        title = f"{label} per {window_ms // 1000} s bucket"
        charts.append(chart(title, series, thresholds, markers, x_range, window_ms, y_max))
    judged = {j["window_id"]: j for j in report.get("judgements", [])}
    decision = dep.get("decision") if dep else None
    trigger = decision["triggering_window"] if decision else None
    rows = []
    for w in windows:
        j = judged.get(w["window_id"])
        rows.append(
            {
                "w": w,
                "decision": w["window_id"] == trigger,
                "p95": _fmt(w.get("p95_ms")),
                "recall": _fmt(w.get("recall_at_10"), 3),
                "recall_n": _recall_n(w),
                "streaks": " ".join(f"{k}={v}" for k, v in (j["streaks"] if j else {}).items()),
            }
        )
    return {
        "title": f"Deployment {dep_id}" if dep_id else "Traffic without a deployment",
        "link": link,
        "dep": dep,
        "charts": charts,
        "rows": rows,
    }


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
    windows: list[JSONDict] = report.get("windows", [])
    sections = []
    for dep in report.get("deployments", []):
        dep_windows = [w for w in windows if w.get("deployment_id") == dep["deployment_id"]]
        if dep_windows or dep.get("decision"):
            sections.append(_section(report, dep, dep_windows, links.get(dep["deployment_id"])))
    rest = [w for w in windows if not w.get("deployment_id")]
    if rest:
        sections.append(_section(report, None, rest))
    live: dict[str, Any] | None = report.get("live")
    page = render(
        "replay/page.html.j2",
        title=f"Replay {span['from']} → {span['to']}",
        summary=report.get("summary", [])[:1],
        empty=bool(report.get("empty")),
        sections=sections,
        live=live,
        differences=report.get("differences", [])[:500] if live is not None else [],
        differences_total=len(report.get("differences", [])),
        backtest=report.get("backtest"),
        notes=report.get("notes", []),
        generated_at=report.get("generated_at"),
        css=css("replay/replay.css"),
    )
    return page + "\n"
