"""Router throughput with a no-op backend, and the per-request cost of split + publish.

All Kafka parts run on a real broker (KAFKA_BOOTSTRAP_SERVERS, or a local broker started here), topics
under a unique prefix. A real ``start`` command (candidate_high_recall, weight 0.1) goes onto the
control topic first, so every router below has a running canary and the split is exercised.

  1. throughput: N valid search requests are produced onto <prefix>search_requests, then ONE
     RouterService (consume_requests=True, default max_in_flight, NoopBackend) is started in this
     process and works off the backlog. Progress = outcomes published, i.e. the sum of the end offsets
     of <prefix>search_results (acks=all: written and replicated), polled every 50 ms from a separate
     consumer in the same event loop.
        startup   = router.start() → first outcome published (control catch-up, group join) — not counted
        rate      = (N − outcomes at first sample) / (first outcome → N outcomes published)
     The bench process's CPU time over that interval (the router is the only busy thing in it) and the
     machine's busy CPU (from /proc/stat, includes the broker) are reported.
  2. per-request overhead, in-process, on a RouterService (consume_requests=False) that has applied the
     same start command from the control topic, timed per call with time.perf_counter_ns:
        route            router.route(request) alone: the split decision (blake2b bucket) + ConfigUsed
        split+publish    what RouterService._handle + _publish_outcome do apart from the search itself:
                         route, stats, SearchOutcome construction, recall@10, key + json encoding and
                         ``await producer.send(...)`` (enqueue into the router's own producer; the ack is
                         NOT awaited inside the timed section). Requests are timed in chunks of
                         --chunk and the chunk's acks are awaited (untimed) before the next chunk, so no
                         timed send waits for a full 16 KB batch to drain.
        _handle          the real RouterService._handle (NoopBackend, asyncio.timeout, stats, outcome,
                         publish) with the router's producer wrapped so send_and_wait only enqueues —
                         the same as split+publish plus the coroutine/timeout machinery.
        send_and_wait    for context: the awaited ack latency of the router's producer (acks=all,
                         idempotent, linger 2 ms), one at a time and with max_in_flight concurrent senders.
  3. when a target is not met (``--profile auto``), cProfile a separate, smaller throughput pass
     (--profile-n requests on fresh topics) and/or the split+publish loop, and print where the time goes
     and which changes in router/service.py would address it (the bench changes nothing there).
  4. --what-if N (off by default): throughput passes with those changes patched in by the bench.

Targets printed (MET / NOT MET): ≥ 20 000 requests/s per router process; split+publish p99 ≤ 50 µs.

    .venv/bin/python -m bench.bench_router [-n 100000] [--route-n 200000] [--publish-n 20000] [--what-if N] [--json]
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import itertools
import json
import math
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    base_parser,
    control_keys,
    delete_prefixed_topics,
    emit,
    fmt_rate,
    kafka,
    loadavg,
    log,
    machine,
    percentile,
    rate,
    sigterm_as_exit,
    unique_prefix,
)
from canary.core.models import SearchOutcome
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import preset_ref, send_command, start_command
from router.requests import SearchRequest, recall_at_10
from router.service import RouterService, now_ms

TARGET_RATE = 20_000.0
TARGET_P99_US = 50.0
CANDIDATE = "candidate_high_recall"
WEIGHT = 0.1
USERS = 4000
QUERIES = 200
POLL_S = 0.05
MAX_IN_FLIGHT = 256  # RouterService's default (router.main.serve does not override it)


class NoopBackend:
    """A SearchBackend that does no work: returns the same 10 ids at once, whatever the query."""

    RESULTS: tuple[str, ...] = tuple(f"doc-{i}" for i in range(10))

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        return self.RESULTS


# -- requests ----------------------------------------------------------------------------------------------


def make_request(i: int, run: str) -> SearchRequest:
    q = i % QUERIES
    return SearchRequest(
        request_id=f"{run}-{i}",
        query=f"q{q}",
        collection="documents",
        user_id=f"user-{i % USERS}",
        ts=now_ms(),
        relevant_ids=(f"doc-{q % 10}", f"doc-{10 + q % 7}", f"doc-{20 + q % 5}"),
    )


async def produce_requests(bootstrap: Cluster, topic: str, n: int) -> dict[str, Any]:
    """N valid requests keyed by user id (as a service would), produced as fast as aiokafka allows."""
    run = uuid.uuid4().hex[:8]
    producer = AIOKafkaProducer(
        **client_kwargs(bootstrap), acks=1, linger_ms=10, max_batch_size=512 * 1024, max_request_size=4 << 20
    )
    await producer.start()
    size = 0
    try:
        started = time.perf_counter()
        pending = []
        for i in range(n):
            req = make_request(i, run)
            value = json.dumps(req.to_dict()).encode()
            size += len(value)
            pending.append(await producer.send(topic, value, key=(req.user_id or "").encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"n": n, "seconds": elapsed, "rate": rate(n, elapsed), "avg_value_bytes": round(size / max(n, 1), 1)}


def prepare_topics(bootstrap: Cluster, name: str, n: int) -> tuple[Topics, str, dict[str, Any]]:
    """Fresh topics, a running canary on the control topic, N requests on search_requests."""
    topics = Topics(unique_prefix(name))
    ensure_topics(bootstrap, topics)
    cmd = start_command(CANDIDATE, weight=WEIGHT)
    asyncio.run(send_command(bootstrap, topics, cmd))
    produced = asyncio.run(produce_requests(bootstrap, topics.search_requests, n)) if n else {}
    return topics, cmd.deployment_id, produced


def check_canary(router: RouterService, deployment_id: str) -> None:
    dep = router.ledger.current
    if dep is None or dep.deployment_id != deployment_id or dep.status != "running":
        raise RuntimeError(f"router did not pick up the running canary {deployment_id}: {dep}")


# -- machine CPU -------------------------------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat (busy = everything but idle and iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def busy_cpus(before: tuple[int, int] | None, after: tuple[int, int] | None, cpus: int) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * cpus


# -- (1) throughput ----------------------------------------------------------------------------------------


async def throughput_pass(
    bootstrap: Cluster,
    topics: Topics,
    deployment_id: str,
    n: int,
    timeout_s: float,
    profiler: cProfile.Profile | None,
    router_cls: type[RouterService] = RouterService,
) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    watcher = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await watcher.start()
    tps = [TopicPartition(topics.search_results, p) for p in range(3)]

    last_ends: dict[TopicPartition, int] = {}

    async def published() -> int:
        last_ends.update(await watcher.end_offsets(tps))
        return sum(last_ends.values())

    base = await published()  # 0 on fresh topics
    router = router_cls(
        bootstrap,
        topics,
        NoopBackend(),
        preset_ref("last_good"),
        router_id=f"bench-router-{uuid.uuid4().hex[:6]}",
        consume_requests=True,
        max_in_flight=MAX_IN_FLIGHT,
    )
    samples: list[tuple[float, int, int]] = []  # (perf_counter, outcomes published, router.stats.requests)
    res: dict[str, Any] = {"n": n, "max_in_flight": MAX_IN_FLIGHT}
    if profiler is not None:
        profiler.enable()
    t_start = time.perf_counter()
    try:
        await router.start()
        t_started = time.perf_counter()
        check_canary(router, deployment_id)
        first: tuple[float, int, float, tuple[int, int] | None] | None = None  # (t, count, process cpu, ticks)
        deadline = t_start + timeout_s
        done = False
        while time.perf_counter() < deadline:
            count = await published() - base
            now = time.perf_counter()
            samples.append((now, count, router.stats.requests))
            if first is None and count > 0:
                first = (now, count, time.process_time(), cpu_ticks())
            if count >= n:
                done = True
                break
            await asyncio.sleep(POLL_S)
        t_end = time.perf_counter()
        cpu_end, ticks_end = time.process_time(), cpu_ticks()
    finally:
        if profiler is not None:
            profiler.disable()
        await router.stop()
        await watcher.stop()
    count = samples[-1][1] if samples else 0
    res.update(
        complete=done,
        by_partition={tp.partition: end for tp, end in sorted(last_ends.items())},
        published=count,
        start_s=t_started - t_start,
        by_arm=dict(router.stats.by_arm),
        errors=router.stats.errors,
        invalid_requests=router.stats.invalid_requests,
    )
    handled = sum(router.stats.by_arm.values())
    res["candidate_share"] = router.stats.by_arm["candidate"] / handled if handled else math.nan
    if first is None:
        res["error"] = f"no outcome published within {timeout_s:.0f}s"
        return res
    t_first, c_first, cpu_first, ticks_first = first
    span = t_end - t_first
    res.update(
        startup_s=t_first - t_start,
        outcomes_at_first_sample=c_first,
        measured_outcomes=count - c_first,
        seconds=span,
        rate=rate(count - c_first, span),
        router_process_cpus=(cpu_end - cpu_first) / span if span > 0 else math.nan,
        cpus=cpus,
        machine_busy_cpus=busy_cpus(ticks_first, ticks_end, cpus),
        cpu_us_per_request=(cpu_end - cpu_first) / (count - c_first) * 1e6 if count > c_first else math.nan,
    )
    # steady state: interpolate the times at which 10 % and 90 % of N were published
    marks = {}
    for frac in (0.1, 0.9):
        goal = frac * n
        for (t0, c0, _), (t1, c1, _) in itertools.pairwise(samples):
            if c0 < goal <= c1:
                marks[frac] = t0 + (t1 - t0) * (goal - c0) / (c1 - c0)
                break
    if len(marks) == 2 and marks[0.9] > marks[0.1]:
        res["steady_rate_10_90"] = 0.8 * n / (marks[0.9] - marks[0.1])
    # how far request intake runs ahead of publishing (≈ requests waiting for their ack)
    res["max_started_minus_published"] = max((s - c for _, c, s in samples), default=0)
    return res


# -- (2) per-request overhead ------------------------------------------------------------------------------


async def split_and_publish(
    router: RouterService, producer: AIOKafkaProducer, request: SearchRequest, results: list[str]
) -> asyncio.Future[Any]:
    """RouterService._handle + _publish_outcome without the search and without awaiting the ack."""
    _config, used = router.route(request)
    router.stats.requests += 1
    router.stats.by_arm[used.arm] += 1
    if used.arm == "candidate":
        router.stats.last_candidate_dispatch_ms = now_ms()
    started = time.perf_counter()
    latency_ms = (time.perf_counter() - started) * 1000.0
    outcome = SearchOutcome(
        event_id=f"{router.router_id}:{request.request_id}",
        request_id=request.request_id,
        ts=now_ms(),
        deployment_id=used.deployment_id,
        config_name=used.name,
        config_version=used.version,
        config_hash=used.content_hash,
        arm=used.arm,
        latency_ms=round(latency_ms, 3),
        recall_at_10=recall_at_10(results, request.relevant_ids),
        result_count=len(results),
        error=None,
        router_id=router.router_id,
    )
    key = outcome.window_key.as_str().encode()
    return await producer.send(router.topics.search_results, json.dumps(outcome.to_dict()).encode(), key=key)


def build_outcome(router: RouterService, request: SearchRequest, results: list[str]) -> SearchOutcome:
    _config, used = router.route(request)
    return SearchOutcome(
        event_id=f"{router.router_id}:{request.request_id}",
        request_id=request.request_id,
        ts=now_ms(),
        deployment_id=used.deployment_id,
        config_name=used.name,
        config_version=used.version,
        config_hash=used.content_hash,
        arm=used.arm,
        latency_ms=0.012,
        recall_at_10=recall_at_10(results, request.relevant_ids),
        result_count=len(results),
        error=None,
        router_id=router.router_id,
    )


async def components(router: RouterService, requests: Sequence[SearchRequest], n: int, chunk: int) -> dict[str, Any]:
    """Mean cost of each step of split+publish, each in its own tight loop (no per-call timer, no profiler)."""
    assert router._producer is not None
    producer = router._producer
    results = list(NoopBackend.RESULTS)
    reqs = [requests[i % len(requests)] for i in range(n)]
    clock = time.perf_counter_ns
    out: dict[str, float] = {}

    t0 = clock()
    routed = [router.route(r)[1] for r in reqs]
    out["route"] = (clock() - t0) / n / 1000
    t0 = clock()
    outcomes = [
        SearchOutcome(
            event_id=f"{router.router_id}:{r.request_id}",
            request_id=r.request_id,
            ts=now_ms(),
            deployment_id=u.deployment_id,
            config_name=u.name,
            config_version=u.version,
            config_hash=u.content_hash,
            arm=u.arm,
            latency_ms=round(0.0123456, 3),
            recall_at_10=recall_at_10(results, r.relevant_ids),
            result_count=len(results),
            error=None,
            router_id=router.router_id,
        )
        for r, u in zip(reqs, routed, strict=True)
    ]
    out["outcome"] = (clock() - t0) / n / 1000
    t0 = clock()
    keys = [o.window_key.as_str().encode() for o in outcomes]
    out["key"] = (clock() - t0) / n / 1000
    t0 = clock()
    values = [json.dumps(o.to_dict()).encode() for o in outcomes]
    out["value_json"] = (clock() - t0) / n / 1000
    partitioner = DefaultPartitioner()
    parts = [0, 1, 2]
    t0 = clock()
    for key in keys:
        partitioner(key, parts, parts)
    out["partitioner_murmur2"] = (clock() - t0) / n / 1000
    total = 0
    topic = router.topics.search_results
    for start in range(0, n, chunk):
        futures = []
        for i in range(start, min(n, start + chunk)):
            t0 = clock()
            futures.append(await producer.send(topic, values[i], key=keys[i]))
            total += clock() - t0
        await asyncio.gather(*futures)
    out["send_enqueue"] = total / n / 1000
    return {
        "n": n,
        "mean_us": out,
        "avg_value_bytes": sum(map(len, values)) / n,
        "avg_key_bytes": sum(map(len, keys)) / n,
    }


def dist_us(samples_ns: Sequence[int]) -> dict[str, float | int]:
    us = [s / 1000.0 for s in samples_ns]
    return {
        "n": len(us),
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "p999_us": percentile(us, 99.9),
        "max_us": max(us) if us else math.nan,
        "mean_us": sum(us) / len(us) if us else math.nan,
    }


async def timed_split_publish(
    router: RouterService, requests: Sequence[SearchRequest], n: int, chunk: int, profiler: cProfile.Profile | None
) -> list[int]:
    assert router._producer is not None
    producer = router._producer
    results = list(NoopBackend.RESULTS)
    clock = time.perf_counter_ns
    out: list[int] = []
    for start in range(0, n, chunk):
        futures = []
        if profiler is not None:
            profiler.enable()
        for i in range(start, min(n, start + chunk)):
            req = requests[i % len(requests)]
            t0 = clock()
            fut = await split_and_publish(router, producer, req, results)
            t1 = clock()
            out.append(t1 - t0)
            futures.append(fut)
        if profiler is not None:
            profiler.disable()
        await asyncio.gather(*futures)  # untimed: acks, so the next chunk starts with drained batches
    return out


async def timed_handle(router: RouterService, requests: Sequence[SearchRequest], n: int, chunk: int) -> list[int]:
    """The real ``RouterService._handle`` with ``wait_ack=False`` (what the Kafka intake path does)."""
    clock = time.perf_counter_ns
    out: list[int] = []
    for start in range(0, n, chunk):
        acks = []
        for i in range(start, min(n, start + chunk)):
            req = requests[i % len(requests)]
            t0 = clock()
            _, _, ack, _ = await router._handle(req, wait_ack=False)
            t1 = clock()
            out.append(t1 - t0)
            acks.append(ack)
        await asyncio.gather(*acks)
    return out


async def timed_send_and_wait(
    producer: AIOKafkaProducer, topic: str, payloads: Sequence[tuple[bytes, bytes]], concurrency: int
) -> tuple[list[int], float]:
    clock = time.perf_counter_ns
    out: list[int] = []
    it = iter(payloads)

    async def sender() -> None:
        for key, value in it:
            t0 = clock()
            await producer.send_and_wait(topic, value, key=key)
            out.append(clock() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return out, time.perf_counter() - started


async def overhead_pass(bootstrap: Cluster, topics: Topics, deployment_id: str, args: Any) -> dict[str, Any]:
    router = RouterService(
        bootstrap,
        topics,
        NoopBackend(),
        preset_ref("last_good"),
        router_id=f"bench-overhead-{uuid.uuid4().hex[:6]}",
        consume_requests=False,
    )
    await router.start()
    res: dict[str, Any] = {"chunk": args.chunk}
    try:
        check_canary(router, deployment_id)
        run = uuid.uuid4().hex[:8]
        requests = [make_request(i, run) for i in range(20_000)]
        clock = time.perf_counter_ns

        # (a) route alone, after a warm-up
        route = router.route
        for req in requests[:5000]:
            route(req)
        arms: Counter[str] = Counter()
        route_ns: list[int] = []
        for i in range(args.route_n):
            req = requests[i % len(requests)]
            t0 = clock()
            _, used = route(req)
            t1 = clock()
            route_ns.append(t1 - t0)
            arms[used.arm] += 1
        res["route"] = dist_us(route_ns)
        res["route"]["candidate_share"] = arms["candidate"] / max(1, sum(arms.values()))
        # timer floor: two clock reads back to back
        floor = []
        for _ in range(100_000):
            t0 = clock()
            t1 = clock()
            floor.append(t1 - t0)
        res["timer_floor"] = dist_us(floor)
        del route_ns, floor

        # (b) split + outcome + enqueue
        await timed_split_publish(router, requests, 2000, args.chunk, None)  # warm-up
        sp_ns = await timed_split_publish(router, requests, args.publish_n, args.chunk, None)
        res["split_publish"] = dist_us(sp_ns)
        # the first send of a chunk comes after the acks, so it opens a new producer batch
        res["split_publish_first_in_chunk"] = dist_us(sp_ns[:: args.chunk])
        res["split_publish_rest"] = dist_us([v for i, v in enumerate(sp_ns) if i % args.chunk])
        del sp_ns
        if args.profile == "always" or (args.profile == "auto" and res["split_publish"]["p99_us"] > TARGET_P99_US):
            # a separate pass: the profiler's overhead must not count in the figure above
            profiler = cProfile.Profile()
            await timed_split_publish(router, requests, args.publish_n, args.chunk, profiler)
            res["split_publish_profile"] = profile_text(profiler, 18)

        res["components"] = await components(router, requests, min(args.publish_n, 20_000), args.chunk)

        # (c) the real _handle with an enqueue-only producer
        await timed_handle(router, requests, 2000, args.chunk)  # warm-up
        res["handle"] = dist_us(await timed_handle(router, requests, args.publish_n, args.chunk))

        # (d) awaited ack latency, for context
        assert router._producer is not None
        results = list(NoopBackend.RESULTS)
        payloads = []
        for i in range(max(args.ack_n, args.ack_concurrent_n)):
            outcome = build_outcome(router, requests[i % len(requests)], results)
            payloads.append((outcome.window_key.as_str().encode(), json.dumps(outcome.to_dict()).encode()))
        seq, _ = await timed_send_and_wait(router._producer, topics.search_results, payloads[: args.ack_n], 1)
        res["send_and_wait_sequential"] = dist_us(seq)
        conc, secs = await timed_send_and_wait(
            router._producer, topics.search_results, payloads[: args.ack_concurrent_n], MAX_IN_FLIGHT
        )
        res["send_and_wait_concurrent"] = {
            **dist_us(conc),
            "concurrency": MAX_IN_FLIGHT,
            "rate": rate(len(conc), secs),
        }

    finally:
        await router.stop()
    return res


# -- (3) profiles ------------------------------------------------------------------------------------------


def profile_text(profiler: cProfile.Profile, top: int) -> str:
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    # drop pstats' header lines, keep the table
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("ncalls"):
            return "\n".join(lines[i:]).rstrip()
    return text.rstrip()


AREAS = (
    ("aiokafka producer (send, batching, sender, acks)", ("aiokafka/producer", "aiokafka/record")),
    ("aiokafka consumer (fetch, decode records)", ("aiokafka/consumer",)),
    ("aiokafka client/connection/protocol", ("aiokafka/",)),
    ("asyncio (tasks, futures, loop, timeout, locks)", ("asyncio/",)),
    ("json encode/decode", ("json/",)),
    ("router/*", ("/router/",)),
    ("canary/* (models, ledger)", ("/canary/",)),
    ("bench (NoopBackend, poller)", ("/bench/",)),
)


def profile_by_area(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    """Self time (tottime) grouped by where the code lives; built-ins are attributed to '~ builtins'."""
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.items():
        if filename == "~":
            area = f"builtins: {func}" if tt > 0 else "builtins"
        else:
            path = filename.replace("\\", "/")
            area = next((name for name, marks in AREAS if any(m in path for m in marks)), "other Python")
        totals[area] += tt
    grand = sum(totals.values()) or 1.0
    big = [(a, t / grand) for a, t in totals.most_common() if t / grand >= 0.01 or not a.startswith("builtins")]
    return big[:20]


def calls(profiler: cProfile.Profile, path_suffix: str, func: str) -> int:
    """Calls of functions named ``func`` in files ending with ``path_suffix`` (the largest count if several)."""
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    found = [v[1] for (f, _l, fn), v in stats.items() if fn == func and f.replace("\\", "/").endswith(path_suffix)]
    return max(found, default=0)


def profile_throughput(bootstrap: Cluster, n: int, timeout_s: float) -> dict[str, Any]:
    topics, dep, _ = prepare_topics(bootstrap, "routerprof", n)
    profiler = cProfile.Profile()
    res = asyncio.run(throughput_pass(bootstrap, topics, dep, n, timeout_s, profiler))
    sends = calls(profiler, "aiokafka/producer/producer.py", "_partition")
    # add_message loops (batch.append) until the record fits; every extra round was a wait for a drain
    appends = calls(profiler, "aiokafka/producer/message_accumulator.py", "append")
    by_area = profile_by_area(profiler)
    return {
        "topics": topics.prefix,
        "rate_under_profiler": res.get("rate"),
        "complete": res.get("complete"),
        "sends": sends,
        "accumulator_waits_per_send": (appends - sends) / sends if sends else math.nan,
        "asyncio_share": sum(share for area, share in by_area if area.startswith("asyncio")),
        "by_area": by_area,
        "top": profile_text(profiler, 25),
    }


# -- (4) what-if: the router with the changes suggested below (opt-in, --what-if) -------------------------


class CachingPartitioner:
    """aiokafka's DefaultPartitioner (murmur2, pure Python) memoized per key: outcome keys are a handful of
    window keys, so each is hashed once."""

    def __init__(self) -> None:
        self._inner = DefaultPartitioner()
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._inner(key, all_partitions, available))
        slot = (key, len(all_partitions))
        part = self._cache.get(slot)
        if part is None:
            part = self._cache[slot] = int(self._inner(key, all_partitions, available))
        return part


class NoAckWaitRouter(RouterService):
    """APPROXIMATION of "release the request slot on the ack, not after awaiting it": _publish_outcome only
    enqueues. Unlike the real change, offsets may be committed before the outcome is acked."""

    async def _publish_outcome(self, outcome: SearchOutcome) -> None:
        assert self._producer is not None
        key = outcome.window_key.as_str().encode()
        await self._producer.send(self.topics.search_results, json.dumps(outcome.to_dict()).encode(), key=key)


def what_if(bootstrap: Cluster, n: int, timeout_s: float) -> list[dict[str, Any]]:
    """Throughput passes with the router's producer / publish patched, cumulatively, on fresh topics each."""
    import router.service as service_module

    real_producer = service_module.AIOKafkaProducer

    def producer_with(**extra: Any) -> Any:
        def factory(**kwargs: Any) -> AIOKafkaProducer:
            return real_producer(**{**kwargs, **extra})

        return factory

    variants: list[tuple[str, dict[str, Any], type[RouterService]]] = [
        ("as shipped", {}, RouterService),
        ("producer max_batch_size 1 MiB", {"max_batch_size": 1 << 20}, RouterService),
        ("+ memoized partitioner", {"max_batch_size": 1 << 20, "partitioner": "cache"}, RouterService),
        (
            "+ publish without awaiting the ack (approx.)",
            {"max_batch_size": 1 << 20, "partitioner": "cache"},
            NoAckWaitRouter,
        ),
    ]
    out = []
    for name, extra, cls in variants:
        topics, dep, _ = prepare_topics(bootstrap, "routerwhatif", n)
        if extra.get("partitioner") == "cache":
            extra = {**extra, "partitioner": CachingPartitioner()}
        service_module.AIOKafkaProducer = producer_with(**extra)  # type: ignore[misc]
        try:
            res = asyncio.run(throughput_pass(bootstrap, topics, dep, n, timeout_s, None, cls))
        finally:
            service_module.AIOKafkaProducer = real_producer  # type: ignore[misc]
        out.append({"variant": name, "topics": topics.prefix, **res})
        log(f"    what-if {name}: {fmt_rate(res.get('rate', math.nan))}")
    return out


