"""Outcomes/s aggregated into 5 s windows by ONE streams worker, against the raw consume rate.

Steps (all on a real broker, topics under a unique prefix):

  a. produce N synthetic, valid SearchOutcome records onto <prefix>search_results, keyed like the
     router (outcome.window_key.as_str()): a deployment's candidate and last_good arms plus the
     no-deployment key, event times ascending over --span-s seconds (12 windows of 5 s by default).
     A real `start` command for that deployment goes onto the control topic first, so the worker
     judges and thresholds the windows exactly as in production.
  b. raw baseline: a plain aiokafka consumer (no group, default fetch settings) reads all N from the
     beginning and json-decodes each value.
  c. one `canary worker` subprocess started AFTER producing, on the same topics. Progress is read back
     afterwards from the worker's own window-state changelog: every micro-batch writes one changelog
     record holding the highest source offset applied per partition, timestamped by the worker when
     written. So:
        startup      = spawn → first batch aggregated (imports, Faust start, group join, recovery,
                       control-topic catch-up) — excluded from the rate
        aggregation  = first batch aggregated → last source offset aggregated; rate = outcomes
                       aggregated in between / that time (includes fetch, json, parse, window add,
                       window emission, changelog writes, commits: the whole agent loop)
        tail         = last offset aggregated → last window emitted (completion seen on the windows
                       topic: Σ response_count + Σ late_count = N). Dominated by grace + the 100 ms
                       tick: after input stops, the last window closes by the processing-time fallback.
  d. in-process, no Kafka: json.loads, SearchOutcome.from_dict, WindowFinalizer.add(+due) on batches of
     2000 and the per-batch state snapshot (to_dict, as the worker persists it), to show where the time
     goes.

    .venv/bin/python -m bench.bench_aggregation [-n 300000] [--span-s 60] [--core-n 100000] [--json]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    base_parser,
    delete_prefixed_topics,
    emit,
    fmt_rate,
    kafka,
    loadavg,
    log,
    machine,
    now_ms,
    process_cpu_s,
    rate,
    sigterm_as_exit,
    unique_prefix,
)
from canary.core.models import SearchOutcome, WindowKey, WindowResult
from canary.core.slo import default_policy
from canary.core.windows import WindowFinalizer
from canary.kafka.topics import Topics, ensure_topics
from canary.pipeline.policies import aggregator_for_policy
from tests.integration.harness import PRESETS, WorkerProcess, send_command, start_command

TARGET_RATE = 30_000.0
TARGET_RATIO = 0.5
PARTITIONS = 3
WINDOW_MS = 5000
GRACE_MS = 1000
CANDIDATE = "candidate_high_recall"
BATCH = 2000  # micro-batch size for the in-process core measurement


# -- synthetic outcomes ------------------------------------------------------------------------------------


def pick_deployment_id() -> str:
    """A deployment id whose three keys hash to three different partitions (as with murmur2 in Java),
    so all partitions of search_results carry traffic; which ones they hit is reported."""
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    for _ in range(1000):
        dep = f"canary_bench{uuid.uuid4().hex[:6]}"
        hit = {partitioner(k.encode(), parts, parts) for k in key_strings(dep)}
        if len(hit) == PARTITIONS:
            return dep
    return dep


def key_specs(dep: str) -> list[tuple[WindowKey, float]]:
    """(key, share of traffic): weight 0.2 inside the deployment, plus traffic outside any deployment."""
    return [
        (WindowKey(dep, CANDIDATE, "candidate"), 0.16),
        (WindowKey(dep, "last_good", "last_good"), 0.64),
        (WindowKey(None, "last_good", "last_good"), 0.20),
    ]


def key_strings(dep: str) -> list[str]:
    return [k.as_str() for k, _ in key_specs(dep)]


def synth_outcomes(n: int, dep: str, base_ms: int, span_ms: int, seed: int = 7) -> list[SearchOutcome]:
    rng = random.Random(seed)
    specs = key_specs(dep)
    keys = [k for k, _ in specs]
    weights = [w for _, w in specs]
    hashes = {k.config_name: PRESETS.get(k.config_name).content_hash for k in keys}
    versions = {k.config_name: PRESETS.get(k.config_name).to_dict()["metadata"]["version"] for k in keys}
    run = uuid.uuid4().hex[:8]
    chosen = rng.choices(keys, weights=weights, k=n)
    out = []
    for i, key in enumerate(chosen):
        error = "backend_error" if rng.random() < 0.005 else None
        slow = 1.25 if key.arm == "candidate" else 1.0
        latency = round(min(5000.0, rng.lognormvariate(math.log(120 * slow), 0.5)), 3)
        out.append(
            SearchOutcome(
                event_id=f"bench-router:{run}-{i}",
                request_id=f"{run}-{i}",
                ts=base_ms + (i * span_ms) // n,
                deployment_id=key.deployment_id,
                config_name=key.config_name,
                config_version=versions[key.config_name],
                config_hash=hashes[key.config_name],
                arm=key.arm,  # type: ignore[arg-type]
                latency_ms=latency,
                recall_at_10=None if error else round(rng.uniform(0.5, 0.95), 3),
                result_count=0 if error else 10,
                error=error,
                router_id="bench-router",
            )
        )
    return out


def encode(outcomes: Sequence[SearchOutcome]) -> list[tuple[bytes, bytes]]:
    return [(o.window_key.as_str().encode(), json.dumps(o.to_dict()).encode()) for o in outcomes]


# -- (a) produce -------------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=10, max_batch_size=512 * 1024, max_request_size=4 << 20
    )
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        by_partition: Counter[int] = Counter()
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                for meta in await asyncio.gather(*pending):
                    by_partition[meta.partition] += 1
                pending.clear()
        for meta in await asyncio.gather(*pending):
            by_partition[meta.partition] += 1
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"seconds": elapsed, "rate": rate(len(records), elapsed), "by_partition": dict(sorted(by_partition.items()))}


# -- (b) raw consumer --------------------------------------------------------------------------------------


async def raw_consume(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        count = 0
        checksum = 0
        started = time.perf_counter()
        while count < total:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    checksum += len(json.loads(record.value))
                count += len(records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    if count != expected:
        log(f"raw consumer read {count} records, expected {expected}")
    return {"records": count, "seconds": elapsed, "rate": rate(count, elapsed)}


# -- (c) worker --------------------------------------------------------------------------------------------


async def watch_windows(
    bootstrap: str, topic: str, keys: set[str], expected: int, timeout_s: float, worker: WorkerProcess
) -> dict[str, Any]:
    """Follow the windows topic until the emitted windows of our keys account for every outcome."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        counted = late = windows = 0
        first_emit: int | None = None
        done_emit: int | None = None
        done_seen: int | None = None
        cpu: list[tuple[int, float]] = []  # (wall ms, worker CPU s) samples
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
            used = process_cpu_s(worker.proc.pid) if worker.proc is not None else None
            if used is not None:
                cpu.append((now_ms(), used))
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    w = WindowResult.from_dict(json.loads(record.value))
                    if w.key.as_str() not in keys:
                        continue
                    windows += 1
                    counted += w.response_count
                    late += w.late_count
                    first_emit = w.emitted_at_ms if first_emit is None else min(first_emit, w.emitted_at_ms)
                    if done_emit is None and counted + late >= expected:
                        done_emit, done_seen = w.emitted_at_ms, now_ms()
            if done_emit is not None:
                break
        return {
            "complete": done_emit is not None,
            "aggregated": counted,
            "late": late,
            "windows": windows,
            "first_window_emitted_ms": first_emit,
            "complete_window_emitted_ms": done_emit,
            "complete_seen_ms": done_seen,
            "cpu_samples": cpu,
        }
    finally:
        await consumer.stop()


