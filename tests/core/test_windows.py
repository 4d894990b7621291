from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec.structs
import pytest

from canary.core.aggregations import WindowAggregator
from canary.core.models import RouterWatermark, RuleVerdict, SearchOutcome, WindowKey, WindowResult
from canary.core.windows import PartitionClock, WindowFinalizer, window_bounds
from canary.errors import InvalidEvent
from tests.core.helpers import outcome

CAND = WindowKey("dep-1", "cand", "candidate")
BASE = WindowKey("dep-1", "base", "last_good")


@dataclass(frozen=True)
class Add:
    ts: tuple[int, ...]
    now: int
    partition: int = 0
    arm: str = "candidate"


@dataclass(frozen=True)
class Due:
    now: int


Emitted = tuple[str, int, int, int]  # arm, window start, count, late


@dataclass
class Run:
    emitted: list[Emitted] = field(default_factory=list)
    late: list[int] = field(default_factory=list)


def _outcome(ts: int, arm: str) -> SearchOutcome:
    if arm == "candidate":
        return outcome(ts, 100.0 + ts % 7)
    return outcome(ts, 90.0, arm="last_good", config_name="base")


def run(steps: list[Add | Due], fin: WindowFinalizer | None = None) -> Run:
    fin = fin or WindowFinalizer()
    out = Run()
    for step in steps:
        if isinstance(step, Add):
            batch = [_outcome(t, step.arm) for t in step.ts]
            out.late += [o.ts for o in fin.add(step.partition, batch, step.now).late]
        else:
            out.emitted += [(r.arm, r.window_start_ms, r.response_count, r.late_count) for r in fin.due(step.now)]
    return out