# -- main --------------------------------------------------------------------------------------------------


def run(args: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "router", "machine": machine(), "n": args.n}
    prefixes: list[str] = []
    with kafka() as target:
        result["kafka"] = target.describe()
        try:
            log(f"(1) producing {args.n:,} search requests (canary {CANDIDATE} at weight {WEIGHT} running)")
            topics, dep, produced = prepare_topics(target.bootstrap, "router", args.n)
            prefixes.append(topics.prefix)
            result["topic_prefix"] = topics.prefix
            result["deployment_id"] = dep
            result["produce"] = produced
            log(f"    {fmt_rate(produced['rate'])} in {produced['seconds']:.1f}s, {produced['avg_value_bytes']} B each")

            log("    ONE RouterService (NoopBackend) on the backlog")
            gc.collect()
            tp = asyncio.run(throughput_pass(target.bootstrap, topics, dep, args.n, args.timeout_s, None))
            result["throughput"] = tp
            if "rate" in tp:
                log(f"    {fmt_rate(tp['rate'])} ({tp['measured_outcomes']:,} outcomes in {tp['seconds']:.1f}s)")
            else:
                log(f"    {tp.get('error')}")

            log(f"(2) in-process overhead: route × {args.route_n:,}, split+publish and _handle × {args.publish_n:,}")
            gc.collect()
            ov = asyncio.run(overhead_pass(target.bootstrap, topics, dep, args))
            result["overhead"] = ov

            rate_met = bool(tp.get("rate", math.nan) >= TARGET_RATE)
            p99_met = bool(ov["split_publish"]["p99_us"] <= TARGET_P99_US)
            result["targets"] = {
                "rate_min": TARGET_RATE,
                "split_publish_p99_max_us": TARGET_P99_US,
                "rate_met": rate_met,
                "split_publish_p99_met": p99_met,
            }
            want = args.profile == "always"
            if (want or (args.profile == "auto" and not rate_met)) and args.profile_n > 0:
                log(f"(3) cProfile of a throughput pass over {args.profile_n:,} requests (fresh topics)")
                prof = profile_throughput(target.bootstrap, args.profile_n, args.timeout_s)
                prefixes.append(prof["topics"])
                result["throughput_profile"] = prof
            if args.what_if > 0:
                log(f"(4) what-if: throughput with the suggested changes patched in, {args.what_if:,} requests each")
                result["what_if"] = what_if(target.bootstrap, args.what_if, args.timeout_s)
                prefixes += [w["topics"] for w in result["what_if"]]
        finally:
            if target.external and not args.keep_topics:
                for prefix in prefixes:
                    delete_prefixed_topics(target.bootstrap, prefix)
    result["machine"]["loadavg_at_end"] = loadavg()
    return result


