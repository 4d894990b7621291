"""Writing a replay post-mortem into a directory.

* ``<stem>.json`` — the post-mortem document (:func:`canary.replay.postmortem.run_replay`)
* ``<stem>.html`` — the replay overview (:mod:`canary.replay.html`): per deployment p95 / recall per bucket
  and arm with live and backtest thresholds, the replay / live / backtest rollback markers, the window
  table with streaks, the differences to live and the backtest changes
* ``<stem>-<deployment>.html`` — the standard deployment page (:func:`canary.reports.html.render_report`)
  built from the *recomputed* windows (``source = "replay"``), one per deployment in the span
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from canary.core.models import JSONDict, WindowResult
from canary.errors import CanaryError, ConfigError
from canary.replay.html import render_replay_html


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def report_stem(report: JSONDict) -> str:
    span = report["span"]

    def compact(iso: str) -> str:
        return re.sub(r"[^0-9TZ]", "", iso)

    stem = f"replay-{compact(span['from'])}-{compact(span['to'])}"
    if report.get("deployment_filter"):
        stem += "-" + _safe(str(report["deployment_filter"]))
    if report.get("backtest") is not None:
        stem += "-backtest"
    return stem


def deployment_pages(report: JSONDict) -> dict[str, str]:
    """deployment id → the standard report page built from the replayed windows."""
    from canary.reports.html import render_report
    from canary.reports.model import build_report

    windows = [WindowResult.from_dict(w) for w in report["windows"]]
    live_by_dep = {d["deployment_id"]: d for d in (report.get("live") or {}).get("decisions", [])}
    changes = {c["deployment_id"]: c for c in (report.get("backtest") or {}).get("changes", [])}
    diffs = report.get("differences", [])
    pages: dict[str, str] = {}
    for dep in report["deployments"]:
        dep_id = dep["deployment_id"]
        if not dep.get("commands"):
            continue
        try:
            page = build_report(
                deployment_id=dep_id,
                commands=dep["commands"],
                command_times=dep.get("command_times"),
                windows=windows,
                source="replay",
            )
        except CanaryError:
            continue
        span = report["span"]
        notes = [
            f"Replay {span['from']} → {span['to']}: windows recomputed from search_results with the live worker's "
            f"code. Replay decision: {dep['decision_text']}.",
        ]
        if report.get("live") is not None:
            lv = live_by_dep.get(dep_id)
            mine = [d for d in diffs if d["subject"] == dep_id or str(d["subject"]).startswith(f"{dep_id}|")]
            notes.append(
                "Live: "
                + (f"rollback at {lv['triggering_window']} ({lv['rule']})" if lv else "no rollback")
                + f"; {len(mine)} difference(s) between replay and live"
                + (" (see the replay overview)." if mine else ".")
            )
        if dep_id in changes:
            notes.append(f"Backtest: {changes[dep_id]['summary']}")
        notes += [n for n in report.get("notes", []) if dep_id in n]
        pages[dep_id] = render_report(replace(page, notes=page.notes + tuple(notes)))
    return pages


def write_report(report: JSONDict, directory: Path) -> tuple[Path, Path]:
    """Write the post-mortem (JSON, overview HTML, one page per deployment); returns (json, overview).
    Every file written is listed in ``report["report_files"]``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {directory}: cannot create directory: {exc.strerror or exc}") from None
    stem = report_stem(report)
    json_path = directory / f"{stem}.json"
    html_path = directory / f"{stem}.html"
    page_html = deployment_pages(report)
    pages = {dep: directory / f"{stem}-{_safe(dep)}.html" for dep in page_html}
    report["report_files"] = {
        "json": str(json_path),
        "html": str(html_path),
        "deployment_pages": {dep: str(path) for dep, path in pages.items()},
    }
    files = [
        (json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"),
        (html_path, render_replay_html(report, {dep: path.name for dep, path in pages.items()})),
    ]
    files += [(path, page_html[dep]) for dep, path in pages.items()]
    for path, text in files:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            raise ConfigError(f"--output {directory}: cannot write {path.name}: {exc.strerror or exc}") from None
    return json_path, html_path