SCENARIOS: dict[str, tuple[list[Add | Due], list[Emitted], list[int]]] = {
    "in_order": (
        [
            Add((100,), 100),
            Add((1200,), 1200),
            Add((4900, 5100), 5100),
            Due(5999),
            Add((6100,), 6100),
            Due(6100),
            Due(12_000),
        ],
        [("candidate", 0, 3, 0), ("candidate", 5000, 2, 0)],
        [],
    ),
    "out_of_order_within_grace": (
        [Add((4000,), 4000), Add((5500,), 5500), Add((4800,), 5800), Due(5800), Due(6000), Due(6300)],
        [("candidate", 0, 2, 0)],
        [],
    ),
    # A late outcome is never dropped: it counts in the key's next open window (and in its late_count).
    "late_beyond_grace_after_due": (
        [Add((1000,), 1000), Add((6500,), 6500), Due(6500), Add((4000,), 6600), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 2, 1)],
        [4000],
    ),
    "late_beyond_grace_before_due": (
        [Add((1000,), 1000), Add((6500,), 6500), Add((4000,), 6600), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 2, 1)],
        [4000],
    ),
    "late_within_one_batch": (
        [Add((1000, 6500, 4000), 6500), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 2, 1)],
        [4000],
    ),
    "gap_gives_empty_windows": (
        [Add((1000,), 1000), Add((16_000,), 16_000), Due(22_000)],
        [
            ("candidate", 0, 1, 0),
            ("candidate", 5000, 0, 0),
            ("candidate", 10_000, 0, 0),
            ("candidate", 15_000, 1, 0),
        ],
        [],
    ),
    "multiple_keys": (
        [
            Add((1000, 2000), 2000),
            Add((1500,), 2000, arm="last_good"),
            Add((7000,), 7000, arm="last_good"),
            Due(12_000),
        ],
        [
            ("last_good", 0, 1, 0),
            ("candidate", 0, 2, 0),
            ("last_good", 5000, 1, 0),
            ("candidate", 5000, 0, 0),
        ],
        [],
    ),
    "lagging_partition_holds_watermark": (
        [
            Add((1000,), 20_000, partition=1),
            Add((6000,), 20_000, partition=1),
            Add((20_000,), 20_000, partition=0),
            Due(20_000),
            Add((11_500,), 20_000, partition=1),
            Due(20_000),
        ],
        [("candidate", 0, 1, 0), ("candidate", 5000, 1, 0)],
        [],
    ),
    "idle_fallback_follows_clock": (
        [Add((1000,), 1000), Due(5999), Due(6000)],
        [("candidate", 0, 1, 0)],
        [],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios(name: str) -> None:
    steps, emitted, late = SCENARIOS[name]
    got = run(steps)
    assert got.emitted == emitted
    assert got.late == late


def test_window_bounds() -> None:
    assert window_bounds(0) == (0, 5000)
    assert window_bounds(4999) == (0, 5000)
    assert window_bounds(5000) == (5000, 10_000)
    assert window_bounds(12_345, 1000) == (12_000, 13_000)


def test_partition_clock_legacy_producers() -> None:
    c = PartitionClock(grace_ms=1000)
    assert c.watermark(0) is None
    c.on_outcome("third-party", 10_000, now_ms=50_000)
    assert c.watermark(50_000) == 9_000  # highest event time minus grace
    assert c.watermark(53_000) == 12_000  # extrapolated with the clock while it is quiet
    c.on_outcome("third-party", 9_000, now_ms=54_000)  # an older outcome never lowers event time
    assert c.legacy_max_ts == 10_000


def wm(router: str, at: int, status: str = "running", seq: int = 0) -> RouterWatermark:
    return RouterWatermark(router, at, status, seq)  # type: ignore[arg-type]


def test_partition_clock_follows_the_slowest_live_router_in_its_own_clock() -> None:
    c = PartitionClock(router_timeout_ms=5000)
    c.on_watermark(wm("a", 20_000), now_ms=100)
    c.on_watermark(wm("b", 18_000), now_ms=100)  # b's clock is 2 s behind: it holds the partition back
    assert c.watermark(100) == 18_000
    c.on_watermark(wm("b", 17_000), now_ms=200)  # a producer's watermark never goes back
    assert c.watermark(200) == 18_000
    assert c.watermark(5_100) == 18_000 and c.live_producers(5_100) == ["a", "b"]
    assert c.live_producers(5_101) == ["b"] and c.live_producers(5_201) == []  # silent too long: they leave
    c.on_watermark(wm("a", 25_000), now_ms=6_000)
    assert c.watermark(6_000) == 25_000  # b is gone; a alone decides
    c.on_watermark(wm("a", 26_000, "stop"), now_ms=6_100)
    assert c.live_producers(6_100) == []  # a clean stop leaves at once


def test_partition_clock_bounds_event_time() -> None:
    c = PartitionClock(future_bound_ms=10_000)
    c.on_watermark(wm("a", 20_000), now_ms=0)
    assert c.accepts("a", 30_000, 0) and not c.accepts("a", 30_001, 0)
    assert c.accepts("unknown", 10_000, 0) and not c.accepts("unknown", 10_001, 0)  # vs processing time


def test_each_window_emitted_once() -> None:
    fin = WindowFinalizer()
    fin.add(0, [outcome(1000)], 1000)
    assert len(fin.due(7000)) == 1
    assert fin.due(7000) == []
    assert fin.due(7001) == []


def test_idle_key_stops_and_restarts() -> None:
    fin = WindowFinalizer(idle_windows=3)
    got = run([Add((1000,), 1000), Due(100_000), Due(200_000)], fin)
    assert got.emitted == [("candidate", s, c, 0) for s, c in [(0, 1), (5000, 0), (10_000, 0), (15_000, 0)]]
    assert fin.tracked_keys == ()
    # A new outcome starts a new series at its own window; the gap is not back-filled.
    got = run([Add((201_500,), 201_500), Due(211_000)], fin)
    assert got.emitted == [("candidate", 200_000, 1, 0), ("candidate", 205_000, 0, 0)]


def test_register_key_emits_empty_windows_before_first_event() -> None:
    fin = WindowFinalizer()
    fin.register_key(BASE, 0)
    fin.register_key(CAND, 0)
    got = run([Add((11_000,), 11_000, arm="last_good"), Due(11_000)], fin)
    assert got.emitted == [
        ("last_good", 0, 0, 0),
        ("candidate", 0, 0, 0),
        ("last_good", 5000, 0, 0),
        ("candidate", 5000, 0, 0),
    ]


def test_judge_fills_verdicts() -> None:
    def judge(w: WindowResult) -> tuple[RuleVerdict, ...]:
        return (RuleVerdict("n", "response_count", "ge", 1, w.response_count, "pass", "ok"),)

    fin = WindowFinalizer(judge=judge)
    fin.add(0, [outcome(1000)], 1000)
    (w,) = fin.due(6000)
    assert w.verdicts[0].value == 1


def test_per_key_aggregator() -> None:
    def factory(key: WindowKey) -> WindowAggregator:
        return WindowAggregator(latency_threshold_ms=50.0 if key.arm == "candidate" else 1e9)

    fin = WindowFinalizer(aggregator=factory)
    fin.add(0, [outcome(1000, 100.0), outcome(1000, 100.0, arm="last_good", config_name="base")], 1000)
    by_arm = {w.arm: w.slo_violations for w in fin.due(6000)}
    assert by_arm == {"candidate": 1, "last_good": 0}


def test_flush_all_closes_everything_once() -> None:
    fin = WindowFinalizer()
    fin.add(0, [outcome(1000), outcome(12_000)], 12_000)
    got = [(w.window_start_ms, w.response_count) for w in fin.flush_all(12_000)]
    assert got == [(0, 1), (5000, 0), (10_000, 1)]
    assert fin.due(100_000) == [] and fin.open_windows == 0


NOW = 30_000


def _stream() -> list[SearchOutcome]:
    # In order with jitter, some out of order within grace, two far too late.
    ts = [
        100,
        900,
        2500,
        4700,
        5200,
        4950,
        7300,
        9900,
        8800,
        10_400,
        6100,
        15_200,
        14_100,
        3000,
        21_000,
        22_500,
        16_000,
    ]
    return [outcome(t, 50.0 + (t % 97)) for t in ts]


def _results(
    fin: WindowFinalizer, batches: list[list[SearchOutcome]], now: int
) -> tuple[list[dict[str, Any]], list[str]]:
    emitted: list[dict[str, Any]] = []
    late: list[str] = []
    for b in batches:
        late += [o.event_id for o in fin.add(0, b, now).late]
        emitted += [w.to_dict() for w in fin.due(now)]
    emitted += [w.to_dict() for w in fin.flush_all(now)]
    return emitted, late


@pytest.mark.parametrize("cuts", [[], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [5], [3, 11], [13, 14]])
def test_batch_split_independence(cuts: list[int]) -> None:
    stream = _stream()
    bounds = [0, *cuts, len(stream)]
    batches = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    # Processing time after the last event (a producer's events are never ahead of the worker's clock).
    reference = _results(WindowFinalizer(), [stream], now=NOW)
    got = _results(WindowFinalizer(), batches, now=NOW)
    assert got == reference
    emitted, late = got
    assert len(late) == 2  # ts 3000 and 16_000 arrive after their windows closed
    assert sum(int(w["response_count"]) for w in emitted) == len(stream)  # late ones count one window later
    assert sum(int(w["late_count"]) for w in emitted) == 2


def test_restart_resumes_without_duplicates_or_loss() -> None:
    stream = _stream()
    uninterrupted = _results(WindowFinalizer(), [[o] for o in stream], now=NOW)

    fin = WindowFinalizer()
    first, late1 = _results_no_flush(fin, [[o] for o in stream[:9]])
    state = json.loads(json.dumps(fin.to_dict()))
    restored = WindowFinalizer.from_dict(state, now_ms=NOW)
    second, late2 = _results(restored, [[o] for o in stream[9:]], now=NOW)
    assert (first + second, late1 + late2) == uninterrupted


def _results_no_flush(
    fin: WindowFinalizer, batches: list[list[SearchOutcome]]
) -> tuple[list[dict[str, Any]], list[str]]:
    emitted: list[dict[str, Any]] = []
    late: list[str] = []
    for b in batches:
        late += [o.event_id for o in fin.add(0, b, NOW).late]
        emitted += [w.to_dict() for w in fin.due(NOW)]
    return emitted, late


def test_restore_without_traffic_still_closes_windows() -> None:
    fin = WindowFinalizer()
    fin.add(0, [outcome(1000)], 1000)
    state = fin.to_dict()
    # Restarted much later, no new traffic: the clock takes over from the persisted event time.
    restored = WindowFinalizer.from_dict(state, now_ms=900_000)
    assert restored.due(900_000) == []
    assert [w.window_start_ms for w in restored.due(905_000)] == [0]


def test_from_dict_rejects_malformed() -> None:
    with pytest.raises(InvalidEvent, match="WindowFinalizer"):
        WindowFinalizer.from_dict({"size_ms": 5000})


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="window settings"):
        WindowFinalizer(size_ms=0)
    with pytest.raises(ValueError, match="watermark settings"):
        WindowFinalizer(router_timeout_ms=0)


