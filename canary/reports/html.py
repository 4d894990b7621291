"""One static, offline HTML page per deployment: inline CSS, inline SVG charts, no scripts.

The page is split by job: :mod:`canary.reports.view` turns the :class:`DeploymentReport` into view data,
:mod:`canary.reports.charts` computes the charts' geometry with the chart kit (:mod:`canary.render`), and the
templates ``canary/render/templates/report/`` draw both. :func:`render_sections` gives the page's parts —
the same fragments the live dashboard (``canary.dashboard``) pushes to the browser — so the report and the
dashboard share one chart renderer.

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

from markupsafe import Markup

from canary.render import css, macros, render
from canary.render.format import fmt_ms, fmt_pct
from canary.reports import view
from canary.reports.charts import ARM_COLORS, LEFT, RIGHT, THRESHOLD_COLOR, WIDTH
from canary.reports.model import DeploymentReport

CSS = str(css("report/report.css"))


def render_sections(report: DeploymentReport) -> dict[str, str]:
    """The page's parts as HTML fragments, keyed by name: ``header``, ``banner``, ``cards``, ``charts``,
    ``outages`` (empty without one), ``commands``, ``diff``, ``buckets``. The report page joins them; the
    dashboard swaps them in live."""
    m = macros("report/sections.html.j2")
    return {
        "header": str(m.header(view.header(report))),
        "banner": str(m.banner(view.banner(report))),
        "cards": str(m.cards(view.cards(report))),
        "charts": str(m.charts(view.chart_panels(report))),
        "outages": str(m.outages(view.outages(report))),
        "commands": str(m.commands(view.commands(report))),
        "diff": str(m.diff(view.diff(report), report)),
        "buckets": str(m.buckets(report)),
    }


def render_report(report: DeploymentReport) -> str:
    """The whole page as one string: no external resources, no JavaScript."""
    parts = {k: Markup(v) for k, v in render_sections(report).items()}
    return render("report/page.html.j2", report=report, parts=parts, css=css("report/report.css")) + "\n"


__all__ = [
    "ARM_COLORS",
    "CSS",
    "LEFT",
    "RIGHT",
    "THRESHOLD_COLOR",
    "WIDTH",
    "fmt_ms",
    "fmt_pct",
    "render_report",
    "render_sections",
]
