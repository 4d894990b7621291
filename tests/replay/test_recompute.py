"""Recomputing windows, verdicts and decisions from records, without Kafka (table-driven)."""

from __future__ import annotations

import importlib
import json
import random
from typing import Any

import pytest

from canary.core.models import WindowResult
from canary.core.slo import SLORule
from canary.pipeline.recompute import recompute
from canary.pipeline.settings import PipelineSettings
from canary.replay.compare import compare_windows
from tests.replay.helpers import T0, Record, Traffic, end, live_worker, start

W = 5000
SLOW = [1500.0] * 19 + [100.0]  # p95 well above 1200 ms
FAST = [100.0, 150.0, 200.0, 300.0]


def _canary(
    candidate_latency: list[list[float]],
    *,
    dep: str = "dep-1",
    partition: int = 0,
    lg_partition: int = 1,
    every_ms: int = 100,
    traffic: Traffic | None = None,
    start_ms: int = T0,
) -> Traffic:
    """Candidate traffic on ``partition`` (one latency pattern per window), last_good on ``lg_partition``."""
    t = traffic or Traffic.new()
    for i, lat in enumerate(candidate_latency):
        t.steady(partition, start_ms + i * W, start_ms + (i + 1) * W, every_ms, latency=lat, dep=dep)
    n = len(candidate_latency)
    t.steady(lg_partition, start_ms, start_ms + n * W, every_ms // 2 or 1, dep=dep, config="last_good", arm="last_good")
    return t


def _key(w: WindowResult) -> tuple[Any, ...]:
    return (
        w.window_id,
        w.response_count,
        w.error_count,
        w.p95_ms,
        w.recall_at_10,
        w.recall_samples,
        w.slo_violations,
        w.late_count,
        tuple((v.rule, v.outcome, v.value) for v in w.verdicts),
    )


def _horizon(records: list[Record]) -> int:
    """Processing time a little after the input: the last windows are closed (as live would by now)."""
    return max(r[2] or 0 for r in records) + W + 2000


@pytest.mark.parametrize(
    ("pattern", "slo", "expected_window"),
    [
        pytest.param([FAST, SLOW, SLOW, FAST], None, 2, id="two-slow-windows"),
        pytest.param([SLOW, FAST, SLOW, FAST, SLOW, SLOW], None, 5, id="pass-resets-streak"),
        pytest.param([FAST, FAST, FAST], None, None, id="healthy"),
        pytest.param([SLOW, SLOW, SLOW], {"p95_ms": 5000}, None, id="looser-threshold"),
        pytest.param([SLOW, SLOW, FAST, SLOW, SLOW, SLOW], {"consecutive_buckets": 3}, 5, id="three-buckets"),
    ],
)
def test_decision_at_the_expected_window(
    pattern: list[list[float]], slo: dict[str, Any] | None, expected_window: int | None
) -> None:
    traffic = _canary(pattern)
    commands = [start("dep-1", slo={"p95_ms": 1200, "recall_at_10": 0.3, "method": "point", **(slo or {})})]
    horizon = _horizon(traffic.records)
    rc = recompute(traffic.records, commands, horizon_ms=horizon)
    if expected_window is None:
        assert rc.decisions == []
    else:
        [d] = rc.decisions
        assert d.window_id == f"dep-1|cand|candidate@{T0 + expected_window * W}"
        assert d.rule == "p95_ms" and d.issued
        assert len(d.evidence["windows"]) == d.evidence["consecutive_buckets"]
        assert d.evidence["triggering_window"] == d.window_id
    # Same as the live worker stand-in, window for window.
    live, rollbacks = live_worker(traffic.records, commands, tick_until_ms=horizon)
    assert sorted(map(_key, rc.windows)) == sorted(map(_key, live))
    assert [c.evidence["triggering_window"] for c in rollbacks if c.evidence] == [d.window_id for d in rc.decisions]


def test_inconclusive_windows_neither_count_nor_reset() -> None:
    t = Traffic.new()
    t.steady(0, T0, T0 + W, 100, latency=SLOW)  # fail
    t.steady(0, T0 + W, T0 + 2 * W, 1000, latency=FAST)  # 5 samples < min_samples: inconclusive
    t.steady(0, T0 + 2 * W, T0 + 3 * W, 100, latency=SLOW)  # fail -> rollback
    rc = recompute(t.records, [start("dep-1")])
    [d] = rc.decisions
    assert d.window_id.endswith(f"@{T0 + 2 * W}")
    middle = next(j for j in rc.judgements if j.window_start_ms == T0 + W)
    assert middle.outcomes["p95_ms"] == "inconclusive" and middle.streaks["p95_ms"] == 1


@pytest.mark.parametrize("batch_max", [1, 7, 100, 2000])
@pytest.mark.parametrize("span_ms", [0, 50, 400])
def test_windows_do_not_depend_on_batch_cut_without_late_data(batch_max: int, span_ms: int) -> None:
    traffic = _canary([FAST, SLOW, SLOW, FAST], every_ms=37)
    ref = recompute(traffic.records, [start("dep-1")])
    got = recompute(
        traffic.records, [start("dep-1")], settings=PipelineSettings(batch_max=batch_max, batch_span_ms=span_ms)
    )
    assert list(map(_key, got.windows)) == list(map(_key, ref.windows))
    assert [d.window_id for d in got.decisions] == [d.window_id for d in ref.decisions]


def _mixed(rng: random.Random, n: int, max_delay_ms: int, min_delay_ms: int = 0) -> Traffic:
    """Both arms over 3 partitions, latencies, recall labels and errors drawn, published with a delay."""
    t = Traffic.new()
    for i in range(n):
        arm = rng.choice(["candidate", "last_good"])
        t.add(
            rng.randrange(3),
            T0 + i * 7 + rng.randrange(-3000, 300),
            arm=arm,
            config="cand" if arm == "candidate" else "last_good",
            latency=rng.uniform(1, 3000),
            recall=rng.choice([None, 0.0, 0.25, 1.0, 0.7]),
            error=rng.choice([None, None, None, "timeout"]),
            delay=rng.randrange(min_delay_ms, max_delay_ms),
        )
    return t


def test_strict_and_fast_decoding_give_identical_results() -> None:
    t = _mixed(random.Random(7), 3000, 1500)
    fast = recompute(t.records, [start("dep-1")])
    strict = recompute(t.records, [start("dep-1")], strict_decode=True)
    assert list(map(_key, fast.windows)) == list(map(_key, strict.windows))
    assert fast.late == strict.late > 0


@pytest.mark.parametrize(
    ("delay_ms", "late"),
    [
        pytest.param(200, 0, id="on-time"),
        pytest.param(900, 0, id="within-grace"),
        pytest.param(1500, 1, id="published-late"),
        pytest.param(4000, 1, id="very-late"),
    ],
)
def test_late_outcome_counted_in_next_window_like_live(delay_ms: int, late: int) -> None:
    # A slow request whose outcome left the router delay_ms after it finished (event time in window 0):
    # it sits in the partition where its Kafka timestamp puts it.
    t = Traffic.new()
    delayed_ts = T0 + 4950
    published = delayed_ts + delay_ms
    t.steady(0, T0, published, 100)
    t.add(0, delayed_ts, delay=delay_ms, latency=1800.0)
    t.steady(0, published + 50, T0 + 15_000, 100)
    commands = [start("dep-1")]
    horizon = _horizon(t.records)
    rc = recompute(t.records, commands, horizon_ms=horizon)
    assert rc.late == late
    by_start = {w.window_start_ms: w for w in rc.windows}
    assert by_start[T0].response_count == 51 - late
    assert sum(w.late_count for w in rc.windows) == late
    if late:
        assert rc.late_samples[0]["ts"] == delayed_ts
        # counted in the first window of the key still open when it arrived
        assert by_start[T0 + W].late_count + by_start.get(T0 + 2 * W, by_start[T0 + W]).late_count >= 1
    live, _ = live_worker(t.records, commands, tick_until_ms=horizon)
    assert sorted(map(_key, rc.windows)) == sorted(map(_key, live))


def test_worker_stall_is_a_residual_difference_with_an_explanation() -> None:
    t = Traffic.new()
    t.steady(0, T0, T0 + 20_000, 50)
    commands = [start("dep-1")]
    horizon = _horizon(t.records)
    rc = recompute(t.records, commands, horizon_ms=horizon)
    # The live worker froze for 2.5 s just before window 1 ended: its processing-time watermark ran ahead.
    stall_at = next(o for p, o, ts, _ in t.records if ts is not None and ts >= T0 + 9_950)
    live, _ = live_worker(t.records, commands, stalls={stall_at: 2500}, tick_until_ms=horizon)
    assert rc.late == 0
    assert sum(w.late_count for w in live) > 0
    diffs = [d for d in compare_windows(rc.windows, live) if d.kind == "window_field"]
    assert {d.field for d in diffs} >= {"late_count", "response_count"}
    assert all("stall" in d.explanation for d in diffs)


def test_interleaved_deployments_on_one_partition() -> None:
    t = Traffic.new()
    for i in range(600):
        ts = T0 + i * 25
        t.add(0, ts, dep="dep-a", config="cand-a", latency=SLOW[i % 20])
        t.add(0, ts + 1, dep="dep-b", config="cand-b", latency=FAST[i % 4])
        t.add(0, ts + 2, dep=None, config="last_good", arm="last_good")
    rc = recompute(t.records, [start("dep-a", "cand-a", at=T0 - 1000), start("dep-b", "cand-b", at=T0 - 500)])
    assert [d.deployment_id for d in rc.decisions] == ["dep-a"]
    keys = {w.key.as_str() for w in rc.windows}
    assert keys == {"dep-a|cand-a|candidate", "dep-b|cand-b|candidate", "-|last_good|last_good"}
    assert all(not w.verdicts for w in rc.windows if w.deployment_id is None)


def test_override_rules_apply_to_verdicts_and_violation_counts() -> None:
    traffic = _canary([SLOW, SLOW, SLOW])
    commands = [start("dep-1")]
    base = recompute(traffic.records, commands)
    loose = recompute(
        traffic.records, commands, rules_override=[SLORule("p95_ms", "p95_ms", "le", 5000, method="point")]
    )
    assert base.decisions and not loose.decisions
    cand = [w for w in loose.windows if w.arm == "candidate"]
    assert all(v.outcome == "pass" for w in cand for v in w.verdicts)
    assert all(w.slo_violations == 0 for w in cand)
    assert loose.rules["dep-1"] == [SLORule("p95_ms", "p95_ms", "le", 5000, method="point").to_dict()]


def test_decision_after_the_deployment_ended_is_not_issued() -> None:
    traffic = _canary([SLOW, SLOW, SLOW])
    commands = [start("dep-1"), end("dep-1", "abort", at=T0 + 3000)]
    [d] = recompute(traffic.records, commands).decisions
    assert not d.issued and "aborted" in d.note


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([], id="nothing"),
        pytest.param([(0, 0, T0, b"garbage"), (0, 1, T0 + 1, None)], id="only-poison"),
    ],
)
def test_no_traffic(records: list[Record]) -> None:
    rc = recompute(records, [start("dep-1")])
    assert rc.windows == [] and rc.decisions == [] and rc.outcomes == 0


