"""The static HTML report: parsed, not eyeballed — charts, thresholds, markers, verdicts, diff, safety."""

from __future__ import annotations

import dataclasses
import re

import msgspec.structs
import pytest

from canary.reports.html import render_report
from canary.reports.model import DeploymentReport, build_report
from tests.reports.dom import Node, parse, path_vertices, select
from tests.reports.sample import CANDIDATE_P95, LAST_GOOD_P95, build, command, window

T0 = 1_700_000_000_000


def _rendered(report: DeploymentReport) -> Node:
    return parse(render_report(report))


@pytest.fixture
def rolled_back() -> DeploymentReport:
    sc = build(T0, "canary_1")
    return build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 600_000)


SERIES = [
    ("chart-p95", "candidate", len(CANDIDATE_P95)),
    ("chart-p95", "last_good", len(LAST_GOOD_P95)),
    ("chart-recall", "candidate", len(CANDIDATE_P95)),
    ("chart-recall", "last_good", len(LAST_GOOD_P95)),
]


@pytest.mark.parametrize(("chart", "arm", "points"), SERIES)
def test_series_have_one_vertex_and_one_dot_per_bucket(
    rolled_back: DeploymentReport, chart: str, arm: str, points: int
) -> None:
    dom = _rendered(rolled_back)
    (path,) = select(dom, f"svg.{chart} path.series-{arm}")
    vertices = path_vertices(path.attrs["d"])
    assert len(vertices) == points == int(path.attrs["data-points"])
    xs = [x for x, _ in vertices]
    assert xs == sorted(xs) and len(set(xs)) == points  # left to right, one per bucket
    assert len(select(dom, f"svg.{chart} circle.point-{arm}")) == points
    assert all(0 <= y <= 270 for _, y in vertices)


def test_p95_line_goes_up_where_latency_goes_up(rolled_back: DeploymentReport) -> None:
    dom = _rendered(rolled_back)
    (path,) = select(dom, "svg.chart-p95 path.series-candidate")
    ys = [y for _, y in path_vertices(path.attrs["d"])]
    # SVG y grows downwards: higher latency, smaller y
    assert ys.index(min(ys)) == CANDIDATE_P95.index(max(CANDIDATE_P95))
    (threshold,) = select(dom, "svg.chart-p95 line.threshold")
    assert float(threshold.attrs["data-value"]) == 1200
    assert sum(1 for y in ys if y < float(threshold.attrs["y1"])) == sum(1 for v in CANDIDATE_P95 if v > 1200)


def test_thresholds_rollback_marker_and_evidence(rolled_back: DeploymentReport) -> None:
    dom = _rendered(rolled_back)
    assert [t.attrs["data-value"] for t in select(dom, "svg.chart-recall line.threshold")] == ["0.3"]
    for chart in ("chart-p95", "chart-recall", "chart-traffic", "verdict-strip"):
        (marker,) = select(dom, f"svg.{chart} g.rollback-marker")
        assert marker.attrs["data-at-ms"] == str(rolled_back.end_ms)
    (label,) = select(dom, "svg.chart-p95 g.rollback-marker text.marker-label")
    assert "SLO violation: p95_ms failed for 2 consecutive buckets" in label.all_text()
    # the marker sits right of the last failing bucket's dot
    (line,) = select(dom, "svg.chart-p95 g.rollback-marker line")
    (path,) = select(dom, "svg.chart-p95 path.series-candidate")
    assert float(line.attrs["x1"]) > path_vertices(path.attrs["d"])[-1][0]
    assert len(select(dom, "svg.chart-p95 rect.evidence-band")) == 2
    assert len(select(dom, "svg.chart-p95 circle.point-fail")) == 3


def test_verdict_strip_has_a_cell_per_rule_and_bucket(rolled_back: DeploymentReport) -> None:
    dom = _rendered(rolled_back)
    cells = select(dom, "svg.verdict-strip rect.verdict")
    assert len(cells) == 3 * len(CANDIDATE_P95)  # p95_ms, recall_at_10, error_rate
    by_rule = {rule: [c for c in cells if c.attrs["data-rule"] == rule] for rule in ("p95_ms", "recall_at_10")}
    outcomes = [next(k for k in c.classes if k.startswith("verdict-")) for c in by_rule["p95_ms"]]
    assert outcomes == ["verdict-inconclusive"] + [
        "verdict-fail" if p > 1200 else "verdict-pass" for p in CANDIDATE_P95[1:]
    ]
    assert {c.attrs["fill"] for c in cells if "verdict-fail" in c.classes} == {"#ef4444"}


def test_traffic_chart_steps_through_the_weight_changes(rolled_back: DeploymentReport) -> None:
    dom = _rendered(rolled_back)
    (path,) = select(dom, "svg.chart-traffic path.series-weight")
    assert path.attrs["data-points"] == "3"
    causes = [g.attrs["data-cause"] for g in select(dom, "svg.chart-traffic g.weight-change")]
    assert causes == ["start", "set_weight", "rollback"]
    assert len(select(dom, "svg.chart-traffic circle.point-observed")) == len(CANDIDATE_P95)


