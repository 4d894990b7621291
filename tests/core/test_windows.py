from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from canary.core.aggregations import WindowAggregator
from canary.core.models import RuleVerdict, SearchOutcome, WindowKey, WindowResult
from canary.core.windows import WatermarkTracker, WindowFinalizer, window_bounds
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
            out.late += [o.ts for o in fin.add(step.partition, batch, step.now)]
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
    "late_beyond_grace_after_due": (
        [Add((1000,), 1000), Add((6500,), 6500), Due(6500), Add((4000,), 6600), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 1, 1)],
        [4000],
    ),
    "late_beyond_grace_before_due": (
        [Add((1000,), 1000), Add((6500,), 6500), Add((4000,), 6600), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 1, 1)],
        [4000],
    ),
    "late_within_one_batch": (
        [Add((1000, 6500, 4000), 6500), Due(12_000)],
        [("candidate", 0, 1, 0), ("candidate", 5000, 1, 1)],
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


def test_watermark_tracker() -> None:
    t = WatermarkTracker()
    assert t.watermark(0) is None
    t.observe(0, 10_000, now_ms=50_000)
    t.observe(1, 4_000, now_ms=51_000)
    assert t.watermark(51_000) == 4_000
    assert t.watermark(53_000) == 6_000  # both extrapolate with the clock
    assert t.watermark(53_000, exclude=1) == 13_000
    t.observe(0, 9_000, now_ms=54_000)  # an older batch never lowers the partition's event time
    assert t.max_ts(0) == 10_000
    t.forget(1)
    assert t.partitions == (0,)


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
        late += [o.event_id for o in fin.add(0, b, now)]
        emitted += [w.to_dict() for w in fin.due(now)]
    emitted += [w.to_dict() for w in fin.flush_all(now)]
    return emitted, late


@pytest.mark.parametrize("cuts", [[], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [5], [3, 11], [13, 14]])
def test_batch_split_independence(cuts: list[int]) -> None:
    stream = _stream()
    bounds = [0, *cuts, len(stream)]
    batches = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    reference = _results(WindowFinalizer(), [stream], now=0)
    got = _results(WindowFinalizer(), batches, now=0)
    assert got == reference
    emitted, late = got
    assert len(late) == 2  # ts 3000 and 16_000 arrive after their windows closed
    assert sum(int(w["response_count"]) for w in emitted) + len(late) == len(stream)
    assert sum(int(w["late_count"]) for w in emitted) == 2


def test_restart_resumes_without_duplicates_or_loss() -> None:
    stream = _stream()
    uninterrupted = _results(WindowFinalizer(), [[o] for o in stream], now=0)

    fin = WindowFinalizer()
    first, late1 = _results_no_flush(fin, [[o] for o in stream[:9]])
    state = json.loads(json.dumps(fin.to_dict()))
    restored = WindowFinalizer.from_dict(state, now_ms=0)
    second, late2 = _results(restored, [[o] for o in stream[9:]], now=0)
    assert (first + second, late1 + late2) == uninterrupted


def _results_no_flush(
    fin: WindowFinalizer, batches: list[list[SearchOutcome]]
) -> tuple[list[dict[str, Any]], list[str]]:
    emitted: list[dict[str, Any]] = []
    late: list[str] = []
    for b in batches:
        late += [o.event_id for o in fin.add(0, b, 0)]
        emitted += [w.to_dict() for w in fin.due(0)]
    return emitted, late


def test_redelivered_offsets_are_skipped_after_restore() -> None:
    fin = WindowFinalizer()
    batch = [outcome(1000), outcome(2000), outcome(3000)]
    fin.add(0, batch, 3000, offsets=[10, 11, 12])
    restored = WindowFinalizer.from_dict(json.loads(json.dumps(fin.to_dict())), now_ms=3000)
    restored.add(0, [*batch, outcome(4000)], 4000, offsets=[10, 11, 12, 13])
    (w,) = restored.due(6000)
    assert w.response_count == 4
    assert fin.due(6000)[0].response_count == 3


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


def test_rejects_bad_settings_and_offsets() -> None:
    with pytest.raises(ValueError, match="window settings"):
        WindowFinalizer(size_ms=0)
    with pytest.raises(ValueError, match="offsets"):
        WindowFinalizer().add(0, [outcome(1)], 1, offsets=[1, 2])