async def changelog_progress(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """(timestamp_ms, outcomes applied so far) per window-state changelog record, in time order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        # The client only tracks metadata of assigned topics; ask the cluster for everything.
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        events: list[tuple[int, str, int]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue
                    state = json.loads(r.value)
                    for p, off in state.get("offsets", {}).items():
                        events.append((r.timestamp, p, int(off) + 1))
    finally:
        await consumer.stop()
    events.sort()
    applied: dict[str, int] = {}
    curve = []
    for ts, p, n in events:
        applied[p] = max(applied.get(p, 0), n)
        curve.append((ts, sum(applied.values())))
    return curve


async def run_worker_phase(
    bootstrap: str, topics: Topics, n: int, keys: set[str], tmp: Path, timeout_s: float
) -> dict[str, Any]:
    worker = WorkerProcess(
        bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log", grace_ms=GRACE_MS
    )
    spawn_ms = now_ms()
    worker.start()
    try:
        watched = await watch_windows(bootstrap, topics.windows, keys, n, timeout_s, worker)
    finally:
        code = worker.stop()
        if code not in (0, None):
            log(f"worker exited with code {code}; log tail:\n{worker.log_tail(30)}")
    # The windows stage checkpoints each partition's state (with the highest offset applied) to the
    # compacted window-state topic at most every 500 ms: a progress curve at that resolution.
    curve = await changelog_progress(bootstrap, topics.window_state)
    cpu_samples = watched.pop("cpu_samples")
    out: dict[str, Any] = {"spawn_ms": spawn_ms, **watched, "changelog_records": len(curve)}
    if not curve:
        out["error"] = "no window-state checkpoint records found"
        return out
    first_ts, first_n = curve[0]
    full = next(((ts, c) for ts, c in curve if c >= n), curve[-1])
    out.update(
        first_batch_ms=first_ts,
        first_batch_outcomes=first_n,
        all_applied_ms=full[0],
        applied_total=full[1],
    )
    agg_s = (full[0] - first_ts) / 1000
    # One changelog record per partition per micro-batch that applied outcomes (plus one per tick emission).
    steps = [b - a for (_, a), (_, b) in itertools.pairwise(curve) if b > a]
    out["batches_applying"] = len(steps) + 1
    out["mean_outcomes_per_partition_batch"] = full[1] / (len(steps) + 1)
    out["worker_cpu_utilization"] = util = cpu_share(cpu_samples, first_ts, full[0])
    if util is not None and full[1] > first_n:
        out["cpu_us_per_outcome"] = util * agg_s * 1e6 / (full[1] - first_n)
    out["startup_s"] = (first_ts - spawn_ms) / 1000
    out["aggregation_s"] = agg_s
    out["aggregation_rate"] = rate(full[1] - first_n, agg_s)
    if watched["complete_window_emitted_ms"] is not None:
        out["tail_s"] = (watched["complete_window_emitted_ms"] - full[0]) / 1000
        out["first_batch_to_complete_s"] = (watched["complete_window_emitted_ms"] - first_ts) / 1000
        out["first_batch_to_complete_rate"] = rate(n, out["first_batch_to_complete_s"])
        out["spawn_to_complete_s"] = (watched["complete_window_emitted_ms"] - spawn_ms) / 1000
    # Steady-state rate over the middle 80 % of the progress curve (no first/last batch effects).
    lo = next((ts, c) for ts, c in curve if c >= 0.1 * n)
    hi = next(((ts, c) for ts, c in curve if c >= 0.9 * n), curve[-1])
    if hi[0] > lo[0]:
        out["steady_rate_10_90"] = rate(hi[1] - lo[1], (hi[0] - lo[0]) / 1000)
    return out


def cpu_share(samples: Sequence[tuple[int, float]], t0: int, t1: int) -> float | None:
    """Worker CPU seconds per wall second between t0 and t1 (1.0 = one core busy all the time)."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / ((inside[-1][0] - inside[0][0]) / 1000)


# -- (d) core, in-process ----------------------------------------------------------------------------------


def finalize_pass(parsed: Sequence[SearchOutcome], dep: str, batch: int) -> dict[str, Any]:
    """Feed outcomes to one WindowFinalizer per partition in micro-batches, as the windows agent does:
    add + due per batch, then the state snapshot it writes to the changelog (to_dict + JSON)."""
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    part_of = {k: partitioner(k.encode(), parts, parts) for k in key_strings(dep)}
    streams: dict[int, list[tuple[int, SearchOutcome]]] = {p: [] for p in parts}
    for o in parsed:
        p = part_of[o.window_key.as_str()]
        streams[p].append((len(streams[p]), o))
    # The windows stage no longer judges (the SLO agent does, from the windows' statistics): the
    # aggregator computes those statistics with the default policy's thresholds, as in production.
    aggregator = aggregator_for_policy(default_policy())
    finalizers = {p: WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator) for p in parts}
    batches = []
    for p, items in streams.items():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            batches.append((p, [o for _, o in chunk], [off for off, _ in chunk]))
    batches.sort(key=lambda b: b[1][0].ts)  # interleave partitions by event time, like a live fetch

    add_s = snap_s = 0.0
    emitted = 0
    clock = parsed[0].ts
    for p, chunk, offsets in batches:
        # A simulated clock that keeps pace with event time, so the watermark follows event time.
        clock = max(clock, chunk[-1].ts)
        t = time.perf_counter()
        finalizers[p].add(p, chunk, clock, offsets)
        emitted += len(finalizers[p].due(clock))
        t2 = time.perf_counter()
        json.dumps(finalizers[p].to_dict())
        add_s += t2 - t
        snap_s += time.perf_counter() - t2
    end = clock + 10 * WINDOW_MS
    emitted += sum(len(f.due(end)) for f in finalizers.values())
    n = len(parsed)
    return {
        "batch": batch,
        "batches": len(batches),
        "windows_emitted": emitted,
        "add_and_due_us": add_s / n * 1e6,
        "state_snapshot_us": snap_s / n * 1e6,
    }