def test_summary_header_and_diff_table(rolled_back: DeploymentReport) -> None:
    dom = _rendered(rolled_back)
    (status,) = select(dom, "div.status")
    assert "status-rolled_back" in status.classes and status.all_text() == "Rolled back"
    assert select(dom, "h1.deployment-id")[0].all_text() == "canary_1"
    (banner,) = select(dom, "div.banner")
    assert "SLO violation: p95_ms failed for 2 consecutive buckets" in banner.all_text()
    rows = {r.attrs["data-key"]: r for r in select(dom, "table.preset-diff tr.diff-row")}
    assert "derived_params.ef" in rows and "reranker.model" not in rows
    assert "64" in rows["derived_params.ef"].all_text() and "1024" in rows["derived_params.ef"].all_text()
    assert [c.attrs["class"].split()[1] for c in select(dom, "table.commands tr.command")] == [
        "command-start",
        "command-set_weight",
        "command-rollback",
    ]


def test_page_is_self_contained_and_escapes_text(rolled_back: DeploymentReport) -> None:
    evil = '<script>alert("x")</script> & "quotes"'
    dep = dataclasses.replace(rolled_back.deployment, reason=evil)
    html = render_report(dataclasses.replace(rolled_back, deployment=dep))
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "@import" not in html and "url(" not in html


def test_error_rate_chart_plots_errors_per_bucket_against_the_rule(rolled_back: DeploymentReport) -> None:
    errored = [
        msgspec.structs.replace(w, error_count=-(-w.response_count // 10)) for w in rolled_back.candidate_windows
    ]
    dom = _rendered(dataclasses.replace(rolled_back, candidate_windows=tuple(errored)))
    (threshold,) = select(dom, "svg.chart-errors line.threshold")
    assert float(threshold.attrs["data-value"]) == 0.01  # the default error_rate rule
    (path,) = select(dom, "svg.chart-errors path.series-candidate")
    ys = [y for _, y in path_vertices(path.attrs["d"])]
    with_traffic = sum(1 for w in errored if w.response_count)
    assert len(ys) == with_traffic and all(y < float(threshold.attrs["y1"]) for y in ys)  # ≥ 10 % errors > 1 %
    (lg_path,) = select(dom, "svg.chart-errors path.series-last_good")
    assert all(y > float(threshold.attrs["y1"]) for _, y in path_vertices(lg_path.attrs["d"]))  # 0 % errors


def test_running_deployment_without_windows_still_renders() -> None:
    sc = build(T0, "canary_1")
    report = build_report(commands=sc.command_dicts[:1], windows=[], now_ms=T0 + 30_000)
    dom = _rendered(report)
    assert select(dom, "div.status")[0].all_text() == "Running"
    assert not select(dom, "path.series-candidate") and not select(dom, "g.end-marker")
    assert len(select(dom, "text.no-data")) >= 3
    assert len(select(dom, "line.threshold")) == 3  # p95, recall, error rate: the SLO is known before any data


def test_empty_bucket_breaks_the_line() -> None:
    sc = build(T0, "canary_1")
    ws = [
        window("canary_1", "candidate_slow", "candidate", T0 + i * 5000, p95=700.0 + i, count=0 if i == 2 else 30)
        for i in range(5)
    ]
    dom = _rendered(build_report(commands=sc.command_dicts[:1], windows=ws, now_ms=T0 + 30_000))
    (path,) = select(dom, "svg.chart-p95 path.series-candidate")
    assert path.attrs["data-points"] == "4" and path.attrs["d"].count("M") == 2


@pytest.mark.parametrize(
    ("kind", "marker", "status"), [("promote", "promote-marker", "Promoted"), ("abort", "abort-marker", "Aborted")]
)
def test_other_endings_get_their_own_marker(kind: str, marker: str, status: str) -> None:
    sc = build(T0, "canary_1")
    end = command(kind, "canary_1", T0 + 40_000, reason="looks good" if kind == "promote" else "operator abort")
    dom = _rendered(build_report(commands=[*sc.command_dicts[:2], end.to_dict()], windows=sc.windows))
    assert select(dom, f"svg.chart-p95 g.{marker}") and not select(dom, "g.rollback-marker")
    assert select(dom, "div.status")[0].all_text() == status


@pytest.mark.parametrize(
    "windows",
    [
        ["dep|cand|candidate@1700000000000", "dep|cand|candidate@1700000005000"],  # a rollout step's citation
        7,  # anything: the evidence is the issuer's
        [None, 3, {"window_id": "w"}],
    ],
)
def test_a_commands_cited_windows_of_any_shape_render(windows: object) -> None:
    """A rollout step cites its counted windows by id (strings), not as the rollback's window objects: the
    report of a progressive canary (and a replay's deployment page) crashed on them."""
    sc = build(T0, "canary_1")
    cmds = [*sc.command_dicts]
    cmds[1] = {**cmds[1], "evidence": {"rollout_step": 0, "windows": windows, "window_ms": 5000}}
    page = render_report(build_report(commands=cmds, windows=sc.windows, now_ms=T0 + 600_000))
    assert page.startswith("<!DOCTYPE html>")
    if isinstance(windows, list) and isinstance(windows[0], str):
        assert "counted window dep|cand|candidate@1700000000000" in page
