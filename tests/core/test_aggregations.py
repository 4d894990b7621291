from __future__ import annotations

import json

import numpy as np
import pytest

from canary.core.aggregations import WindowAggregate, WindowAggregator
from canary.core.models import SearchOutcome, WindowKey
from canary.errors import InvalidEvent
from tests.core.helpers import outcome

KEY = WindowKey("dep-1", "cand", "candidate")


def _outcomes() -> list[SearchOutcome]:
    return [
        outcome(1, 100.0, recall_at_10=0.5),
        outcome(2, 1300.0, recall_at_10=0.9),  # slow
        outcome(3, 50.0, recall_at_10=0.1),  # poor recall
        outcome(4, 5000.0, recall_at_10=None, error="timeout"),  # error and slow: one violation
        outcome(5, 1200.0, recall_at_10=0.30),  # exactly at both thresholds: fine
        outcome(6, 80.0, recall_at_10=None),  # unlabeled, fine
    ]


def test_agg_counts() -> None:
    agg = WindowAggregator()
    s = agg.agg(agg.initialize(), _outcomes())
    assert (s.count, s.error_count, s.recall_samples, s.slo_violations) == (6, 1, 4, 3)
    assert s.recall_sum_micros == 1_800_000
    assert s.recall_at_10 == pytest.approx(0.45)
    assert s.max_source_offset == -1


@pytest.mark.parametrize(
    ("latency_threshold", "recall_threshold", "violations"),
    [(1200.0, 0.30, 3), (100.0, 0.30, 4), (10_000.0, 0.0, 1), (1200.0, 0.95, 5)],
)
def test_slo_violations_follow_thresholds(latency_threshold: float, recall_threshold: float, violations: int) -> None:
    agg = WindowAggregator(latency_threshold, recall_threshold)
    assert agg.agg(agg.initialize(), _outcomes()).slo_violations == violations


def test_result_fields() -> None:
    agg = WindowAggregator()
    s = agg.agg(agg.initialize(), _outcomes(), max_offset=41).with_late(2)
    r = agg.result(s, KEY, 10_000, 15_000, (), 16_000)
    assert r.window_id == "dep-1|cand|candidate@10000"
    assert (r.response_count, r.error_count, r.recall_samples, r.slo_violations, r.late_count) == (
        6,
        1,
        4,
        3,
        2,
    )
    assert r.duration_sec == 5
    # An errored request counts at least as slow as the router's timeout (10 s): errors never flatter.
    expected = np.percentile([max(o.latency_ms, 10_000.0) if o.error else o.latency_ms for o in _outcomes()], 95)
    assert r.p95_ms == pytest.approx(expected, rel=0.01)
    assert s.max_source_offset == 41


def test_sufficient_statistics_for_the_judge() -> None:
    agg = WindowAggregator(exceed_thresholds_ms=(1000.0, 2000.0))
    s = agg.agg(agg.initialize(), _outcomes())
    # slower than 1000: 1300, 5000 (an error: it exceeds every threshold anyway), 1200; than 1200: 1300 and
    # the error; than 2000: only the error.
    assert dict(s.exceed) == {"1000": 3, "1200": 2, "2000": 1}
    assert dict(s.recall_hist) == {100: 1, 300: 1, 500: 1, 900: 1}
    stats = agg.result(s, KEY, 0, 5000, (), 6000).stats
    assert stats is not None and stats["exceed"] == {"1000": 3, "1200": 2, "2000": 1}
    assert WindowAggregate.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_empty_result_has_no_metrics() -> None:
    agg = WindowAggregator()
    r = agg.result(agg.initialize(), KEY, 0, 5000, (), 6000)
    assert (r.response_count, r.p95_ms, r.recall_at_10, r.recall_samples) == (0, None, None, 0)


def test_agg_is_pure_and_split_independent() -> None:
    agg = WindowAggregator()
    rng = np.random.default_rng(7)
    items = [
        outcome(i, float(rng.lognormal(5, 1)), recall_at_10=float(rng.random()) if i % 3 else None) for i in range(300)
    ]
    whole = agg.agg(agg.initialize(), items)
    start = agg.initialize()
    s = start
    for chunk in (items[200:], items[:7], items[7:200][::-1]):
        s = agg.agg(s, chunk)
    assert s == whole
    assert start.count == 0 and start.sketch.count == 0
    merged = agg.merge(agg.agg(agg.initialize(), items[:150]), agg.agg(agg.initialize(), items[150:]))
    assert json.dumps(merged.to_dict()) == json.dumps(whole.to_dict())


