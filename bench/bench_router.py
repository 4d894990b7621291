"""Router throughput with a no-op backend, and the per-request cost of the shipped hot path.

All Kafka parts run on a real broker (KAFKA_BOOTSTRAP_SERVERS, or a local broker started here), topics
under a unique prefix. A real signed ``start`` command (candidate_high_recall, weight 0.1) goes onto the
control topic first, so every router below has a running canary and the split is exercised.

What the router does per request (the code every figure below calls):
  router/intake.py    RequestIntake._request_loop takes a slot (max_in_flight, default 256) and starts one
                      task per record; _process_record: decode_request, then Searcher.handle(wait_ack=False);
                      the slot is released and the offset becomes committable in _finish, the outcome ack's
                      done-callback (a failed ack is redelivered first).
  router/search.py    Searcher.handle: route (blake2b bucket, ConfigUsed), stats and metrics, the backend's
                      search under asyncio.timeout, SearchOutcome, then OutcomePublisher.publish.
  router/outcomes.py  OutcomePublisher.publish: key = request id, explicit partition
                      outcome_partition(request_id, P) (crc32 mod P), value orjson.dumps(outcome.to_dict()),
                      HealingProducer.send (enqueue; the producer RouterService.start() builds: acks=all,
                      idempotent, linger 2 ms, max_batch_size 1 MiB).

  1. throughput: N valid search requests are produced onto <prefix>search_requests, then ONE
     RouterService (consume_requests=True, default max_in_flight, NoopBackend) is started in this
     process and works off the backlog. Progress = outcomes acknowledged by the broker: the sum of the end
     offsets of ALL partitions of <prefix>search_results minus the router's watermark records (one per
     partition per round, router.stats.watermarks rounds), polled every 50 ms from a separate consumer in
     the same event loop (a sample may be off by one watermark round; the final count, taken after the
     router stopped and flushed, is exact).
        startup   = router.start() → first outcome published (control catch-up, group join) — not counted
        rate      = (N − outcomes at first sample) / (first outcome → N outcomes published)
     The bench process's CPU time over that interval (the router is the only busy thing in it) and the
     machine's busy CPU (from /proc/stat, includes the broker) are reported.
  2. per-request cost, in-process, on a RouterService (consume_requests=False) that has applied the same
     start command from the control topic, timed per call with time.perf_counter_ns:
        route            RouterService.route → Searcher.route (real)
        decode_request   router.intake.decode_request on the request's JSON bytes (real)
        split+publish    route (real) + stats + a SearchOutcome built the way Searcher.handle builds it (a COPY
                         of those lines: handle has no seam between search and outcome) + the real
                         OutcomePublisher.publish(wait_ack=False) (enqueue; the ack is NOT awaited inside
                         the timed section). Requests are timed in chunks of --chunk and the chunk's acks are
                         awaited (untimed) before the next chunk.
        Searcher.handle  the real Searcher.handle(wait_ack=False) with NoopBackend: everything _process_record
                         does per request after decoding (split+publish plus the search call, its
                         asyncio.timeout and the metrics).
        steps            mean of each step of publish alone in a tight loop (copies of its expressions, marked).
        ack latency      OutcomePublisher.publish → its ack, one at a time, and with max_in_flight outstanding,
                         each slot released in the ack's done-callback as RequestIntake does: the rate of that
                         pass is the ceiling the slots put on one router with this broker.
  3. when a target is not met (``--profile auto``), cProfile a separate, smaller throughput pass
     (--profile-n requests on fresh topics) and/or the split+publish loop, and print where the time goes,
     derived from this run's figures (the bench changes nothing in the router).

Targets printed (MET / NOT MET): ≥ 20 000 requests/s per router process; split+publish p99 ≤ 50 µs.

    .venv/bin/python -m bench.bench_router [-n 100000] [--route-n 200000] [--publish-n 20000] [--json]
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
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

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

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
from router.intake import decode_request
from router.outcomes import outcome_partition
from router.requests import SearchRequest, mrr_at_10, ndcg_at_10, recall_at_10
from router.search import ConfigUsed
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


def result_partitions(topics: Topics) -> int:
    """The declared partitions of search_results (the run's topics are created from these specs)."""
    return next(s.partitions for s in topics.specs() if s.name == topics.search_results)


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
) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    partitions = result_partitions(topics)
    watcher = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await watcher.start()
    tps = [TopicPartition(topics.search_results, p) for p in range(partitions)]
    base = await watcher.end_offsets(tps)  # 0 on fresh topics
    router = RouterService(
        bootstrap,
        topics,
        NoopBackend(),
        preset_ref("last_good"),
        router_id=f"bench-router-{uuid.uuid4().hex[:6]}",
        consume_requests=True,
        max_in_flight=MAX_IN_FLIGHT,
    )
    last_ends: dict[TopicPartition, int] = dict(base)

    async def published() -> int:
        """Outcomes on the broker: every record of search_results minus the router's watermark records (the
        rounds are read after the end offsets, so a round half-enqueued at the sample can shift it by one)."""
        last_ends.update(await watcher.end_offsets(tps))
        rounds = router.stats.watermarks
        return int(sum(last_ends[tp] - base[tp] for tp in tps)) - rounds * partitions

    samples: list[tuple[float, int, int]] = []  # (perf_counter, outcomes published, router.stats.requests)
    res: dict[str, Any] = {"n": n, "max_in_flight": MAX_IN_FLIGHT, "result_partitions": partitions}
    first: tuple[float, int, float, tuple[int, int] | None] | None = None  # (t, count, process cpu, ticks)
    t_started = t_end = cpu_end = math.nan
    ticks_end: tuple[int, int] | None = None
    final = 0
    if profiler is not None:
        profiler.enable()
    t_start = time.perf_counter()
    try:
        await router.start()
        t_started = time.perf_counter()
        check_canary(router, deployment_id)
        if router.outcomes.result_partitions != partitions:
            raise RuntimeError(
                f"{topics.search_results}: declared with {partitions} partitions, the router found "
                f"{router.outcomes.result_partitions}"
            )
        deadline = t_start + timeout_s
        while time.perf_counter() < deadline:
            count = await published()
            now = time.perf_counter()
            samples.append((now, count, router.stats.requests))
            if first is None and count > 0:
                first = (now, count, time.process_time(), cpu_ticks())
            if count >= n:
                break
            await asyncio.sleep(POLL_S)
        t_end = time.perf_counter()
        cpu_end, ticks_end = time.process_time(), cpu_ticks()
    finally:
        if profiler is not None:
            profiler.disable()
        try:
            await router.stop()  # flushes outcomes, then the stop watermark round
            final = await published()  # exact: nothing is in flight any more
        finally:
            await watcher.stop()
    rounds = router.stats.watermarks
    res.update(
        complete=final == n,
        published=final,
        watermark_rounds=rounds,
        by_partition={tp.partition: last_ends[tp] - base[tp] - rounds for tp in tps},
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
    count = samples[-1][1]
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
    # how far request intake runs ahead of publishing (≈ requests holding a slot until their ack)
    res["max_started_minus_published"] = max((s - c for _, c, s in samples), default=0)
    return res


# -- (2) per-request cost ----------------------------------------------------------------------------------


def outcome_as_handle_builds_it(router: RouterService, request: SearchRequest, used: ConfigUsed) -> SearchOutcome:
    """COPY of the outcome construction in router.search.Searcher.handle for a successful labeled search
    (latency measured around nothing, ndcg/mrr metrics included): handle builds it inline, between the search
    and the publish, so there is no function to call. Kept in step with handle by hand."""
    results = list(NoopBackend.RESULTS)
    started = time.perf_counter()
    latency_ms = (time.perf_counter() - started) * 1000.0
    metrics = {}
    if request.relevant_ids:
        metrics["ndcg_at_10"] = round(ndcg_at_10(results, request.relevant_ids) or 0.0, 6)
        metrics["mrr_at_10"] = round(mrr_at_10(results, request.relevant_ids) or 0.0, 6)
    return SearchOutcome(
        event_id=f"{router.router_id}:{request.request_id}",
        request_id=request.request_id,
        ts=router.outcomes.clock(),
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
        metrics=metrics or None,
    )


async def split_and_publish(router: RouterService, request: SearchRequest) -> asyncio.Future[Any]:
    """Searcher.handle without the search: the real route, the stats it keeps, the outcome (copy, see
    outcome_as_handle_builds_it) and the real OutcomePublisher.publish, enqueue only."""
    _config, used = router.route(request)
    router.stats.requests += 1
    router.stats.by_arm[used.arm] += 1
    router.metrics.requests.labels(used.arm).inc()
    if used.arm == "candidate":
        router.stats.last_candidate_dispatch_ms = now_ms()
    outcome = outcome_as_handle_builds_it(router, request, used)
    return await router.outcomes.publish(outcome, wait_ack=False)


async def steps(router: RouterService, requests: Sequence[SearchRequest], n: int, chunk: int) -> dict[str, Any]:
    """Mean cost of each step of split+publish, each in its own tight loop (no per-call timer, no profiler).
    route, outcome_partition and the producer's send are the real functions; outcome, to_dict + orjson and
    the key are the expressions of Searcher.handle / OutcomePublisher.publish (copies)."""
    producer = router._producer
    assert producer is not None
    reqs = [requests[i % len(requests)] for i in range(n)]
    clock = time.perf_counter_ns
    out: dict[str, float] = {}

    t0 = clock()
    routed = [router.route(r)[1] for r in reqs]
    out["route"] = (clock() - t0) / n / 1000
    t0 = clock()
    outcomes = [outcome_as_handle_builds_it(router, r, u) for r, u in zip(reqs, routed, strict=True)]
    out["outcome"] = (clock() - t0) / n / 1000
    t0 = clock()
    dicts = [o.to_dict() for o in outcomes]
    out["to_dict"] = (clock() - t0) / n / 1000
    t0 = clock()
    values = [orjson.dumps(d) for d in dicts]
    out["orjson"] = (clock() - t0) / n / 1000
    partitions = router.outcomes.result_partitions
    t0 = clock()
    keyed = [(o.request_id.encode(), outcome_partition(o.request_id, partitions)) for o in outcomes]
    out["key_partition"] = (clock() - t0) / n / 1000
    total = 0
    topic = router.topics.search_results
    for start in range(0, n, chunk):
        futures = []
        for i in range(start, min(n, start + chunk)):
            key, partition = keyed[i]
            t0 = clock()
            futures.append(await producer.send(topic, values[i], key=key, partition=partition))
            total += clock() - t0
        await asyncio.gather(*futures)
    out["send_enqueue"] = total / n / 1000
    return {
        "n": n,
        "mean_us": out,
        "avg_value_bytes": sum(map(len, values)) / n,
        "avg_key_bytes": sum(len(k) for k, _ in keyed) / n,
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
    clock = time.perf_counter_ns
    out: list[int] = []
    for start in range(0, n, chunk):
        futures = []
        if profiler is not None:
            profiler.enable()
        for i in range(start, min(n, start + chunk)):
            req = requests[i % len(requests)]
            t0 = clock()
            fut = await split_and_publish(router, req)
            t1 = clock()
            out.append(t1 - t0)
            futures.append(fut)
        if profiler is not None:
            profiler.disable()
        await asyncio.gather(*futures)  # untimed: acks, so the next chunk starts with drained batches
    return out


async def timed_handle(router: RouterService, requests: Sequence[SearchRequest], n: int, chunk: int) -> list[int]:
    """The real ``Searcher.handle(wait_ack=False)``: what RequestIntake._process_record calls per request."""
    handle = router.searcher.handle
    clock = time.perf_counter_ns
    out: list[int] = []
    for start in range(0, n, chunk):
        acks = []
        for i in range(start, min(n, start + chunk)):
            req = requests[i % len(requests)]
            t0 = clock()
            _, _, ack, _ = await handle(req, wait_ack=False)
            t1 = clock()
            out.append(t1 - t0)
            acks.append(ack)
        await asyncio.gather(*acks)
    return out


def timed_decode(raw: Sequence[bytes], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out: list[int] = []
    for i in range(n):
        value = raw[i % len(raw)]
        t0 = clock()
        decode_request(value)
        out.append(clock() - t0)
    return out


async def timed_acks(router: RouterService, outcomes: Sequence[SearchOutcome], window: int) -> tuple[list[int], float]:
    """OutcomePublisher.publish → ack, with at most ``window`` outcomes unacknowledged: each one holds a slot
    from before its publish until its ack's done-callback releases it, as RequestIntake's slots do."""
    clock = time.perf_counter_ns
    slots = asyncio.Semaphore(window)
    out: list[int] = []
    acks: list[asyncio.Future[Any]] = []

    def acked(t0: int, ack: asyncio.Future[Any]) -> None:
        out.append(clock() - t0)
        slots.release()

    started = time.perf_counter()
    for outcome in outcomes:
        await slots.acquire()
        t0 = clock()
        ack = await router.outcomes.publish(outcome, wait_ack=False)
        ack.add_done_callback(functools.partial(acked, t0))
        acks.append(ack)
    await asyncio.gather(*acks)
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
    res: dict[str, Any] = {"chunk": args.chunk, "result_partitions": router.outcomes.result_partitions}
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

        # (b) decoding a request as it comes off search_requests
        raw = [json.dumps(r.to_dict()).encode() for r in requests]
        timed_decode(raw, 2000)  # warm-up
        res["decode_request"] = dist_us(timed_decode(raw, args.publish_n))

        # (c) split + outcome + enqueue
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

        res["steps"] = await steps(router, requests, min(args.publish_n, 20_000), args.chunk)

        # (d) the real Searcher.handle, enqueue only
        await timed_handle(router, requests, 2000, args.chunk)  # warm-up
        res["handle"] = dist_us(await timed_handle(router, requests, args.publish_n, args.chunk))

        # (e) ack latency on the real publish path, alone and with the intake's window of slots
        outcomes = [
            outcome_as_handle_builds_it(router, r, router.route(r)[1])
            for r in itertools.islice(itertools.cycle(requests), max(args.ack_n, args.ack_concurrent_n))
        ]
        seq, _ = await timed_acks(router, outcomes[: args.ack_n], 1)
        res["ack_sequential"] = dist_us(seq)
        windowed, secs = await timed_acks(router, outcomes[: args.ack_concurrent_n], MAX_IN_FLIGHT)
        res["ack_windowed"] = {**dist_us(windowed), "window": MAX_IN_FLIGHT, "rate": rate(len(windowed), secs)}
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
    sends = calls(profiler, "aiokafka/producer/producer.py", "_partition")  # once per send (explicit partition too)
    # add_message waits for a drain each time its partition's batch is full (flush is outside the profiled span)
    drains = calls(profiler, "aiokafka/producer/message_accumulator.py", "wait_drain")
    by_area = profile_by_area(profiler)
    return {
        "topics": topics.prefix,
        "rate_under_profiler": res.get("rate"),
        "complete": res.get("complete"),
        "sends": sends,
        "drain_waits_per_send": drains / sends if sends else math.nan,
        "asyncio_share": sum(share for area, share in by_area if area.startswith("asyncio")),
        "by_area": by_area,
        "top": profile_text(profiler, 25),
    }


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

            log(
                f"(2) in-process cost: route × {args.route_n:,}; decode_request, split+publish and "
                f"Searcher.handle × {args.publish_n:,}; acks"
            )
            gc.collect()
            ov = asyncio.run(overhead_pass(target.bootstrap, topics, dep, args))
            result["overhead"] = ov

            # An incomplete pass is not a rate: it ran into the timeout.
            rate_met = bool(tp.get("complete") and tp.get("rate", math.nan) >= TARGET_RATE)
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
        finally:
            if target.external and not args.keep_topics:
                for prefix in prefixes:
                    delete_prefixed_topics(target.bootstrap, prefix)
    result["machine"]["loadavg_at_end"] = loadavg()
    return result


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
            "publish, acks, commits, watermarks)",
        ]
        if tp.get("machine_busy_cpus") is not None:
            lines.append(
                f"      machine busy                      {tp['machine_busy_cpus']:.2f} of {tp['cpus']} CPUs "
                f"(router + broker + rest; ≈ {tp['machine_busy_cpus'] - tp['router_process_cpus']:.2f} outside "
                "this process)"
            )
    else:
        lines.append(f"  (1) throughput: {tp.get('error', 'no figures')}")
    lines += [
        f"      arms {tp['by_arm']} → candidate share {tp['candidate_share']:.3f}; errors {tp['errors']}, "
        f"invalid {tp['invalid_requests']}; {'complete' if tp['complete'] else 'INCOMPLETE'} "
        f"({tp['published']:,} of {tp['n']:,} outcomes on the broker after the router stopped)",
        f"      outcomes per search_results partition {tp['by_partition']} (key = request id, partition = "
        f"router.outcomes.outcome_partition: crc32 mod {tp['result_partitions']}; {tp['watermark_rounds']} "
        "watermark rounds not counted)",
    ]
    st = ov["steps"]
    lines += [
        "  (2) per-request cost, in-process (time.perf_counter_ns per call):",
        f"      timer floor        {fmt_dist(ov['timer_floor'])}",
        f"      route()            {fmt_dist(ov['route'])}",
        f"      decode_request     {fmt_dist(ov['decode_request'])}",
        "        (router.intake.decode_request on the request's JSON, as _process_record does first)",
        f"      split+publish      {fmt_dist(ov['split_publish'])}",
        "        (real route + stats + SearchOutcome as Searcher.handle builds it [copy] + real "
        f"OutcomePublisher.publish, enqueue only; chunks of {ov['chunk']}, acks awaited between chunks, untimed)",
        f"        first of a chunk {fmt_dist(ov['split_publish_first_in_chunk'])}",
        "          (right after the acks: its send opens a new producer batch)",
        f"        the others       {fmt_dist(ov['split_publish_rest'])}",
        "        mean per step, each in its own tight loop (µs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in st["mean_us"].items())
        + f" (sum {sum(st['mean_us'].values()):.1f}; {st['avg_value_bytes']:.0f} B value, "
        f"{st['avg_key_bytes']:.0f} B key; outcome, to_dict, orjson and key are copies of the code's expressions)",
        f"      Searcher.handle    {fmt_dist(ov['handle'])}",
        "        (the real router.search.Searcher.handle(wait_ack=False), NoopBackend: what _process_record calls "
        "after decoding)",
        f"      ack x1             {fmt_dist(ov['ack_sequential'])}",
        f"      ack, {ov['ack_windowed']['window']} in flight {fmt_dist(ov['ack_windowed'])}",
        f"        ({fmt_rate(ov['ack_windowed']['rate'])} acknowledged: OutcomePublisher.publish → ack with "
        f"{MAX_IN_FLIGHT} slots released in the ack's done-callback, as RequestIntake does; the router's producer: "
        "acks=all, idempotent, linger 2 ms, max_batch_size 1 MiB)",
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
    return "\n".join(lines)


def diagnosis(r: dict[str, Any]) -> list[str]:
    """Where the time goes, each statement computed from this run's figures, naming the code they measured."""
    tp, ov, t = r["throughput"], r["overhead"], r["targets"]
    if t["rate_met"] and t["split_publish_p99_met"]:
        return []
    lines = ["", "Where the time goes (from the figures above):"]
    if not t["rate_met"] and "rate" in tp:
        cpu_us = tp["cpu_us_per_request"]
        if not tp["complete"]:
            lines.append(
                f"  the throughput pass did not finish within --timeout-s ({tp['published']:,} of {tp['n']:,} "
                "outcomes): its rate is a lower bound, not the router's rate."
            )
        lines.append(
            f"  throughput: the router process used {tp['router_process_cpus']:.2f} cores, {cpu_us:.0f} µs CPU per "
            f"request, so even fully CPU-bound one process would top out near {fmt_rate(1e6 / cpu_us)}; "
            f"{TARGET_RATE:,.0f}/s needs ≤ {1e6 / TARGET_RATE:.0f} µs of CPU per request for everything."
        )
        in_task = ov["decode_request"]["mean_us"] + ov["handle"]["mean_us"]
        lines.append(
            f"  of those {cpu_us:.0f} µs, decode_request + Searcher.handle (wall time, measured alone) account for "
            f"≈ {in_task:.0f} µs; the other ≈ {max(0.0, cpu_us - in_task):.0f} µs are spent around them: "
            "aiokafka's fetch and record parsing, RequestIntake._request_loop's slot and task per record, "
            "_finish on every ack, the producer's sender and acks, commits and watermarks"
            + (" (the profile's areas above split it)." if r.get("throughput_profile") else ".")
        )
        acks = ov["ack_windowed"]
        share = tp["rate"] / acks["rate"] if acks["rate"] else math.nan
        lines.append(
            f"  slots: with {MAX_IN_FLIGHT} outcomes in flight this broker acknowledged {fmt_rate(acks['rate'])} "
            f"(ack p50 {acks['p50_us'] / 1000:.1f} ms); the router reached {share:.0%} of that, so "
            + (
                "the slots held until each ack (RequestIntake.slots, released in _finish) are near their limit."
                if share >= 0.8
                else "the slots held until each ack (RequestIntake.slots) are not what limits this run."
            )
        )
        parts = tp.get("by_partition") or {}
        total = sum(parts.values())
        if total:
            lines.append(
                f"  outcomes spread over {len(parts)} partitions by request id: the busiest took "
                f"{max(parts.values()) / total:.0%} (even: {1 / len(parts):.0%})."
            )
        prof = r.get("throughput_profile")
        if prof and prof.get("sends"):
            lines.append(
                f"  under the profiler a send waited for a full batch to drain {prof['drain_waits_per_send']:.2f}× on "
                f"average (aiokafka add_message → wait_drain); asyncio machinery is {prof['asyncio_share']:.0%} of "
                "self time."
            )
    if not t["split_publish_p99_met"]:
        mean = ov["steps"]["mean_us"]
        worst = sorted(mean.items(), key=lambda kv: -kv[1])
        lines.append(
            f"  split+publish: p50 {ov['split_publish']['p50_us']:.0f} µs, p99 {ov['split_publish']['p99_us']:.0f} µs; "
            f"the steps' means sum to {sum(mean.values()):.0f} µs: "
            + ", ".join(f"{k} {v:.1f}" for k, v in worst)
            + f". Sends that open a new batch cost p50 {ov['split_publish_first_in_chunk']['p50_us']:.0f} µs, "
            f"the others p50 {ov['split_publish_rest']['p50_us']:.0f} µs."
        )
        lines.append(
            "  (route = router/search.py Searcher.route; outcome = the SearchOutcome Searcher.handle builds; "
            "to_dict + orjson + key/partition + send_enqueue = router/outcomes.py OutcomePublisher.publish on "
            "the HealingProducer of RouterService.start().)"
        )
    return lines


def main() -> int:
    parser = base_parser("router requests/s with a no-op backend, and the per-request cost of the shipped hot path")
    parser.add_argument("-n", type=int, default=100_000, help="requests for the throughput pass (default 100000)")
    parser.add_argument("--route-n", type=int, default=200_000, help="route() calls timed (default 200000)")
    parser.add_argument(
        "--publish-n",
        type=int,
        default=20_000,
        help="decode_request, split+publish and Searcher.handle calls timed (default 20000)",
    )
    parser.add_argument("--chunk", type=int, default=16, help="timed sends between two (untimed) ack waits")
    parser.add_argument("--ack-n", type=int, default=1000, help="outcomes published one at a time, ack awaited")
    parser.add_argument(
        "--ack-concurrent-n",
        type=int,
        default=10_000,
        help=f"outcomes published with {MAX_IN_FLIGHT} unacknowledged at most (default 10000)",
    )
    parser.add_argument("--timeout-s", type=float, default=90.0, help="give up on a throughput pass after this long")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile what misses its target (auto), everything (always) or nothing",
    )
    parser.add_argument("--profile-n", type=int, default=10_000, help="requests in the profiled throughput pass")
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