def core_bench(outcomes: Sequence[SearchOutcome], dep: str, small_batch: int) -> dict[str, Any]:
    raw = [value for _, value in encode(outcomes)]
    n = len(raw)

    t = time.perf_counter()
    dicts = [json.loads(v) for v in raw]
    json_s = time.perf_counter() - t

    t = time.perf_counter()
    parsed = [SearchOutcome.from_dict(d) for d in dicts]
    parse_s = time.perf_counter() - t

    big = finalize_pass(parsed, dep, BATCH)
    small = finalize_pass(parsed, dep, small_batch)
    per = {
        "json_loads_us": json_s / n * 1e6,
        "from_dict_us": parse_s / n * 1e6,
        "add_and_due_us": big["add_and_due_us"],
        "state_snapshot_us": big["state_snapshot_us"],
    }
    total_us = sum(per.values())
    small_total = per["json_loads_us"] + per["from_dict_us"] + small["add_and_due_us"] + small["state_snapshot_us"]
    return {
        "outcomes": n,
        "batches": big["batches"],
        "windows_emitted": big["windows_emitted"],
        "per_outcome_us": per,
        "small_batches": {**small, "total_us": small_total, "core_ceiling": 1e6 / small_total},
        "rates": {
            "json_loads": rate(n, json_s),
            "from_dict": rate(n, parse_s),
            "json_plus_from_dict": rate(n, json_s + parse_s),
            "add_and_due": 1e6 / per["add_and_due_us"],
            "core_ceiling": 1e6 / total_us if total_us else math.nan,
        },
    }