def test_invalid_and_redelivered_records_are_skipped_like_live() -> None:
    t = Traffic.new()
    t.steady(0, T0, T0 + 6000, 100)
    clean = recompute(t.records, [start("dep-1")])
    dirty = list(t.records)
    dirty.insert(10, (0, 10_000, T0 + 1000, b"{not json"))
    dirty += [t.records[5], t.records[6]]  # redelivered: offsets already applied
    got = recompute(dirty, [start("dep-1")])
    assert got.invalid == 1 and got.invalid_samples[0]["offset"] == 10_000
    # Out-of-order input is sorted by offset, so the poison record sits after all others and
    # the duplicates are dropped by offset, as the live finalizer drops redeliveries.
    assert list(map(_key, got.windows)) == list(map(_key, clean.windows))


def test_horizon_emits_trailing_empty_windows_like_the_live_tick() -> None:
    t = Traffic.new()
    t.steady(0, T0, T0 + 10_000, 100)
    commands = [start("dep-1")]
    horizon = T0 + 10_000 + 70_000
    rc = recompute(t.records, commands, horizon_ms=horizon)
    live, _ = live_worker(t.records, commands, tick_until_ms=horizon)
    assert sorted(map(_key, rc.windows)) == sorted(map(_key, live))
    empties = [w for w in rc.windows if w.response_count == 0]
    assert len(empties) == 12  # idle_windows, then the series ends


