"""Result-diff metrics where people read them (issue #23, item 2): windows aggregate what the routers measure
whether or not a rule names it; watch, the metrics summary (metrics.json) and the report's cards — which the
dashboard shows too — give the candidate's RBO, Jaccard and first-result change against last_good."""

from __future__ import annotations

import msgspec.structs

from canary.core.models import WindowKey, WindowResult
from canary.core.slo import default_policy
from canary.ops.watch import format_window
from canary.pipeline.policies import aggregator_for_policy
from canary.reports.metrics import summarize
from canary.reports.model import build_report
from canary.reports.view import cards
from tests.core.helpers import outcome
from tests.reports.sample import build


def _window(index: int, rbo: list[float], *, changed: int = 0, n: int = 40) -> WindowResult:
    """A candidate window of ``n`` requests, ``len(rbo)`` of them compared with last_good's answer."""
    agg = aggregator_for_policy(default_policy())  # no rule names a result-diff metric
    start = index * 5000
    outcomes = []
    for i in range(n):
        o = outcome(start + i, 80.0)
        if i < len(rbo):
            metrics = {"rbo_at_10": rbo[i], "jaccard_at_10": 1.0, "top1_changed": float(i < changed)}
            o = msgspec.structs.replace(o, metrics=metrics)
        outcomes.append(o)
    state = agg.agg(agg.initialize(), outcomes)
    return agg.result(state, WindowKey("dep-1", "cand", "candidate"), start, start + 5000, (), start + 6000)


def test_windows_aggregate_the_router_measured_diff_without_a_rule() -> None:
    w = _window(0, [0.5] * 4, changed=4)
    assert w.stats is not None and set(w.stats["custom"]) == {"rbo_at_10", "jaccard_at_10", "top1_changed"}
    assert w.stats["custom"]["rbo_at_10"]["n"] == 4
    assert "custom" not in (_window(1, []).stats or {})  # no outcome carries one: the window's JSON as before


def test_watch_and_the_summary_show_it() -> None:
    assert "rbo@10=0.50 (n=4)" in format_window(_window(0, [0.5] * 4))
    assert "rbo@10" not in format_window(_window(1, []))
    summary = summarize([_window(0, [0.5] * 4, changed=4), _window(1, [1.0] * 6), _window(2, [])])
    assert summary["result_diff"] == {"rbo_at_10": 0.8, "jaccard_at_10": 1.0, "top1_changed": 0.4, "samples": 10}
    assert summarize([_window(2, [])])["result_diff"] is None


def test_the_report_card_shows_it_and_only_when_measured() -> None:
    sc = build()
    plain = cards(build_report(commands=sc.command_dicts, windows=sc.windows))
    assert not any(k["label"] == "Candidate vs last_good top 10" for k in plain)
    measured = _window(0, [0.5] * 4, changed=2)
    windows = [
        msgspec.structs.replace(w, stats=measured.stats) if w.arm == "candidate" else w for w in sc.windows
    ]  # every candidate bucket of the sample with 4 compared queries
    card = next(
        k
        for k in cards(build_report(commands=sc.command_dicts, windows=windows))
        if k["label"] == "Candidate vs last_good top 10"
    )
    assert card["value"] == "RBO 0.5"
    candidate_buckets = sum(1 for w in sc.windows if w.arm == "candidate")
    assert card["compare"] == f"Jaccard 1 · first result changed 50% · {4 * candidate_buckets} queries compared"
