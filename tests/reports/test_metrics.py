"""The spec's MetricsCollector.get_summary_stats over window results."""

from __future__ import annotations

from typing import Any

import pytest

from canary.reports.metrics import MetricsCollector, summarize
from tests.reports.sample import window

T0 = 1_700_000_000_000


def _w(i: int, p95: float | None, n: int, recall: float | None = 0.4, config: str = "cand", **kw: Any) -> Any:
    return window("d", config, "candidate", T0 + i * 5000, p95=p95, count=n, recall=recall, **kw)


SUMMARY_CASES: list[tuple[str, list[Any], dict[str, Any]]] = [
    (
        "no windows: no data is None, not 0",
        [],
        {"avg_p95_ms": None, "avg_recall_at_10": None, "total_requests": 0, "total_slo_violations": 0, "buckets": 0},
    ),
    (
        "p95 is the mean of the buckets' p95",
        [_w(0, 1000.0, 10, violations=1), _w(1, 2000.0, 30, violations=4)],
        {"avg_p95_ms": 1500.0, "total_requests": 40, "total_slo_violations": 5, "buckets": 2},
    ),
    (
        "recall is weighted by labeled samples",
        [_w(0, 100.0, 10, recall=0.2), _w(1, 100.0, 30, recall=0.6)],
        {"avg_recall_at_10": 0.5},
    ),
    (
        "empty buckets count as buckets but add no p95",
        [_w(0, 800.0, 20), _w(1, None, 0)],
        {"avg_p95_ms": 800.0, "buckets": 2, "total_requests": 20},
    ),
    ("unlabeled buckets add no recall", [_w(0, 800.0, 20, recall=None)], {"avg_recall_at_10": None}),
]


@pytest.mark.parametrize(("name", "windows", "expected"), SUMMARY_CASES, ids=[c[0] for c in SUMMARY_CASES])
def test_summarize(name: str, windows: list[Any], expected: dict[str, Any]) -> None:
    stats = summarize(windows)
    assert {k: stats[k] for k in expected} == expected


def test_get_summary_stats_by_config_and_time_window() -> None:
    ws = [_w(i, 100.0 * (i + 1), 10) for i in range(12)] + [_w(0, 5.0, 99, config="other")]
    collector = MetricsCollector(ws)
    assert collector.config_names() == ["cand", "other"]
    all_time = collector.get_summary_stats("cand")
    assert all_time["buckets"] == 12 and all_time["total_requests"] == 120
    assert all_time["avg_p95_ms"] == pytest.approx(650.0)
    assert set(all_time) >= {"avg_p95_ms", "avg_recall_at_10", "total_slo_violations", "total_requests", "buckets"}
    # The last 10 s before the end of bucket 11: buckets 10 and 11 end inside it.
    now = T0 + 12 * 5000
    recent = collector.get_summary_stats("cand", window_minutes=10 / 60, now_ms=now)
    assert recent["buckets"] == 2 and recent["avg_p95_ms"] == pytest.approx(1150.0)
    assert collector.get_summary_stats("cand", window_minutes=1, now_ms=now + 3_600_000)["buckets"] == 0


def test_redelivered_windows_count_once() -> None:
    w = _w(0, 900.0, 25)
    assert MetricsCollector([w, w]).get_summary_stats("cand")["total_requests"] == 25


def test_per_deployment_splits_deployments_and_arms_and_counts_failed_buckets_until_the_end() -> None:
    from tests.reports.sample import build_with_aftermath

    a, b = build_with_aftermath(T0, "dep-a"), build_with_aftermath(T0 + 600_000, "dep-b")
    collector = MetricsCollector(a.windows + b.windows)
    ends = {"dep-a": a.rollback.issued_at_ms, "dep-b": b.rollback.issued_at_ms}
    rows = collector.per_deployment("candidate_slow", ends=ends, now_ms=T0 + 900_000)
    assert [(r["deployment_id"], r["arm"]) for r in rows] == [("dep-a", "candidate"), ("dep-b", "candidate")]
    # Each deployment's own figures: 3 of 10 judged buckets failed until its rollback; the in-flight bucket
    # after it (judged failing by the judge) and the empty ones are not judged buckets of the decision.
    assert [(r["failed_buckets"], r["judged_buckets"], r["buckets_after_end"]) for r in rows] == [(3, 10, 4)] * 2
    (lg,) = collector.per_deployment("last_good", deployment_id="dep-b", ends=ends)
    assert (lg["arm"], lg["failed_buckets"], lg["judged_buckets"]) == ("last_good", None, 0)
    # Pooled (the spec's API) still pools both deployments.
    assert collector.get_summary_stats("candidate_slow")["deployments"] == ["dep-a", "dep-b"]