# -- main --------------------------------------------------------------------------------------------------


def run(args: Any) -> dict[str, Any]:
    n = args.n
    span_ms = int(args.span_s * 1000)
    dep = pick_deployment_id()
    keys = set(key_strings(dep))
    result: dict[str, Any] = {"benchmark": "aggregation", "machine": machine(), "n": n, "span_s": args.span_s}

    with kafka() as target, tempfile.TemporaryDirectory(prefix="canary-bench-agg-") as tmp_text:
        tmp = Path(tmp_text)
        topics = Topics(unique_prefix("agg"))
        result["kafka"] = target.describe()
        result["topic_prefix"] = topics.prefix
        try:
            ensure_topics(target.bootstrap, topics)
            start = start_command(CANDIDATE, weight=0.2, deployment_id=dep)
            asyncio.run(send_command(target.bootstrap, topics, start))

            base = now_ms() - span_ms - 2 * WINDOW_MS
            base -= base % WINDOW_MS
            log(f"building {n:,} outcomes over {args.span_s:g} s of event time, keys {sorted(keys)}")
            outcomes = synth_outcomes(n, dep, base, span_ms)
            records = encode(outcomes)
            result["avg_record_bytes"] = round(sum(len(k) + len(v) for k, v in records) / n, 1)

            log(f"(a) producing {n:,} records onto {topics.search_results}")
            produced = asyncio.run(produce(target.bootstrap, topics.search_results, records))
            del records
            result["produce"] = produced
            log(f"    {fmt_rate(produced['rate'])} in {produced['seconds']:.1f}s {produced['by_partition']}")

            log("(b) raw aiokafka consumer: read all + json.loads each")
            raw = asyncio.run(raw_consume(target.bootstrap, topics.search_results, n))
            result["raw_consumer"] = raw
            log(f"    {fmt_rate(raw['rate'])} ({raw['seconds']:.1f}s)")

            log("(c) one `canary worker` subprocess on the produced backlog")
            worker = asyncio.run(run_worker_phase(target.bootstrap, topics, n, keys, tmp, args.timeout_s))
            result["worker"] = worker
            if not worker.get("complete"):
                log(f"    worker did not account for all {n} outcomes within {args.timeout_s:.0f}s")
        finally:
            if target.external and not args.keep_topics:
                delete_prefixed_topics(target.bootstrap, topics.prefix)

        log(f"(d) in-process core on {min(n, args.core_n):,} outcomes (no Kafka)")
        result["core"] = core_bench(outcomes[: args.core_n], dep, args.core_small_batch)

    agg_rate = result["worker"].get("aggregation_rate", math.nan)
    ratio = agg_rate / raw["rate"] if raw["rate"] else math.nan
    result["ratio_worker_to_raw"] = ratio
    result["machine"]["loadavg_at_end"] = loadavg()
    result["targets"] = {
        "rate_min": TARGET_RATE,
        "ratio_min": TARGET_RATIO,
        "rate_met": bool(agg_rate >= TARGET_RATE),
        "ratio_met": bool(ratio >= TARGET_RATIO),
    }
    return result


