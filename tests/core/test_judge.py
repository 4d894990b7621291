"""The judge, table-driven on literal requests: windows are built by the real aggregator from literal
latencies, errors and recall labels, then judged like the SLO agent judges them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from canary.core.judge import DeploymentJudge, Judge, Judgement
from canary.core.models import Arm, WindowKey, WindowResult
from canary.core.slo import SLOPolicy, SLORule, default_policy, policy_from_slo_section
from canary.errors import InvalidEvent
from canary.pipeline.policies import aggregator_for_policy
from tests.core.helpers import outcome

T = 1200.0
FAST, SLOW = 400.0, 2500.0


def requests(n: int, *, slow: int = 0, errors: int = 0, recall: float | None = 0.5) -> list[dict[str, Any]]:
    """``n`` requests: ``slow`` of them slower than T, ``errors`` of them fast (3 ms) errors."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i < errors:
            out.append({"latency": 3.0, "error": "backend_error", "recall": 0.0 if recall is not None else None})
        elif i < errors + slow:
            out.append({"latency": SLOW, "recall": recall})
        else:
            out.append({"latency": FAST, "recall": recall})
    return out


def make_window(
    index: int,
    reqs: Sequence[dict[str, Any]],
    *,
    arm: Arm = "candidate",
    policy: SLOPolicy | None = None,
    dep: str = "dep-1",
) -> WindowResult:
    agg = aggregator_for_policy(policy or default_policy())
    start = index * 5000
    outcomes = [
        outcome(
            start + i,
            r["latency"],
            arm=arm,
            deployment_id=dep,
            config_name="cand" if arm == "candidate" else "lg",
            recall_at_10=r.get("recall"),
            error=r.get("error"),
        )
        for i, r in enumerate(reqs)
    ]
    state = agg.agg(agg.initialize(), outcomes)
    key = WindowKey(dep, "cand" if arm == "candidate" else "lg", arm)
    return agg.result(state, key, start, start + 5000, (), start + 6000)


def run(policy: SLOPolicy, windows: Sequence[Sequence[dict[str, Any]]]) -> list[Judgement]:
    judge = DeploymentJudge("dep-1", policy)
    out: list[Judgement] = []
    for i, reqs in enumerate(windows):
        out += judge.observe(make_window(i, reqs, policy=policy), i * 5000 + 6000)
    return out


def outcomes_of(js: list[Judgement], rule: str) -> str:
    letters = {"pass": "P", "fail": "F", "inconclusive": "i", "error": "E"}
    return "".join(letters[next(v.outcome for v in j.window.verdicts if v.rule == rule)] for j in js)


def decided(js: list[Judgement]) -> list[tuple[int, str, str]]:
    return [(i, j.decision.type, j.decision.reason) for i, j in enumerate(js) if j.decision is not None]


P95_ONLY = SLOPolicy((SLORule("p95_ms", "p95_ms", "le", T),), inconclusive_limit=0)
ROLLBACK_P95 = "SLO violation: p95_ms failed for 2 consecutive buckets"


@pytest.mark.parametrize(
    ("windows", "p95_outcomes", "decisions"),
    [
        # 10 of 30 slower than T: significant at once (8 of 30 are needed at 99 %); rollback at window 2.
        ([requests(30, slow=10)] * 3, "FFF", [(1, "rollback", ROLLBACK_P95)]),
        # 7 of 30 is not yet significant; pooled with the next window it is.
        ([requests(30, slow=7)] * 3, "iFF", [(2, "rollback", ROLLBACK_P95)]),
        # 1 of 30 (3.3 %, inside the 5 % a p95 allows): never fails; proving it holds takes 63 windows.
        ([requests(30, slow=1)] * 8, "iiiiiiii", []),
        # Every request fast: passes after 108 requests (ln 100 / -ln 0.95 = 90, plus the mixture's cost).
        ([requests(30)] * 6, "iiiPPP", []),
        # A quiet window (no requests) neither extends nor resets the streak.
        ([requests(30, slow=10), [], requests(30, slow=10)], "FiF", [(2, "rollback", ROLLBACK_P95)]),
        # 3 requests, all slower than T: three samples already give significant evidence.
        ([requests(3, slow=3)] * 2, "FF", [(1, "rollback", ROLLBACK_P95)]),
    ],
)
def test_sequential_p95(windows: list[list[dict[str, Any]]], p95_outcomes: str, decisions: list[Any]) -> None:
    js = run(P95_ONLY, windows)
    assert outcomes_of(js, "p95_ms") == p95_outcomes
    assert decided(js) == decisions


