"""Writing a replay post-mortem: ``<dir>/replay-<from>-<to>[-<deployment>].json`` and ``.html``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from canary.core.models import JSONDict
from canary.errors import ConfigError
from canary.replay.html import render_replay_html


def report_stem(report: JSONDict) -> str:
    span = report["span"]

    def compact(iso: str) -> str:
        return re.sub(r"[^0-9TZ]", "", iso)

    stem = f"replay-{compact(span['from'])}-{compact(span['to'])}"
    if report.get("deployment_filter"):
        stem += "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(report["deployment_filter"]))
    if report.get("backtest") is not None:
        stem += "-backtest"
    return stem


def write_report(report: JSONDict, directory: Path) -> tuple[Path, Path]:
    """Write the JSON and HTML post-mortem atomically; returns their paths."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {directory}: cannot create directory: {exc.strerror or exc}") from None
    stem = report_stem(report)
    json_path = directory / f"{stem}.json"
    html_path = directory / f"{stem}.html"
    for path, text in (
        (json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"),
        (html_path, render_replay_html(report)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            raise ConfigError(f"--output {directory}: cannot write {path.name}: {exc.strerror or exc}") from None
    return json_path, html_path