def steps_sum(mean_us: Mapping[str, float]) -> float:
    return sum(v for k, v in mean_us.items() if k != "partitioner_murmur2")


def fmt_dist(d: Mapping[str, Any]) -> str:
    return (
        f"p50 {d['p50_us']:8.2f}  p90 {d['p90_us']:8.2f}  p99 {d['p99_us']:8.2f}  "
        f"p99.9 {d['p999_us']:9.2f}  max {d['max_us']:9.1f}  mean {d['mean_us']:7.2f} µs  (n={d['n']:,})"
    )


def render(r: dict[str, Any]) -> str:
    m, tp, ov, t = r["machine"], r["throughput"], r["overhead"], r["targets"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']} "
        "(the broker and this process share the CPUs)",
        f"Router — {r['kafka']}, prefix {r['topic_prefix']}, canary {CANDIDATE} at weight {WEIGHT} "
        f"({r['deployment_id']})",
        f"  requests produced (aiokafka, acks=1)  {fmt_rate(r['produce']['rate']):>10}   "
        f"({r['produce']['avg_value_bytes']:.0f} B/request)",
    ]
    if "rate" in tp:
        lines += [
            f"  (1) ONE RouterService, NoopBackend, max_in_flight {tp['max_in_flight']}, {tp['n']:,} requests backlog:",
            f"      throughput                        {fmt_rate(tp['rate']):>10}   "
            f"({tp['measured_outcomes']:,} outcomes in {tp['seconds']:.2f} s, first outcome → all published)",
        ]
        if "steady_rate_10_90" in tp:
            lines.append(f"      steady state 10 %→90 % published  {fmt_rate(tp['steady_rate_10_90']):>10}")
        lines += [
            f"      startup (not counted)             {tp['startup_s']:.2f} s start() → first outcome "
            f"(start() itself {tp['start_s']:.2f} s)",
            f"      router process CPU                {tp['router_process_cpus']:.2f} cores busy, "
            f"{tp['cpu_us_per_request']:.0f} µs CPU per request (everything: fetch, decode, tasks, split, "
            "publish, acks)",
        ]
        if tp.get("machine_busy_cpus") is not None:
            lines.append(
                f"      machine busy                      {tp['machine_busy_cpus']:.2f} of {tp['cpus']} CPUs "
                f"(router + broker + rest; ≈ {tp['machine_busy_cpus'] - tp['router_process_cpus']:.2f} outside "
                "this process)"
            )
        lines.append(
            f"      arms {tp['by_arm']} → candidate share {tp['candidate_share']:.3f}; errors {tp['errors']}, "
            f"invalid {tp['invalid_requests']}; {'complete' if tp['complete'] else 'INCOMPLETE'} "
            f"({tp['published']:,} published)"
        )
        lines.append(
            f"      outcomes per search_results partition {tp['by_partition']} (keyed by window key: "
            "one key per deployment/config/arm)"
        )
    else:
        lines.append(f"  (1) throughput: {tp.get('error', 'no figures')}")
    lines += [
        "  (2) per-request overhead, in-process (time.perf_counter_ns per call):",
        f"      timer floor        {fmt_dist(ov['timer_floor'])}",
        f"      route()            {fmt_dist(ov['route'])}",
        f"      split+publish      {fmt_dist(ov['split_publish'])}",
        f"        (route + stats + SearchOutcome + recall@10 + json + producer.send enqueue; chunks of "
        f"{ov['chunk']}, acks awaited between chunks, untimed)",
        f"        first of a chunk {fmt_dist(ov['split_publish_first_in_chunk'])}",
        "          (right after the acks: its send opens a new producer batch)",
        f"        the others       {fmt_dist(ov['split_publish_rest'])}",
        "        mean per step, each in its own tight loop (µs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in ov["components"]["mean_us"].items())
        + f" (sum {steps_sum(ov['components']['mean_us']):.1f} without the partitioner, which send_enqueue includes; "
        f"{ov['components']['avg_value_bytes']:.0f} B value, {ov['components']['avg_key_bytes']:.0f} B key)",
        f"      _handle (real)     {fmt_dist(ov['handle'])}",
        "        (RouterService._handle(wait_ack=False) with NoopBackend: the Kafka intake path, enqueue only)",
        f"      send_and_wait x1   {fmt_dist(ov['send_and_wait_sequential'])}",
        f"      send_and_wait x{ov['send_and_wait_concurrent']['concurrency']} "
        f"{fmt_dist(ov['send_and_wait_concurrent'])}",
        f"        ({fmt_rate(ov['send_and_wait_concurrent']['rate'])} acked with {MAX_IN_FLIGHT} concurrent "
        "senders on the router's producer: acks=all, idempotent, linger 2 ms)",
        f"  target ≥ {t['rate_min']:,.0f} requests/s per process: {'MET' if t['rate_met'] else 'NOT MET'};  "
        f"target split+publish p99 ≤ {t['split_publish_p99_max_us']:.0f} µs: "
        f"{'MET' if t['split_publish_p99_met'] else 'NOT MET'} (p99 {ov['split_publish']['p99_us']:.1f} µs)",
    ]
    prof = r.get("throughput_profile")
    if prof:
        lines += [
            "",
            f"(3) cProfile of a throughput pass (rate under the profiler {fmt_rate(prof['rate_under_profiler'] or 0)}),"
            " self time by area:",
        ]
        lines += [f"      {share * 100:5.1f} %  {area}" for area, share in prof["by_area"]]
        lines += ["", "    top functions by self time:", prof["top"]]
    if ov.get("split_publish_profile"):
        lines += ["", "(3) cProfile of the split+publish loop (tottime):", ov["split_publish_profile"]]
    lines += diagnosis(r)
    if r.get("what_if"):
        lines += ["", "(4) what-if: the router with the changes above patched in by this bench (NOT the shipped code):"]
        for w in r["what_if"]:
            figure = (
                f"{fmt_rate(w['rate']):>10}  {w['router_process_cpus']:.2f} cores, {w['cpu_us_per_request']:.0f} µs "
                f"CPU/request, machine {w.get('machine_busy_cpus') or math.nan:.2f} CPUs busy"
                if "rate" in w
                else w.get("error", "no figures")
            )
            lines.append(f"      {w['variant']:<46} {figure}")
        lines.append(
            "      (the last variant only enqueues: offsets can be committed before the ack, which the real change "
            "must not do; it approximates the throughput of releasing the slot in the ack's callback)"
        )
    return "\n".join(lines)


