"""The columnar path of WindowFinalizer.add applies exactly the rules of the one-by-one path.

Seeded random streams mix watermarking and legacy producers, clock skew, stalls, futures, duplicates,
late outcomes, several keys and partitions, and odd batch sizes; both paths must leave the same state,
report the same late / future / duplicate outcomes and emit the same windows.
"""

from __future__ import annotations

import base64
import dataclasses
import random
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.core.dedup import ReferenceRequestMemory
from canary.core.models import RouterWatermark, SearchOutcome
from canary.core.windows import PartitionClock, WindowFinalizer, _ProducerMark, request_key, request_keys_of
from canary.pipeline.memory import NativeRequestMemory
from canary.pipeline.native import NATIVE
from tests.core import helpers

MEMORIES = [
    pytest.param(None, id="reference"),
    pytest.param(
        NativeRequestMemory,
        id="native",
        marks=pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)"),
    ),
]

BASE = 1_700_000_000_000
KEYS = [("dep-a", "cand", "candidate"), ("dep-a", "base", "last_good"), (None, "base", "last_good")]


def outcome(
    seq: int,
    ts: int,
    key: tuple[str | None, str, str],
    latency_ms: float,
    recall: float | None,
    error: str | None,
    router_id: str,
) -> SearchOutcome:
    dep, config, arm = key
    return helpers.outcome(
        ts,
        latency_ms,
        arm=arm,  # type: ignore[arg-type]
        deployment_id=dep,
        config_name=config,
        recall_at_10=recall,
        error=error,
        event_id=f"e{seq}",
        request_id=f"q{seq}",
        router_id=router_id,
        config_hash="h",
    )


def stream(
    seed: int, *, watermarking: float, marks: float = 0.03, stops: float = 0.05
) -> list[tuple[int, int, list[SearchOutcome | RouterWatermark]]]:
    """(partition, now_ms, batch) triples in arrival order; ``marks``: how often a watermarking router's record is
    a watermark (a live router sends one to every partition every 50 ms: two or three in a fetch of ~120)."""
    rng = random.Random(seed)
    routers = [f"r{i}" for i in range(3)]
    sends_marks = {r: rng.random() < watermarking for r in routers}
    skew = {r: rng.choice([0, 0, -2000, 1500]) for r in routers}
    out: list[tuple[int, int, list[SearchOutcome | RouterWatermark]]] = []
    seq = 0
    now = BASE
    sent: list[SearchOutcome] = []
    for _ in range(rng.randint(20, 45)):
        now += rng.choice([50, 100, 400, 3000])
        partition = rng.randrange(2)
        batch: list[SearchOutcome | RouterWatermark] = []
        for _ in range(rng.choice([1, 5, 40, 120, 300])):
            r = rng.choice(routers)
            if sends_marks[r] and rng.random() < marks:
                status = "stop" if rng.random() < stops else "running"
                seq += 1
                batch.append(RouterWatermark(r, now + skew[r] - rng.randint(0, 300), status, seq))
                continue
            roll = rng.random()
            if roll < 0.04 and sent:
                batch.append(rng.choice(sent))  # redelivered: the same request again
                continue
            seq += 1
            dep, config, arm = rng.choice(KEYS)
            ts = now + skew[r] - rng.randint(0, 1500)
            if roll > 0.995:
                ts += 3_600_000  # a clock an hour ahead
            elif roll > 0.97:
                ts -= rng.randint(5000, 20_000)  # delivered late
            error = "backend_error" if rng.random() < 0.05 else None
            latency = rng.lognormvariate(5, 0.6)  # drawn before the recall, as the streams always were
            recall = None if error or rng.random() < 0.3 else round(rng.random(), 3)
            o = outcome(seq, max(0, ts), (dep, config, arm), latency, recall, error, r)
            sent.append(o)
            batch.append(o)
        out.append((partition, now, batch))
    return out