def test_one_bad_window_then_healthy_ones_is_no_rollback() -> None:
    # 10 of 30 slow is significant on its own; pooled with a healthy window, 10 of 60 is not (log e 3.4 of
    # 4.6): the pooled evidence fades, the window is inconclusive and the streak resets.
    js = run(P95_ONLY, [requests(30, slow=10), *[requests(30)] * 6])
    assert outcomes_of(js, "p95_ms") == "Fiiiiii"
    assert [j.streaks["p95_ms"] for j in js[:2]] == [1, 0]
    assert decided(js) == []


def test_a_failing_bucket_must_break_the_rule_itself() -> None:
    # Every request slow in one window: the pooled evidence stays significant for many windows, but a
    # healthy window is not a failing bucket, so the spec's "2 consecutive failing buckets" is not met.
    js = run(P95_ONLY, [requests(30, slow=30), *[requests(30)] * 4])
    assert outcomes_of(js, "p95_ms") == "Fiiii"
    assert "this window does not break it (window_rate=0.0000)" in js[1].window.verdicts[0].reason
    assert js[1].window.verdicts[0].evidence["log_e_fail"] > js[1].window.verdicts[0].evidence["log_e_needed"]
    assert decided(js) == []


def test_errors_are_never_flattering() -> None:
    policy = default_policy()
    # Every request fails fast (3 ms): latency, recall and the error rate all fail; the rollback names
    # the rule with the strongest evidence.
    js = run(policy, [requests(30, errors=30)] * 2)
    assert [v.outcome for v in js[0].window.verdicts] == ["fail", "fail", "fail"]
    assert decided(js) == [(1, "rollback", "SLO violation: error_rate failed for 2 consecutive buckets")]
    # 30 % fast errors with slow-ish successes: the reported p95 is at least the successes-only p95.
    mixed = make_window(0, requests(30, errors=9, slow=0))
    ok_only = make_window(0, requests(21))
    assert mixed.p95_ms is not None and ok_only.p95_ms is not None
    assert mixed.p95_ms >= ok_only.p95_ms
    assert mixed.recall_at_10 is not None and mixed.recall_at_10 < 0.5  # labeled errors count as recall 0


def test_baseline_error_rate_is_not_a_failure() -> None:
    # 0.5 % errors against a 1 % rule: never fails over a long canary.
    windows = [requests(30, errors=1 if i % 7 == 0 else 0) for i in range(120)]
    js = run(default_policy(), windows)
    assert "F" not in outcomes_of(js, "error_rate")
    assert decided(js) == []


@pytest.mark.parametrize(
    ("recall", "expected"),
    [(0.10, "F"), (0.45, "P")],
)
def test_recall_rule(recall: float, expected: str) -> None:
    policy = SLOPolicy((SLORule("recall_at_10", "recall_at_10", "ge", 0.30),), inconclusive_limit=0)
    js = run(policy, [requests(30, recall=recall)] * 3)
    assert outcomes_of(js, "recall_at_10")[-1] == expected
    e = js[-1].window.verdicts[0].evidence
    assert e is not None and e["n"] == 90 and e["mean"] == pytest.approx(recall)
    assert e["mean_lower_bound" if expected == "P" else "mean_upper_bound"] is not None


def test_unlabeled_traffic_leaves_recall_inconclusive_not_failing() -> None:
    js = run(default_policy(), [requests(30, recall=None)] * 3)
    assert outcomes_of(js, "recall_at_10") == "iii"
    assert "no recall samples yet" in js[0].window.verdicts[1].reason


def test_low_traffic_healthy_is_paused_broken_is_rolled_back() -> None:
    policy = default_policy()  # inconclusive_limit 12, min_samples 20
    healthy = run(policy, [requests(3)] * 14)
    assert decided(healthy) == [(11, "pause", "insufficient data: 12 windows, 3 samples per window")]
    assert healthy[11].decision is not None
    assert healthy[11].decision.command_id == "pause-insufficient-dep-1-55000"
    assert healthy[10].insufficient_windows == 11 and healthy[12].insufficient_windows == 1
    broken = run(policy, [requests(3, slow=3)] * 14)
    assert decided(broken)[0][:2] == (1, "rollback")
    assert all(d[1] != "pause" for d in decided(broken))