def test_state_round_trip_and_bounded_size() -> None:
    agg = WindowAggregator()
    small = agg.agg(agg.initialize(), [outcome(i, 100.0 + i % 50) for i in range(100)])
    big = agg.agg(agg.initialize(), [outcome(i, 100.0 + i % 50) for i in range(20_000)])
    assert WindowAggregate.from_dict(json.loads(json.dumps(big.to_dict()))) == big
    assert len(json.dumps(big.to_dict())) < len(json.dumps(small.to_dict())) + 200


def test_from_dict_rejects_malformed() -> None:
    d = WindowAggregator().initialize().to_dict()
    del d["count"]
    with pytest.raises(InvalidEvent, match="WindowAggregate"):
        WindowAggregate.from_dict(d)


def test_user_groups_are_counted_per_group_and_pool_by_addition() -> None:
    agg = WindowAggregator(exceed_thresholds_ms=[500.0])
    rng = np.random.default_rng(11)
    items = [
        outcome(
            i,
            float(rng.lognormal(6.5, 0.8)),
            recall_at_10=round(float(rng.random()), 3) if i % 4 else None,
            error="timeout" if i % 17 == 0 else None,
            user_group=int(rng.integers(0, 16)) if i % 9 else None,  # every 9th from a router before the field
        )
        for i in range(400)
    ]
    whole = agg.agg(agg.initialize(), items)
    groups = whole.stats.groups
    with_group = [o for o in items if o.user_group is not None]
    for g in range(16):
        mine = [o for o in with_group if o.user_group == g]
        assert groups.n[g] == len(mine)
        assert groups.errors[g] == sum(o.error is not None for o in mine)
        slow = groups.exceedances(1200.0)
        assert slow is not None and slow[g] == sum(o.error is not None or o.latency_ms > 1200.0 for o in mine)
        assert groups.recall_n[g] == sum(o.recall_at_10 is not None for o in mine)
        assert groups.recall_micros[g] == sum(round(o.recall_at_10 * 1e6) for o in mine if o.recall_at_10 is not None)
    assert sum(groups.n) == len(with_group) < whole.count
    split = agg.merge(agg.agg(agg.initialize(), items[:123]), agg.agg(agg.initialize(), items[123:]))
    assert json.dumps(split.to_dict()) == json.dumps(whole.to_dict())
    assert WindowAggregate.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole
    none = agg.agg(agg.initialize(), [outcome(i) for i in range(5)])
    assert "groups" not in none.to_dict() and "groups" not in none.stats.to_dict()  # older windows' exact JSON


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda g: g.update(n=[1] * 15), "groups.n: expected a list of 16"),
        (lambda g: g.update(errors=[-1] + [0] * 15), "groups.errors: expected non-negative"),
        (lambda g: g.update(n=[True] + [0] * 15), "groups.n: expected non-negative"),
        (lambda g: g["exceed"].update({"abc": [0] * 16}), "thresholds are numbers"),
        (lambda g: g.update(errors=[5] + [0] * 15), "more errors"),
        (lambda g: g.update(n=[10**6] * 16), "more requests than the window"),
        (lambda g: g.update(recall_micros=[3 * 10**6] * 16), "more errors, exceedances or recall"),
        (lambda g: g.clear() or g.update(n="x"), "groups.n"),
    ],
)
def test_hostile_user_group_counts_are_refused_naming_the_field(change: object, says: str) -> None:
    agg = WindowAggregator()
    state = agg.agg(agg.initialize(), [outcome(i, 100.0, user_group=i % 16) for i in range(32)])
    d = json.loads(json.dumps(state.to_dict()))
    change(d["groups"])  # type: ignore[operator]
    with pytest.raises(InvalidEvent, match=says):
        WindowAggregate.from_dict(d)


@pytest.mark.parametrize("hist", [[[1001, 2]], [[-1, 2]], [[500, 0]], [[500, -3]]])
def test_a_custom_metric_histogram_outside_the_bins_is_refused(hist: list[list[int]]) -> None:
    """The judge weighs a custom mean's histogram as a dense one of 1,001 bins: a record's bin outside it (or a count
    that is not positive) is a malformed record, not an index into the histogram (a negative one would wrap)."""
    from canary.core.custom import CustomStats

    assert CustomStats.from_dict({"n": 2, "hist": [[500, 2]]}).hist == ((500, 2),)
    with pytest.raises(InvalidEvent, match="hist bins"):
        CustomStats.from_dict({"n": 2, "hist": hist})