def diagnosis(r: dict[str, Any]) -> list[str]:
    """Where the time goes, from this run's figures, and what in router/service.py would change it."""
    tp, ov, t = r["throughput"], r["overhead"], r["targets"]
    if t["rate_met"] and t["split_publish_p99_met"]:
        return []
    comp = ov["components"]["mean_us"]
    acks = ov["send_and_wait_concurrent"]
    lines = ["", "Where the time goes (from the figures above):"]
    if not t["rate_met"] and "rate" in tp:
        cpu_us = tp["cpu_us_per_request"]
        lines.append(
            f"  throughput: the router process used {tp['router_process_cpus']:.2f} cores, {cpu_us:.0f} µs CPU per "
            f"request, so even fully CPU-bound one process would top out near {fmt_rate(1e6 / cpu_us)}; 20 000/s "
            "needs ≤ 50 µs of CPU per request for everything (fetch, decode, task, split, publish, ack)."
        )
        parts = tp.get("by_partition") or {}
        total = sum(parts.values())
        if total and max(parts.values()) / total > 0.5:
            lines.append(
                f"  {max(parts.values()) / total:.0%} of the outcomes go to ONE search_results partition: they are "
                "keyed by window key (deployment|config|arm), i.e. 2 keys while one canary runs."
            )
        lines.append(
            f"  ack-bound ceiling: max_in_flight {MAX_IN_FLIGHT} ÷ send_and_wait p50 with {MAX_IN_FLIGHT} "
            f"concurrent senders ({acks['p50_us'] / 1000:.0f} ms) ≈ "
            f"{fmt_rate(MAX_IN_FLIGHT / (acks['p50_us'] / 1e6))}: each request keeps its slot (and its task) "
            "until _publish_outcome's send_and_wait returns."
        )
        prof = r.get("throughput_profile")
        if prof and prof.get("sends"):
            lines.append(
                f"  under the profiler every outcome send waited {prof['accumulator_waits_per_send']:.1f}× on average "
                "in aiokafka's add_message (its partition's batch was full → wait_drain → asyncio.wait, and all "
                f"waiters wake on each drain); asyncio machinery is {prof['asyncio_share']:.0%} of self time. The "
                "router's producer has the default max_batch_size of 16 KB "
                f"(≈ {16384 / ov['components']['avg_value_bytes']:.0f} outcomes) and aiokafka's sender keeps one "
                "produce request in flight per broker, each with at most one batch per partition."
            )
    if not t["split_publish_p99_met"]:
        total = steps_sum(comp)
        worst = sorted(comp.items(), key=lambda kv: -kv[1])
        lines.append(
            f"  split+publish: p50 {ov['split_publish']['p50_us']:.0f} µs, p99 {ov['split_publish']['p99_us']:.0f} µs; "
            f"the steps' means sum to {total:.0f} µs (partitioner counted inside send_enqueue): "
            + ", ".join(f"{k} {v:.1f}" for k, v in worst)
            + f". Sends that open a new batch cost p50 {ov['split_publish_first_in_chunk']['p50_us']:.0f} µs."
        )
        lines.append(
            f"  murmur2 alone (aiokafka's pure-Python DefaultPartitioner, called by every send) is "
            f"{comp['partitioner_murmur2']:.1f} µs per outcome, for a key that is one of a handful of window keys."
        )
    lines += [
        "",
        "Changes in router/service.py that address it (not made by this bench; --what-if N measures 1-3 patched in):",
        "  1. RouterService.start(): AIOKafkaProducer(..., max_batch_size=1 << 20) so the hot partition moves far more",
        "     than 16 KB per round trip and sends stop waiting for drains.",
        "  2. memoize the partition of outcome keys: AIOKafkaProducer(partitioner=<DefaultPartitioner cached per key>)",
        "     (or pass partition= from a per-key cache in _publish_outcome): removes murmur2 from every send.",
        "  3. do not hold the in-flight slot across the ack: _publish_outcome awaits producer.send (enqueue) and",
        "     _process_record marks the offset finished and releases the slot in the ack future's done-callback",
        "     (offsets still commit only after the ack), instead of awaiting send_and_wait in the request's task.",
        "  4. per request: build the outcome dict directly (skip the frozen SearchOutcome + to_dict round trip) and",
        "     cache the encoded window key per (deployment, config, arm).",
        "  Beyond that the per-request asyncio task + asyncio.timeout + json decode/validate remain; 20 000/s per",
        "  process would need handling a fetched batch in one task (one ack wait per batch), not one per record.",
    ]
    return lines