def test_judge_range_limits_the_slo_evaluation() -> None:
    traffic = _canary([SLOW, SLOW, SLOW, SLOW])
    rc = recompute(traffic.records, [start("dep-1")], judge_from_ms=T0 + 2 * W)
    [d] = rc.decisions
    assert d.window_id.endswith(f"@{T0 + 3 * W}")
    assert {j.window_start_ms for j in rc.judgements} == {T0 + 2 * W, T0 + 3 * W}


@pytest.mark.parametrize("native", ["auto", "off"])  # the native decoder's columns (when built), and objects
@pytest.mark.parametrize("chunk", [1, 5, 64, 1999])
def test_decoding_chunk_size_changes_nothing(chunk: int, native: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are decoded a chunk at a time and cut into micro-batches afterwards; a batch that straddles
    two chunks must be cut exactly as if the partition had been read in one go."""
    rng = random.Random(11)
    t = Traffic.new()
    for i in range(2500):
        t.add(
            rng.randrange(2),
            T0 + i * 9 + rng.randrange(-2500, 200),
            latency=rng.uniform(1, 3000),
            delay=rng.randrange(0, 1500),
        )
    records = list(t.records)
    records.insert(700, (0, 900_000, T0 + 7000, b"{not json"))
    records.insert(1200, (1, 900_001, None, records[1199][3]))  # no Kafka time: the outcome's own
    settings = PipelineSettings(batch_max=100, batch_span_ms=50, native=native)  # type: ignore[arg-type]
    ref = recompute(records, [start("dep-1")], settings=settings)
    monkeypatch.setattr(importlib.import_module("canary.pipeline.recompute"), "_CHUNK", chunk)
    got = recompute(records, [start("dep-1")], settings=settings)
    assert list(map(_key, got.windows)) == list(map(_key, ref.windows))
    assert (got.late, got.invalid) == (ref.late, ref.invalid) and ref.late > 0 and ref.invalid == 1
    assert [p.batches for p in got.partitions.values()] == [p.batches for p in ref.partitions.values()]


def test_late_and_future_samples_name_their_records_offsets() -> None:
    """An outcome does not carry its offset; the samples take it from the batch's offsets, by record."""
    t = Traffic.new()
    t.steady(0, T0, T0 + 5000, 100)
    t.add(0, T0 + 4950, delay=4000)  # published 4 s after its event time: late
    late_offset = t.records[-1][1]
    t.steady(0, T0 + 5100, T0 + 9000, 100)
    t.add(0, T0 + 9000 + 3_600_000, delay=-3_600_000)  # stamped an hour ahead of its Kafka time: future
    future_offset = t.records[-1][1]
    t.steady(0, T0 + 9100, T0 + 15_000, 100)
    rc = recompute(t.records, [start("dep-1")], horizon_ms=_horizon(t.records))
    assert rc.late == 1 and [s["offset"] for s in rc.late_samples] == [late_offset]
    future = [s for s in rc.invalid_samples if s["reason"].startswith("future_ts")]
    assert [s["offset"] for s in future] == [future_offset]


@pytest.mark.parametrize("chunk", [7, 16_384])
@pytest.mark.parametrize("seed", range(4))
def test_the_native_columns_and_the_object_path_replay_alike(
    seed: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay runs the live windows stage's path: columns from the native decoder where it is built. Everything a
    replay reports — windows, judgements, decisions, late and invalid counts and samples, batches — must be what
    the record-by-record path gives, with poison, records without a Kafka time and outcomes with metrics (which
    send their chunk down the object path) among them."""
    rng = random.Random(seed)
    t = _mixed(rng, 3000, 4000, -200)
    records = list(t.records)
    for k in range(12):
        at = rng.randrange(len(records))
        p, _offset, ts_ms, raw = records[at]
        kind = k % 3
        if kind == 0:
            records.insert(at, (p, 10_000_000 + k, ts_ms, rng.choice([b"{", None, b"[]"])))
        elif kind == 1:
            # no Kafka time, None or -1 (and a repeat of its request): the chunk's rows get the per-row rule
            records.insert(at, (p, 10_000_000 + k, None if k % 2 else -1, raw))
        else:
            d = json.loads(raw)
            d.update(request_id=f"m{k}", event_id=f"m{k}", metrics={"ndcg": 0.5})
            records.insert(at, (p, 10_000_000 + k, ts_ms, json.dumps(d).encode()))
    monkeypatch.setattr(importlib.import_module("canary.pipeline.recompute"), "_CHUNK", chunk)
    got = {}
    for native in ("auto", "off"):
        rc = recompute(records, [start("dep-1")], settings=PipelineSettings(native=native))  # type: ignore[arg-type]
        got[native] = (
            list(map(_key, rc.windows)),
            [(j.window_id, j.outcomes) for j in rc.judgements],
            [d.window_id for d in rc.decisions],
            (rc.late, rc.invalid, rc.outcomes),
            rc.late_samples,
            rc.invalid_samples,
            sorted(rc.partitions.items()),  # every count and offset of each partition
        )
    assert got["auto"] == got["off"]
    assert got["off"][3][0] > 0 and got["off"][3][1] > 0


@pytest.mark.parametrize("seed", range(10))
def test_records_split_natively_as_in_python(seed: int) -> None:
    """The native batch core splits the records by partition (``group_records``): the same partitions, offset
    order and first-of-equal-offsets as the Python split (the same record objects), and each record's time (None:
    ``-2**63``); a record of another shape leaves the whole split to Python."""
    from canary.pipeline import recompute as module
    from canary.pipeline.native import NATIVE

    if NATIVE is None:
        pytest.skip("the native extension is not built (no cargo)")
    rng = random.Random(seed)
    records: list[Any] = []
    for i in range(rng.randint(0, 300)):
        ts = rng.choice([T0 + i, None, -1, 0, 2**62])
        records.append((rng.randrange(4), rng.randrange(200), ts, rng.choice([f"v{i}".encode(), None])))
    if rng.random() < 0.5:
        records.sort(key=lambda r: (r[0], r[1]))  # already in offset order, with repeats
    split = module._by_partition(records, NATIVE)
    reference = module._by_partition_python(records)
    assert {p: part.records for p, part in split.items()} == reference
    for part in split.values():
        assert all(a is b for a, b in zip(part.records, reference[part.records[0][0]], strict=True))
        assert part.times is not None
        assert part.times.tolist() == [-(2**63) if r[2] is None else r[2] for r in part.records]
    for odd in [[*records, (1, 2.0, None, b"x")], [*records, [0, 1, None, b"x"]], [*records, (0, 1, 1.5, b"x")]]:
        split = module._by_partition(odd, NATIVE)
        assert all(part.times is None for part in split.values())
        assert {p: part.records for p, part in split.items()} == module._by_partition_python(odd)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(enabled: bool) -> None:
    import gc

    t = Traffic.new()
    t.steady(0, T0, T0 + 6000, 100)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        recompute(t.records, [start("dep-1")])
        assert gc.isenabled() is enabled and gc.get_freeze_count() == 0
    finally:
        (gc.enable if was else gc.disable)()