def render(r: dict[str, Any]) -> str:
    w, raw, core = r["worker"], r["raw_consumer"], r["core"]
    t = r["targets"]
    m = r["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']} "
        "(other work on the machine competes for the CPUs)",
        f"Aggregation throughput — {r['n']:,} outcomes over {r['span_s']:g} s of event time "
        f"({r['avg_record_bytes']:.0f} B/record), {r['kafka']}, prefix {r['topic_prefix']}",
        f"  produce (aiokafka, acks=1)      {fmt_rate(r['produce']['rate']):>12}   "
        f"per partition {r['produce']['by_partition']}",
        f"  raw consumer + json.loads       {fmt_rate(raw['rate']):>12}   "
        f"({raw['seconds']:.2f} s for {raw['records']:,})",
    ]
    if "aggregation_rate" in w:
        lines += [
            f"  ONE worker, aggregation         {fmt_rate(w['aggregation_rate']):>12}   "
            f"({w['applied_total'] - w['first_batch_outcomes']:,} outcomes in {w['aggregation_s']:.2f} s, "
            f"first batch → last offset applied)",
        ]
        if w.get("worker_cpu_utilization") is not None:
            lines.append(
                f"    worker CPU while aggregating   {w['worker_cpu_utilization']:.2f} cores busy; "
                f"{w['batches_applying']} partition micro-batches, "
                f"mean {w['mean_outcomes_per_partition_batch']:.0f} outcomes each"
            )
        if "steady_rate_10_90" in w:
            lines.append(f"    steady state 10 %→90 % applied  {fmt_rate(w['steady_rate_10_90']):>10}")
        if w.get("complete"):
            lines += [
                f"    first batch → all windows out  {fmt_rate(w['first_batch_to_complete_rate']):>10}   "
                f"({w['first_batch_to_complete_s']:.2f} s, includes the close-out tail below)",
                f"    worker startup (not counted)   {w['startup_s']:.2f} s spawn → first batch aggregated",
                f"    close-out tail (not counted)   {w['tail_s']:.2f} s last offset → last window emitted "
                f"(grace {GRACE_MS} ms + tick: processing-time fallback)",
                f"    spawn → complete               {w['spawn_to_complete_s']:.2f} s; "
                f"{w['windows']} windows, Σ response_count {w['aggregated']:,}, late {w['late']:,}",
            ]
        else:
            lines.append(f"    INCOMPLETE: windows account for {w['aggregated'] + w['late']:,} of {r['n']:,}")
    else:
        lines.append(f"  ONE worker: {w.get('error', 'no figures')}")
    lines += [
        f"  ratio worker / raw              {r['ratio_worker_to_raw']:.2f}",
        f"  target ≥ {t['rate_min']:,.0f} outcomes/s: {'MET' if t['rate_met'] else 'NOT MET'};  "
        f"target ratio ≥ {t['ratio_min']}: {'MET' if t['ratio_met'] else 'NOT MET'}",
        f"  core in-process, {core['outcomes']:,} outcomes in {core['batches']} batches of ≤{BATCH} (µs per outcome):",
    ]
    per = core["per_outcome_us"]
    rates = core["rates"]
    lines += [
        f"    json.loads            {per['json_loads_us']:6.2f} µs  ({fmt_rate(rates['json_loads'])})",
        f"    SearchOutcome.from_dict {per['from_dict_us']:4.2f} µs  ({fmt_rate(rates['from_dict'])})",
        f"    WindowFinalizer.add+due {per['add_and_due_us']:4.2f} µs  ({fmt_rate(rates['add_and_due'])})",
        f"    state snapshot         {per['state_snapshot_us']:5.2f} µs  "
        "(to_dict + json.dumps once per batch per partition, amortized)",
        f"    core ceiling (sum)    {sum(per.values()):6.2f} µs  ({fmt_rate(rates['core_ceiling'])})",
        f"    same with batches of {core['small_batches']['batch']} (about the live size): "
        f"{core['small_batches']['total_us']:.2f} µs ({fmt_rate(core['small_batches']['core_ceiling'])})",
    ]
    if w.get("cpu_us_per_outcome"):
        lines.append(
            f"  worker CPU per outcome ≈ {w['cpu_us_per_outcome']:.0f} µs vs the core's reference path "
            f"{sum(per.values()):.0f} µs: the worker's windows stage fetches whole batches (aiokafka getmany) "
            "and decodes with the validator-equivalent fast path (canary/replay/decode.py) instead of "
            "json.loads + SearchOutcome.from_dict"
        )
    return "\n".join(lines)


def main() -> int:
    parser = base_parser("outcomes/s aggregated by one streams worker vs. a raw consumer")
    parser.add_argument("-n", type=int, default=300_000, help="outcomes to produce (default 300000)")
    parser.add_argument("--span-s", type=float, default=60.0, help="event-time span of the outcomes (default 60)")
    parser.add_argument("--core-n", type=int, default=100_000, help="outcomes for the in-process core part")
    parser.add_argument(
        "--core-small-batch", type=int, default=100, help="second core pass with batches this small (live size)"
    )
    parser.add_argument("--timeout-s", type=float, default=240.0, help="give up on the worker after this long")
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()
    with sigterm_as_exit():
        result = run(args)
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