def _o(ts: int, *, router: str = "a", request: str | None = None, latency: float = 100.0) -> SearchOutcome:
    o = outcome(ts, latency)
    return msgspec.structs.replace(o, router_id=router, request_id=request or o.request_id)


def test_router_watermarks_close_windows_and_skew_costs_no_data() -> None:
    # Router b's clock is 2 s behind a's. Each stamps outcomes with its own clock; the window closes when
    # both have promised everything up to its end, so none of b's outcomes is late.
    fin = WindowFinalizer(grace_ms=0)
    fin.add(0, [wm("a", 0, "start"), wm("b", 0, "start")], 0)
    fin.add(0, [_o(4_000, router="a"), _o(2_900, router="b"), wm("b", 3_000), wm("a", 5_000)], 5_000)
    assert fin.due(5_000) == []  # b has not passed 5000 in its clock yet
    fin.add(0, [_o(4_900, router="b"), wm("b", 5_000)], 7_000)
    (w,) = fin.due(7_000)
    assert (w.window_start_ms, w.response_count, w.late_count) == (0, 3, 0)


def test_future_outcome_is_refused_and_moves_nothing() -> None:
    fin = WindowFinalizer(grace_ms=0)
    fin.add(0, [wm("a", 1_000, "start")], 1_000)
    r = fin.add(0, [_o(1_000 + 3_600_000), _o(2_000), wm("a", 5_000)], 5_000)
    assert [o.ts for o in r.future] == [3_601_000]
    (w,) = fin.due(5_000)
    assert w.response_count == 1
    r = fin.add(0, [_o(6_000), wm("a", 10_000)], 10_000)
    assert not r.late and [x.response_count for x in fin.due(10_000)] == [1]  # later windows still close