def main() -> int:
    parser = base_parser("router requests/s with a no-op backend, and the split + publish overhead per request")
    parser.add_argument("-n", type=int, default=100_000, help="requests for the throughput pass (default 100000)")
    parser.add_argument("--route-n", type=int, default=200_000, help="route() calls timed (default 200000)")
    parser.add_argument("--publish-n", type=int, default=20_000, help="split+publish and _handle calls timed")
    parser.add_argument("--chunk", type=int, default=16, help="timed sends between two (untimed) ack waits")
    parser.add_argument("--ack-n", type=int, default=1000, help="sequential send_and_wait calls timed")
    parser.add_argument("--ack-concurrent-n", type=int, default=10_000, help="concurrent send_and_wait calls timed")
    parser.add_argument("--timeout-s", type=float, default=90.0, help="give up on a throughput pass after this long")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile what misses its target (auto), everything (always) or nothing",
    )
    parser.add_argument("--profile-n", type=int, default=10_000, help="requests in the profiled throughput pass")
    parser.add_argument(
        "--what-if",
        type=int,
        default=0,
        metavar="N",
        help="also run N-request throughput passes with the suggested router changes patched in (off by default)",
    )
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()
    with (
        sigterm_as_exit(),
        tempfile.TemporaryDirectory(prefix="canary-bench-router-") as tmp,
        control_keys(Path(tmp)) as keys_from,
    ):
        result = run(args)
        result["control_keys"] = keys_from
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