def run(columnar_min: int, seed: int, watermarking: float) -> dict[str, Any]:
    fin = WindowFinalizer()
    fin.columnar_min = columnar_min
    log: list[Any] = []
    for partition, now, batch in stream(seed, watermarking=watermarking):
        res = fin.add(partition, batch, now)
        log.append(([o.event_id for o in res.late], [o.event_id for o in res.future], res.duplicates))
        log.append([w.to_dict() for w in fin.due(now)])
    log.append([w.to_dict() for w in fin.flush_all(BASE + 10**7)])
    return {"log": log, "state": fin.to_dict()}


@pytest.mark.parametrize("watermarking", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(12))
def test_columnar_and_one_by_one_agree(seed: int, watermarking: float) -> None:
    one_by_one = run(10**9, seed, watermarking)
    columnar = run(0, seed, watermarking)
    assert columnar["log"] == one_by_one["log"]
    assert columnar["state"] == one_by_one["state"]


@pytest.mark.parametrize("spread_ms", [1_000, 30 * 86_400_000])  # a few windows; a month of them (sorted, not counted)
def test_a_batch_spanning_few_or_many_windows_groups_alike_on_both_paths(spread_ms: int) -> None:
    """The columnar path counts a batch's (window, key, late) labels where they span a few windows and sorts them
    where they span many (a legacy producer's first batch may hold outcomes days apart): both as one by one."""
    rng = random.Random(spread_ms)
    now = BASE + spread_ms + 60_000
    batch: list[SearchOutcome | RouterWatermark] = []
    for i in range(200):
        ts = BASE + rng.randrange(spread_ms)
        batch.append(
            outcome(i, ts, rng.choice(KEYS), rng.lognormvariate(5, 0.6), round(rng.random(), 3), None, "legacy")
        )

    def windows(columnar_min: int) -> Any:
        fin = WindowFinalizer()
        fin.columnar_min = columnar_min
        fin.add(0, batch, now)
        return [w.to_dict() for w in fin.flush_all(now + 10**7)], fin.to_dict()

    assert windows(0) == windows(10**9)


def test_a_clock_copy_has_every_field_and_producers_of_its_own() -> None:
    clock = PartitionClock()
    for i, f in enumerate(dataclasses.fields(PartitionClock)):  # each field away from its default
        setattr(clock, f.name, {"r": _ProducerMark(i, i)} if f.name == "producers" else 1000 + i)
    trial = clock.copy()
    assert trial == clock
    trial.on_watermark(RouterWatermark("r", 10**6, "running", 1), 10**6)
    assert clock.producers["r"].watermark != trial.producers["r"].watermark


def test_streams_exercise_every_rule() -> None:
    """The generator is only a good referee if the rules actually fire."""
    totals = {"late": 0, "future": 0, "duplicates": 0}
    for seed in range(12):
        fin = WindowFinalizer()
        fin.columnar_min = 0
        for partition, now, batch in stream(seed, watermarking=0.5):
            res = fin.add(partition, batch, now)
            totals["late"] += len(res.late)
            totals["future"] += len(res.future)
            totals["duplicates"] += res.duplicates
            fin.due(now)
    assert all(v > 0 for v in totals.values()), totals


@pytest.mark.parametrize(
    ("deployment_id", "request_id"),
    [("dep-a", "q1"), (None, "q1"), ("dep-a", ""), ("d", "ünïcode-ʀequest")],
)
def test_request_keys_are_the_checksums_of_the_whole_identity(deployment_id: str | None, request_id: str) -> None:
    """Checkpoints hold these numbers: the prefix-continued checksums must equal those of the whole string."""
    whole = f"{deployment_id or '-'}|{request_id}".encode()
    expected = (zlib.crc32(whole) << 32) | zlib.adler32(whole)
    assert request_key(deployment_id, request_id) == expected
    assert request_keys_of(deployment_id, [request_id, request_id]) == [expected, expected]