def test_relative_rule_rolls_back_a_candidate_60_percent_slower_inside_the_absolute_slo() -> None:
    policy = policy_from_slo_section(
        {
            "p95_ms": 1200,
            "rules": [
                {
                    "name": "p95_vs_last_good",
                    "metric": "p95_ms",
                    "operator": "le",
                    "threshold": 1.2,
                    "relative_to": "last_good",
                }
            ],
        }
    )
    judge = DeploymentJudge("dep-1", policy)
    base = [{"latency": 300.0 + i, "recall": 0.5} for i in range(270)]
    cand = [{"latency": 1.6 * (300.0 + 9 * i), "recall": 0.5} for i in range(30)]  # 1.6 x, inside 1200 ms
    out: list[Judgement] = []
    for i in range(4):
        # The candidate's window arrives first: it waits for last_good's window of the same slot.
        assert judge.observe(make_window(i, cand, policy=policy), i * 5000 + 6000) == []
        out += judge.observe(make_window(i, base, arm="last_good", policy=policy), i * 5000 + 6010)
    assert [v.outcome for v in out[0].window.verdicts if v.rule == "p95_ms"] in (["inconclusive"], ["pass"])
    assert outcomes_of(out, "p95_vs_last_good")[:2] == "FF"
    assert decided(out)[0][:2] == (1, "rollback")
    e = out[1].window.verdicts[-1].evidence
    assert e is not None and e["baseline_n"] == 540 and e["baseline_quantile_ms"] == pytest.approx(556, rel=0.01)


def test_relative_rule_without_baseline_data_is_inconclusive_with_reason_and_waits_then_times_out() -> None:
    policy = SLOPolicy((SLORule("lat_rel", "p95_ms", "le", 1.2, relative_to="last_good"),), inconclusive_limit=0)
    judge = Judge(lambda _d: policy, baseline_wait_ms=2000)
    assert judge.observe(make_window(0, requests(30), policy=policy), 6000) == []
    assert judge.tick(7000) == []  # still waiting for last_good's window
    (j,) = judge.tick(8000)
    assert j.window.verdicts[0].outcome == "inconclusive"
    assert "last_good has no data yet" in j.window.verdicts[0].reason


def test_point_method_keeps_the_original_rule() -> None:
    policy = SLOPolicy((SLORule("p95_ms", "p95_ms", "le", T, method="point"),), inconclusive_limit=0)
    # point: 2 slow of 30 make the window's p95 > T (the second-largest sample) → fail, fail.
    js = run(policy, [requests(30, slow=2)] * 2)
    assert outcomes_of(js, "p95_ms") == "FF"
    assert decided(js) == [(1, "rollback", ROLLBACK_P95)]
    # too few samples: inconclusive, and (as before) it does not reset the streak
    js = run(policy, [requests(30, slow=5), requests(5, slow=5), requests(30, slow=5)])
    assert outcomes_of(js, "p95_ms") == "FiF" and decided(js)[0][0] == 2
    assert js[0].window.verdicts[0].evidence == {"method": "point", "n": 30, "threshold": T}


def test_redelivery_restore_and_exactly_once() -> None:
    policy = P95_ONLY
    judge = DeploymentJudge("dep-1", policy)
    w0 = make_window(0, requests(30, slow=10), policy=policy)
    assert len(judge.observe(w0, 6000)) == 1
    assert judge.observe(w0, 6100) == []  # a redelivery
    restored = DeploymentJudge.from_dict(json.loads(json.dumps(judge.to_dict())))
    assert restored.observe(w0, 6200) == []
    (j1,) = restored.observe(make_window(1, requests(30, slow=10), policy=policy), 11000)
    assert j1.decision is not None and j1.decision.command_id == "rollback-dep-1"
    assert [e["window_id"] for e in j1.decision.evidence["windows"]] == [w0.window_id, j1.window.window_id]
    again = DeploymentJudge.from_dict(json.loads(json.dumps(restored.to_dict())))
    (j2,) = again.observe(make_window(2, requests(30, slow=10), policy=policy), 16000)
    assert j2.decision is None  # already rolled back before the restart
    with pytest.raises(InvalidEvent, match="DeploymentJudge"):
        DeploymentJudge.from_dict({"deployment_id": "x"})


def test_judgement_round_trip_and_evidence_fields() -> None:
    (j,) = run(P95_ONLY, [requests(30, slow=10)])
    again = Judgement.from_dict(json.loads(json.dumps(j.to_dict())))
    assert again == j
    e = j.window.verdicts[0].evidence
    assert e is not None
    assert (e["method"], e["n"], e["exceedances"], e["confidence"]) == ("sequential", 30, 10, 0.99)
    assert 0.05 < e["rate_lower_bound"] < 10 / 30
    assert "exceedances=10/30" in j.window.verdicts[0].reason


def test_deployments_are_independent_and_last_good_windows_are_not_judged() -> None:
    judge = Judge(lambda _d: P95_ONLY)
    assert judge.observe(make_window(0, requests(30, slow=10), arm="last_good"), 6000) == []
    a = judge.observe(make_window(0, requests(30, slow=10), dep="a"), 6000)
    b = judge.observe(make_window(0, requests(30), dep="b"), 6000)
    assert a[0].streaks == {"p95_ms": 1} and b[0].streaks == {"p95_ms": 0}