def test_a_request_counts_once() -> None:
    fin = WindowFinalizer(grace_ms=0)
    r = fin.add(0, [_o(1_000, request="q1"), _o(1_200, request="q1", router="b"), _o(1_300, request="q2")], 1_300)
    assert r.duplicates == 1
    restored = WindowFinalizer.from_dict(json.loads(json.dumps(fin.to_dict())), now_ms=1_300)
    r = restored.add(0, [_o(1_500, request="q1"), wm("a", 5_000)], 5_000)  # redelivered after a restart
    assert r.duplicates == 1
    (w,) = restored.due(5_000)
    assert w.response_count == 2
    assert restored.remembered_requests == 2


def test_a_stalled_router_holds_its_window_open() -> None:
    # Router a is stopped for 3 s (under the 5 s timeout) mid-window: the window waits for it.
    fin = WindowFinalizer(grace_ms=0)
    fin.add(0, [wm("a", 0, "start"), wm("b", 0, "start")], 0)
    fin.add(0, [_o(1_000, router="a"), wm("a", 1_000)], 1_000)
    fin.add(0, [_o(4_000, router="b"), wm("b", 5_000)], 5_000)
    assert fin.due(5_000) == [] and fin.due(5_900) == []
    fin.add(0, [_o(1_500, router="a"), wm("a", 5_000)], 5_950)  # resumed: its in-flight outcome arrives
    (w,) = fin.due(5_950)
    assert (w.response_count, w.late_count) == (3, 0)