def run_folding(seed: int, watermarking: float, *, fold: str) -> dict[str, Any]:
    """``fold``: "batch" folds after every add (what the finalizer did before it deferred folding), "deferred"
    leaves it to window close, "checkpoints" reads the state (which folds) at seeded random points."""
    rng = random.Random(seed * 7 + 1)
    fin = WindowFinalizer()
    fin.columnar_min = 0
    log: list[Any] = []
    for partition, now, batch in stream(seed, watermarking=watermarking):
        res = fin.add(partition, batch, now)
        if fold == "batch":
            fin.fold_pending()
        elif fold == "checkpoints" and rng.random() < 0.3:
            log.append(fin.to_dict()["watermark"])
        log.append(([o.event_id for o in res.late], [o.event_id for o in res.future], res.duplicates))
        log.append([w.to_dict() for w in fin.due(now)])
    log.append([w.to_dict() for w in fin.flush_all(BASE + 10**7)])
    assert not fin.quarantined
    return {"windows": [entry for entry in log if isinstance(entry, list)], "state": fin.to_dict()}


@pytest.mark.parametrize("watermarking", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_deferred_folding_gives_the_windows_and_state_of_folding_every_batch(seed: int, watermarking: float) -> None:
    every_batch = run_folding(seed, watermarking, fold="batch")
    assert run_folding(seed, watermarking, fold="deferred") == every_batch
    assert run_folding(seed, watermarking, fold="checkpoints") == every_batch


def test_an_outcome_the_aggregator_raises_on_is_quarantined_and_the_rest_counted() -> None:
    from canary.core.aggregations import WindowAggregator

    class Picky(WindowAggregator):
        def agg(self, state, outcomes, max_offset=None):  # type: ignore[no-untyped-def]
            if any(o.request_id == "q-bad" for o in outcomes):
                raise RuntimeError("cannot fold q-bad")
            return super().agg(state, outcomes, max_offset)

    fin = WindowFinalizer(aggregator=Picky())
    fin.columnar_min = 0

    def outcome(i: str, ts: int) -> SearchOutcome:
        return SearchOutcome(
            event_id=f"e-{i}", request_id=f"q-{i}", ts=ts, deployment_id="d", config_name="c", config_version="1",
            config_hash="h", arm="candidate", latency_ms=100.0, recall_at_10=None, result_count=10, error=None,
            router_id="r",
        )  # fmt: skip

    batch = [outcome(str(i), BASE + 10 * i) for i in range(100)] + [outcome("bad", BASE + 2000)]
    fin.add(0, batch, BASE + 3000)
    windows = fin.flush_all(BASE + 10_000)
    assert [w.response_count for w in windows] == [100]
    assert [(o.request_id, why) for o, why in fin.quarantined] == [
        ("q-bad", "the window aggregator raised RuntimeError: cannot fold q-bad")
    ]


def run_sealing(seed: int, watermarking: float, *, seal: bool, memory: Any = None) -> dict[str, Any]:
    fin = WindowFinalizer(memory=memory)
    fin.columnar_min = 0
    if not seal:  # the reference: every remembered request stays in the dicts
        fin._memory.seal_before = lambda limit: None  # type: ignore[method-assign]
    log: list[Any] = []
    for partition, now, batch in stream(seed, watermarking=watermarking):
        res = fin.add(partition, batch, now)
        log.append(([o.event_id for o in res.late], [o.event_id for o in res.future], res.duplicates))
        log.append([w.to_dict() for w in fin.due(now)])
        log.append(fin.remembered_requests)
        memo = fin._memory
        if isinstance(memo, ReferenceRequestMemory):
            # The union is kept by merging and removing runs; it must stay exactly the sorted union of the starts.
            arrays = list(memo._sealed_by_start.values())
            union = np.sort(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.uint64)
            assert np.array_equal(memo._sealed, union)
        restored = WindowFinalizer.from_dict(fin.to_dict(), now_ms=now, memory=memory)
        log.append(restored.to_dict() == fin.to_dict())
    log.append([w.to_dict() for w in fin.flush_all(BASE + 10**7)])
    memo = fin._memory
    sealed = int(memo._sealed.size) if isinstance(memo, ReferenceRequestMemory) else 0
    return {"log": log, "state": fin.to_dict(), "sealed": sealed}


@pytest.mark.parametrize("watermarking", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_sealed_requests_are_remembered_as_the_dicts_remember_them(seed: int, watermarking: float) -> None:
    """Requests of starts two windows behind the watermark move into arrays: the same duplicates found, the same
    windows, the same checkpoints (restored to the same state), the same count remembered."""
    sealed = run_sealing(seed, watermarking, seal=True)
    reference = run_sealing(seed, watermarking, seal=False)
    assert sealed["log"] == reference["log"]
    assert sealed["state"] == reference["state"]
    assert reference["sealed"] == 0


@pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)")
@pytest.mark.parametrize("watermarking", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_the_native_request_memory_finds_what_the_reference_finds(seed: int, watermarking: float) -> None:
    """The native batch core's request memory in the finalizer: the same duplicates, windows, late and future
    outcomes, counts remembered and checkpoints (restored by either memory to the same state)."""
    native = run_sealing(seed, watermarking, seal=True, memory=NativeRequestMemory)
    reference = run_sealing(seed, watermarking, seal=True)
    assert native["log"] == reference["log"]
    assert native["state"] == reference["state"]
    crossed = WindowFinalizer.from_dict(native["state"], now_ms=BASE)
    assert crossed.to_dict() == reference["state"]


@pytest.mark.parametrize("memory", MEMORIES)
def test_a_request_repeated_after_its_start_was_sealed_is_a_duplicate(memory: Any) -> None:
    fin = WindowFinalizer(memory=memory)

    def outcome(ts: int) -> SearchOutcome:
        return SearchOutcome(
            event_id=f"e{ts}", request_id="q-once", ts=ts, deployment_id="d", config_name="c", config_version="1",
            config_hash="h", arm="candidate", latency_ms=100.0, recall_at_10=None, result_count=10, error=None,
            router_id="r",
        )  # fmt: skip

    fin.add(0, [outcome(BASE + 100)], BASE + 200)
    fin.add(0, [RouterWatermark("r", BASE + 20_000, "running", 1)], BASE + 20_000)
    fin.due(BASE + 20_000)
    if isinstance(fin._memory, ReferenceRequestMemory):
        assert fin._memory._sealed.size == 1 and not fin._memory._seen  # moved out of the dicts
    assert fin.remembered_requests == 1
    assert fin.add(0, [outcome(BASE + 25_000)], BASE + 25_000).duplicates == 1
    restored = WindowFinalizer.from_dict(fin.to_dict(), now_ms=BASE + 25_000, memory=memory)
    assert restored.remembered_requests == 1
    assert restored.add(0, [outcome(BASE + 26_000)], BASE + 26_000).duplicates == 1


@pytest.mark.parametrize("seed", range(20))
def test_removing_a_sorted_multiset_removes_each_copy_once(seed: int) -> None:
    from canary.core.dedup import _without

    rng = np.random.default_rng(seed)
    union = np.sort(rng.integers(0, 50, size=rng.integers(0, 200), dtype=np.uint64))
    gone = np.sort(rng.choice(union, size=rng.integers(0, union.size + 1), replace=False)) if union.size else union
    expected = list(union.tolist())
    for value in gone.tolist():
        expected.remove(value)
    assert _without(union, gone).tolist() == expected


_SEEN_VALUES = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),  # any length, not just 8k
    st.text(max_size=20),  # not base64
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seen=st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers().map(str)), _SEEN_VALUES, max_size=4),
        st.lists(st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3), max_size=4),
        st.integers(),
        st.text(max_size=5),
    ),
    native=st.booleans() if NATIVE is not None else st.just(False),
)
def test_a_damaged_dedup_section_is_a_typed_rejection(seen: Any, native: bool) -> None:
    """A checkpoint is a record read back from a topic: whatever its ``seen`` section holds, the finalizer restores
    it (the same state with either memory) or raises ``InvalidEvent`` — never another exception."""
    from canary.errors import InvalidEvent

    fin = WindowFinalizer()
    fin.add(0, [RouterWatermark("r", BASE, "running", 1)], BASE)
    state = {**fin.to_dict(), "seen": seen}
    memory = NativeRequestMemory if native else None
    try:
        restored = WindowFinalizer.from_dict(state, now_ms=BASE, memory=memory)
    except InvalidEvent:
        return
    reference = WindowFinalizer.from_dict(state, now_ms=BASE)
    assert restored.to_dict() == reference.to_dict()
