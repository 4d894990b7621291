"""Issue #22 item 3: the windows stage on Kafka transactions (streams/transactional.py), as shipped, on the same
backlog as bench_aggregation (docs/adr/0004-*.md has the figures, and those of the custom protocol it replaced).

Steps (real broker; each round on topics of its own):

  a. produce N outcomes + the routers' watermark records onto <prefix>search_results (6 partitions);
  b. run the windows stage in-process (the deployment registry beside it) until every partition has applied
     the backlog: wall time, outcomes/s, and the time each round of commits (per partition: output + state
     record + send_offsets_to_transaction + commit_transaction, run concurrently) took;
  c. read the partial windows back read_committed and check that, per (key, slot), they count exactly the
     outcomes of the backlog, and how many partial records carry an id seen before (must be 0).

    .venv/bin/python -m bench.bench_txn_stage [-n 100000] [--rounds 2] [--json]
    .venv/bin/python -m bench.bench_txn_stage -n 40000 --span-s 20 --latency      # output visibility delay
    .venv/bin/python -m bench.bench_txn_stage -n 60000 --span-s 30 --faults \
        [--restart-port P --restart-data-dir D]      # every partition's producer fenced at 1/3 (+ a restart)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.bench_aggregation import (
    CANDIDATE,
    WINDOW_MS,
    build_backlog,
    declared_partitions,
    prepare,
    synth_outcomes,
)
from bench.common import base_parser, control_keys, emit, kafka, log, machine, now_ms, sigterm_as_exit, unique_prefix
from canary.core.jsonio import loads
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import send_command, start_command
from streams.registry import DeploymentRegistry
from streams.windowing import WindowingStage


def _applied_all(stage: WindowingStage, ends: dict[int, int]) -> bool:
    return all(p in stage.states and stage._next.get(p, -1) >= end for p, end in ends.items())


async def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _partials(bootstrap: str, topic: str, committed: bool) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        topic,
        **client_kwargs(bootstrap),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        idle = 0
        while idle < 4:
            batch = await consumer.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                out.extend(loads(r.value) for r in records if r.key != b"progress")
    finally:
        await consumer.stop()
    return out


async def phase(bootstrap: str, topics: Topics, txn: bool, partitions: int, timeout_s: float) -> dict[str, Any]:
    registry = DeploymentRegistry(bootstrap, topics.control)
    group = f"{topics.prefix}windows"
    stage = WindowingStage(bootstrap, topics, registry, group_id=group)
    ends = await _ends(bootstrap, topics.search_results, partitions)
    tasks = [asyncio.create_task(registry.run()), asyncio.create_task(stage.run())]
    started = time.perf_counter()
    first: float | None = None
    try:
        while time.perf_counter() - started < timeout_s:
            if first is None and stage.states and not stage._pending:
                first = time.perf_counter()
            if _applied_all(stage, ends):
                break
            for t in tasks:
                if t.done():
                    t.result()
            await asyncio.sleep(0.05)
        done = time.perf_counter()
        complete = _applied_all(stage, ends)
        await asyncio.sleep(2 * stage.checkpoint_ms / 1000 + 0.5)  # the last checkpoint / commit goes out
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    seconds = done - (first or started)
    times = list(stage.commit_seconds)  # each partition's transactions, run beside the loop
    partials = await _partials(bootstrap, topics.window_partials, committed=txn)
    ids = Counter(p["partial_id"] for p in partials)
    return {
        "mode": "transactions" if txn else "custom",
        "complete": complete,
        "outcomes": stage.stats.outcomes,
        "seconds": round(seconds, 3),
        "rate": round(stage.stats.outcomes / seconds) if seconds > 0 else None,
        "checkpoints": len(times),
        "checkpoint_ms_median": round(statistics.median(times) * 1000, 2) if times else None,
        "checkpoint_ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))] * 1000, 2) if times else None,
        "checkpoint_ms_total": round(sum(times) * 1000),
        "partials": len(partials),
        "repeated_partials": sum(n - 1 for n in ids.values()),
        "_partials": partials,
    }


def _check(partials: list[dict[str, Any]], truth: Counter[tuple[str, int]]) -> dict[str, Any]:
    """Σ over source partitions of the partials' response_count per (key, slot) = the backlog's outcomes."""
    seen: dict[str, dict[str, Any]] = {}
    for p in partials:
        seen[p["partial_id"]] = p  # a repeat is identical: keep one
    counted: Counter[tuple[str, int]] = Counter()
    for p in seen.values():
        counted[(p["key"], int(p["window_start_ms"]))] += int(p["aggregate"]["count"])
    wrong = [k for k in set(truth) | set(counted) if truth.get(k, 0) != counted.get(k, 0)]
    # An outcome that arrives after its window closed (on the processing-time fallback, e.g. while the broker
    # was away) counts in its key's next window, as late: a wrong slot by design, not a loss.
    late = sum(int(p["aggregate"].get("late_count", 0)) for p in seen.values())
    return {
        "counted": sum(counted.values()),
        "expected": sum(truth.values()),
        "wrong_slots": len(wrong),
        "late": late,
    }


def run(args: Any) -> dict[str, Any]:
    dep = f"canary_bench{uuid.uuid4().hex[:6]}"
    span_ms = int(args.span_s * 1000)
    result: dict[str, Any] = {"benchmark": "txn_stage", "machine": machine(), "n": args.n}
    with kafka() as target, tempfile.TemporaryDirectory(prefix="canary-bench-txn-") as tmp:
        result["kafka"] = target.describe()
        # The harness's send_command takes a bare PLAINTEXT address (as bench_aggregation's prepare does).
        bootstrap = str(target.bootstrap)
        base = now_ms() - span_ms - 2 * WINDOW_MS
        base -= base % WINDOW_MS
        outcomes = synth_outcomes(args.n, dep, base, span_ms)
        truth = Counter((f"{o.window_key.as_str()}", o.ts - o.ts % WINDOW_MS) for o in outcomes)
        with control_keys(Path(tmp) / "keys"):
            if args.latency:
                for txn in [True] * args.rounds:
                    topics = Topics(unique_prefix("latt"))
                    r = asyncio.run(latency_phase(bootstrap, topics, dep, txn, args))
                    log(f"    {r}")
                    result.setdefault("latency", []).append(r)
                return result
            if args.faults:
                topics = Topics(unique_prefix("txnf"))
                result["faults"] = f = asyncio.run(faults_phase(bootstrap, topics, dep, args))
                log(f"    {f}")
                return result
            for txn in [True] * args.rounds:
                topics = Topics(unique_prefix("txn"))
                partitions = declared_partitions(topics, topics.search_results)
                backlog = build_backlog(outcomes, partitions, 500, base + span_ms)
                log(
                    f"{'transactions' if txn else 'custom'}: producing {args.n:,} outcomes onto {topics.search_results}"
                )
                asyncio.run(prepare(bootstrap, topics, dep, backlog))
                r = asyncio.run(phase(bootstrap, topics, txn, partitions, args.timeout_s))
                r["check"] = _check(r.pop("_partials"), truth)
                log(f"    {r}")
                result.setdefault("phases", []).append(r)
    return result


async def _live_traffic(bootstrap: str, topic: str, backlog: Any, span_s: float) -> int:
    """Sends the backlog paced over ``span_s`` (its outcomes are stamped for now); a slice the broker did not
    take is sent again (the windows stage drops repeated request ids), however long the broker is away."""
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", request_timeout_ms=5000)
    await producer.start()
    slices = max(1, int(span_s * 10))
    per = -(-len(backlog.records) // slices)
    resent = 0
    started = time.monotonic()
    try:
        for i in range(slices):
            await asyncio.sleep(max(0.0, started + i * span_s / slices - time.monotonic()))
            chunk = backlog.records[i * per : (i + 1) * per]
            while True:
                try:

                    async def deliver(producer: AIOKafkaProducer = producer, chunk: list[Any] = chunk) -> None:
                        futs = [await producer.send(topic, v, key=k, partition=p) for p, k, v, _ in chunk]
                        await asyncio.gather(*futs)

                    await asyncio.wait_for(deliver(), 10)  # a plain producer may hang after a restart too
                    break
                except Exception:
                    resent += 1
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(producer.stop(), 5)
                    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", request_timeout_ms=5000)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.start(), 10)
    finally:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(producer.stop(), 5)
    return resent


def _kafka_cli(*argv: str) -> None:
    import subprocess

    # Not captured: the broker `kafka start` leaves running would hold a captured pipe open for ever.
    subprocess.run(
        [sys.executable, "-m", "canary.cli", "kafka", *argv],
        check=True,
        # `kafka start` uses the cluster KAFKA_BOOTSTRAP_SERVERS names instead of starting one.
        env={k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def latency_phase(bootstrap: str, topics: Topics, dep: str, txn: bool, args: Any) -> dict[str, Any]:
    """Live traffic through one stage; a reader tails the partials topic (read_committed for transactions)
    and takes, per record, the time it arrives minus the time the stage created it (CreateTime)."""
    span_s = args.span_s
    base = now_ms() + 1000
    outcomes = synth_outcomes(args.n, dep, base, int(span_s * 1000))
    partitions = declared_partitions(topics, topics.search_results)
    backlog = build_backlog(outcomes, partitions, 200, base + int(span_s * 1000))
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    await send_command(bootstrap, topics, start_command(CANDIDATE, weight=0.2, deployment_id=dep))
    registry = DeploymentRegistry(bootstrap, topics.control)
    group = f"{topics.prefix}windows"
    stage = WindowingStage(bootstrap, topics, registry, group_id=group)
    delays: dict[str, list[float]] = {"partial": [], "progress": []}
    reader = AIOKafkaConsumer(
        topics.window_partials,
        **client_kwargs(bootstrap),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if txn else "read_uncommitted",
        fetch_max_wait_ms=10,
    )
    await reader.start()

    async def tail() -> None:
        while True:
            for records in (await reader.getmany(timeout_ms=50)).values():
                arrived = time.time() * 1000
                for r in records:
                    delays["progress" if r.key == b"progress" else "partial"].append(arrived - r.timestamp)

    tasks = [asyncio.create_task(registry.run()), asyncio.create_task(stage.run()), asyncio.create_task(tail())]
    try:
        await _live_traffic(bootstrap, topics.search_results, backlog, span_s)
        await asyncio.sleep(WINDOW_MS / 1000 + 3)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        await reader.stop()

    def summary(xs: list[float]) -> dict[str, Any]:
        xs = sorted(xs)
        if not xs:
            return {"n": 0}
        return {
            "n": len(xs),
            "p50_ms": round(xs[len(xs) // 2], 1),
            "p95_ms": round(xs[int(0.95 * (len(xs) - 1))], 1),
            "max_ms": round(xs[-1], 1),
        }

    return {"mode": "transactions" if txn else "custom", **{k: summary(v) for k, v in delays.items()}}


async def faults_phase(bootstrap: str, topics: Topics, dep: str, args: Any) -> dict[str, Any]:
    """Live traffic through the transactional prototype; a fencing producer at 1/3 of the span, a broker
    restart at 2/3 (only with --restart-port/--restart-data-dir: a broker this script may stop)."""
    span_s = args.span_s
    base = now_ms() + 1000
    outcomes = synth_outcomes(args.n, dep, base, int(span_s * 1000))
    truth = Counter((o.window_key.as_str(), o.ts - o.ts % WINDOW_MS) for o in outcomes)
    partitions = declared_partitions(topics, topics.search_results)
    backlog = build_backlog(outcomes, partitions, 200, base + int(span_s * 1000))
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    await send_command(bootstrap, topics, start_command(CANDIDATE, weight=0.2, deployment_id=dep))
    registry = DeploymentRegistry(bootstrap, topics.control)
    group = f"{topics.prefix}windows"
    stage = WindowingStage(bootstrap, topics, registry, group_id=group)
    tasks = [asyncio.create_task(registry.run()), asyncio.create_task(stage.run())]
    events: list[str] = []
    t0 = time.monotonic()
    if args.stacks_after_s:

        async def stacks() -> None:
            await asyncio.sleep(args.stacks_after_s)
            for task in asyncio.all_tasks():
                task.print_stack(limit=6, file=sys.stderr)
                print("----", file=sys.stderr)

        tasks.append(asyncio.create_task(stacks()))
    traffic = asyncio.create_task(_live_traffic(bootstrap, topics.search_results, backlog, span_s))
    try:
        await asyncio.sleep(span_s / 3)
        if not args.no_fence:
            for p in sorted(stage.states):
                fencer = AIOKafkaProducer(**client_kwargs(bootstrap), transactional_id=stage.transactional_id(p))
                await fencer.start()  # InitProducerId with the partition's id: the stage's producer is fenced
                await fencer.stop()
            events.append(f"{time.monotonic() - t0:.1f}s every partition's producer fenced")
        if args.restart_port:
            await asyncio.sleep(span_s / 3)
            events.append(f"{time.monotonic() - t0:.1f}s broker stop")
            await asyncio.to_thread(
                _kafka_cli, "stop", "--port", str(args.restart_port), "--data-dir", args.restart_data_dir
            )
            await asyncio.sleep(3)
            await asyncio.to_thread(
                _kafka_cli, "start", "--port", str(args.restart_port), "--data-dir", args.restart_data_dir
            )
            events.append(f"{time.monotonic() - t0:.1f}s broker back")
        resent = await traffic
        await asyncio.sleep(WINDOW_MS / 1000 + 6)  # the last windows close on the final watermark
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    partials = await _partials(bootstrap, topics.window_partials, committed=True)
    ids = Counter(p["partial_id"] for p in partials)
    return {
        "events": events,
        "transactions_aborted": stage.rewinds,
        "last_failure": stage.last_failure,
        "traffic_slices_resent": resent,
        "outcomes_applied": stage.stats.outcomes,
        "duplicate_outcomes_dropped": stage.stats.duplicate_outcomes,
        "partials": len(partials),
        "repeated_partials": sum(n - 1 for n in ids.values()),
        "check": _check(partials, truth),
    }


def render(r: dict[str, Any]) -> str:
    if "latency" in r:
        rows = [
            f"visibility delay of the stage's output (reader receive − record CreateTime), {r['n']:,} outcomes live"
        ]
        for p in r["latency"]:
            rows.append(f"{p['mode']:<13} partials {p['partial']}  progress marks {p['progress']}")
        return "\n".join(rows)
    if "faults" in r:
        import json

        return json.dumps(r["faults"], indent=2)
    m = r["machine"]
    lines = [
        f"windows stage over {r['n']:,} outcomes, 6 partitions; {m.get('cpus')} cpus, load {m.get('loadavg_at_start')}"
    ]
    lines.append(
        f"{'mode':<13} {'rate/s':>8} {'s':>6} {'ckpts':>6} {'ckpt ms p50':>11} {'p95':>7} {'total ms':>9} "
        f"{'partials':>8} {'repeats':>7} {'exact':>6}"
    )
    for p in r["phases"]:
        c = p["check"]
        exact = c["wrong_slots"] == 0 and c["counted"] == c["expected"]
        lines.append(
            f"{p['mode']:<13} {p['rate'] or 0:>8,} {p['seconds']:>6.2f} {p['checkpoints']:>6} "
            f"{p['checkpoint_ms_median'] or 0:>11.2f} {p['checkpoint_ms_p95'] or 0:>7.2f} "
            f"{p['checkpoint_ms_total']:>9} {p['partials']:>8} {p['repeated_partials']:>7} {exact!s:>6}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("-n", "--outcomes", dest="n", type=int, default=100_000)
    parser.add_argument("--span-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each on fresh topics (default 2)")
    parser.add_argument("--timeout-s", type=float, default=180.0)
    parser.add_argument("--latency", action="store_true", help="live traffic: output visibility delay per mode")
    parser.add_argument("--faults", action="store_true", help="live traffic + a fencing producer (+ a restart)")
    parser.add_argument("--no-fence", action="store_true", help="--faults: no fencing producer")
    parser.add_argument("--stacks-after-s", type=float, default=None, help="print every task's stack then")
    parser.add_argument("--restart-port", type=int, default=None, help="--faults: restart the broker on this port")
    parser.add_argument("--restart-data-dir", default=None, help="--faults: … with this data dir")
    args = parser.parse_args()
    with sigterm_as_exit():
        result = run(args)
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
