"""A replay judges the external metrics' values the live agent recorded (issue #23, item 4), never queries
Prometheus for the past: the one loop (canary.pipeline.loop.run_loop) writes them into the candidate windows
before judging, and a window with none recorded is inconclusive for the rule (``not_recorded``)."""

from __future__ import annotations

from canary.core.custom import recorded_external, with_external
from canary.core.deployment import ControlLedger
from canary.core.models import WindowKey
from canary.core.policy import policy_from_slo_section
from canary.pipeline.loop import run_loop
from canary.pipeline.policies import PolicyBook, aggregator_for_policy
from tests.core.helpers import outcome

SECTION = {
    "p95_ms": 1200,
    "recall_at_10": 0.3,
    "metrics": [{"name": "cpu", "source": "prometheus", "query": "max(cpu)"}],
    "rules": [{"name": "cpu", "metric": "cpu", "operator": "le", "threshold": 0.8}],
}
W = 5000


def _window(i: int) -> object:
    policy = policy_from_slo_section(SECTION)
    agg = aggregator_for_policy(policy)
    start = i * W
    state = agg.agg(agg.initialize(), [outcome(start + j, 100.0) for j in range(40)])
    return agg.result(state, WindowKey("dep-1", "cand", "candidate"), start, start + W, (), start + W + 1000)


def _cpu(loop: object) -> list[tuple[str, object]]:
    judged = sorted(loop.judged.values(), key=lambda w: w.window_start_ms)  # type: ignore[attr-defined]
    return [
        (v.outcome, (w.stats or {}).get("external", {}).get("cpu"))
        for w in judged
        for v in w.verdicts
        if v.rule == "cpu"
    ]


def test_recorded_values_are_judged_again_and_missing_ones_are_inconclusive() -> None:
    policy = policy_from_slo_section(SECTION)
    book = PolicyBook(ControlLedger(), policy)
    windows = [_window(i) for i in range(4)]
    recorded = {
        windows[0].window_id: {"cpu": 0.95},
        windows[1].window_id: {"cpu": "timeout"},
        windows[2].window_id: {"cpu": 0.9},
    }  # type: ignore[attr-defined]
    loop = run_loop(windows, book, [], external=recorded)  # type: ignore[arg-type]
    assert _cpu(loop) == [
        ("fail", {"value": 0.95}),
        ("inconclusive", {"missing": "timeout"}),
        ("fail", {"value": 0.9}),
        ("inconclusive", {"missing": "not_recorded"}),
    ]
    # The point rule's streak neither grows nor breaks on the inconclusive window: two failing buckets.
    assert [d.type for d in loop.decisions] == ["rollback"]
    assert all(o == "inconclusive" for o, _ in _cpu(run_loop(windows, book, [])))  # type: ignore[arg-type]


def test_what_the_live_agent_wrote_reads_back() -> None:
    from canary.core.custom import CustomMetric

    cpu = CustomMetric("cpu", "mean", 0, 1, "", "prometheus", "max(cpu)")
    stats = with_external({}, {"cpu": 0.5}, [cpu])
    assert recorded_external(stats) == {"cpu": 0.5}
    assert recorded_external(with_external({}, {"cpu": "error"}, [cpu])) == {"cpu": "error"}
    assert recorded_external({"external": {"cpu": {"value": True}, 3: {}, "x": "y"}}) == {}
