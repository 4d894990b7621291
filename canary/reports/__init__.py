"""Reports: renderers of a deployment from plain data (control commands + window results).

- :mod:`canary.reports.model` — :class:`DeploymentReport` and :func:`build_report`
- :mod:`canary.reports.files` — ``canary_result.json``, ``metrics.json``, ``audit.log`` in the spec's shapes
- :mod:`canary.reports.html` — :func:`render_report`: one static offline HTML page with SVG charts;
  :func:`render_sections`: its fragments, which the live dashboard reuses. Split by job: view data
  (:mod:`canary.reports.view`), chart geometry (:mod:`canary.reports.charts`), templates and the chart kit
  (:mod:`canary.render`)
- :mod:`canary.reports.metrics` — the spec's :class:`MetricsCollector`
- :mod:`canary.reports.export` — the one module that reads Kafka: ``export_reports(settings, output)``
"""

from canary.reports.files import (
    canary_result,
    export_all,
    metrics_export,
    read_audit_file,
    rebuild_audit,
)
from canary.reports.html import render_report, render_sections
from canary.reports.metrics import MetricsCollector, summarize
from canary.reports.model import (
    CommandEntry,
    DeploymentReport,
    DiffEntry,
    WeightPoint,
    build_report,
    diff_snapshots,
    flatten,
    select_deployment,
)

__all__ = [
    "CommandEntry",
    "DeploymentReport",
    "DiffEntry",
    "MetricsCollector",
    "WeightPoint",
    "build_report",
    "canary_result",
    "diff_snapshots",
    "export_all",
    "flatten",
    "metrics_export",
    "read_audit_file",
    "rebuild_audit",
    "render_report",
    "render_sections",
    "select_deployment",
    "summarize",
]
