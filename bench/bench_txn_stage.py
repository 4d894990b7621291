"""Issue #22 item 3: the windows stage as it is (flush, then checkpoint state + offset to the compacted state
topic, downstream dedup) against a PROTOTYPE of it on Kafka transactions (output + state + source offsets in
one transaction per checkpoint interval, read back ``read_committed``), on the same backlog and broker.

Steps (real broker; each phase on topics of its own, the same synthetic backlog as bench_aggregation):

  a. produce N outcomes + the routers' watermark records onto <prefix>search_results (6 partitions);
  b. run the windows stage in-process (the deployment registry beside it) until every partition's applied
     offset reaches the end of the backlog: wall time, outcomes/s, and the time each checkpoint (custom:
     flush + state records acknowledged + offset commit) or transaction commit (prototype: state records +
     send_offsets_to_transaction + commit_transaction, then begin the next) took;
  c. read the partial windows back (read_committed for the prototype) and check that, per (key, slot), they
     count exactly the outcomes of the backlog, and how many partial records carry an id seen before.

    .venv/bin/python -m bench.bench_txn_stage [--outcomes 100000] [--json]

The prototype (``TxnWindowingStage`` below) uses ONE transactional id per stage instance: aiokafka 0.14's
``send_offsets_to_transaction(offsets, group_id)`` sends no consumer-group generation (KIP-447), so fencing a
zombie that lost its partitions in a rebalance needs one transactional id — one producer — per source
partition; the figures below bound the commit cost per producer (see docs/adr/0004-*.md).
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError

from bench.bench_aggregation import (
    CANDIDATE,
    WINDOW_MS,
    build_backlog,
    declared_partitions,
    prepare,
    synth_outcomes,
)
from bench.common import base_parser, control_keys, emit, kafka, log, machine, now_ms, sigterm_as_exit, unique_prefix
from canary.core import wire
from canary.core.jsonio import dumps, loads
from canary.kafka.backoff import calm
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import CHECKPOINT_MAX_BYTES, Topics, ensure_topics, topic_partitions
from devtools.harness import send_command, start_command
from streams.registry import DeploymentRegistry
from streams.windowing import WindowingStage

STEP_TIMEOUT_S = 15.0


class _TxnProducer:
    """The few HealingProducer calls the stage makes, on one transactional aiokafka producer."""

    generation = 0
    replacing = False
    replacements = 0
    cause: BaseException | None = None

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Any:
        return await self.producer.send(topic, value, key=key, partition=partition)

    async def flush(self) -> None:
        await self.producer.flush()

    def failure(self) -> BaseException | None:
        return None


class TxnWindowingStage(WindowingStage):
    """PROTOTYPE: a checkpoint is a transaction commit — the output since the last one, the state records and
    the source offsets become visible (read_committed) together, or not at all."""

    name = "windows"

    def __init__(self, *args: Any, transactional_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transactional_id = transactional_id
        self.commit_s: list[float] = []
        self.txn: AIOKafkaProducer | None = None
        self.sent_in_txn = False

    async def checkpoint(self, only: Iterable[int] | None = None, force: bool = False) -> None:
        if self.txn is None:
            return
        if not force and time.monotonic() - self._last_checkpoint < self.checkpoint_ms / 1000:
            return
        parts = sorted(set(only) & self._dirty if only is not None else self._dirty)
        if not parts and not self.sent_in_txn:
            return  # an empty transaction: nothing to commit
        started = time.perf_counter()
        offsets: dict[TopicPartition, int] = {}
        for p in parts:
            state = self.states.get(p)
            if state is None:
                continue
            key = self._state_key(p)
            body = dumps(self.state_to_dict(state))
            await self.txn.send(self.topics.window_state, body, key=key, partition=self._state_partition(key))
            applied = self.applied_offset(state, p)
            if applied is not None:
                offsets[self.tp(p)] = applied + 1
        if offsets:
            await self.txn.send_offsets_to_transaction(offsets, self.group_id)
        await self.txn.commit_transaction()
        self.sent_in_txn = False
        await self.txn.begin_transaction()
        self.commit_s.append(time.perf_counter() - started)
        self._dirty.difference_update(parts)
        self.checkpoints += 1
        self._last_checkpoint = time.monotonic()

    async def emit(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        # Output of a partition whose state did not change (a progress mark) must be committed too.
        self.sent_in_txn = True
        await super().emit(topic, value, key=key, partition=partition)

    async def _load_states(self, partitions: list[int]) -> dict[int, dict[str, Any]]:
        # Only committed state counts: an aborted transaction's state never existed.
        wanted = {self._state_key(p): p for p in partitions}
        found: dict[int, dict[str, Any]] = {}
        reader = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
                group_id=None,
                isolation_level="read_committed",
                max_partition_fetch_bytes=CHECKPOINT_MAX_BYTES,
            )
        )
        await reader.start()
        try:
            tps = sorted({TopicPartition(self.topics.window_state, self._state_partition(k)) for k in wanted})
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)  # the last stable offsets under read_committed
            for tp in tps:
                while await reader.position(tp) < ends[tp]:
                    for record in (await reader.getmany(tp, timeout_ms=500)).get(tp, []):
                        p = wanted.get(record.key or b"")
                        if p is not None and record.value is not None:
                            found[p] = wire.decode_object(record.value, wire.CHECKPOINT)
        finally:
            await reader.stop()
        return found

    def _new_txn(self) -> AIOKafkaProducer:
        self.txn = AIOKafkaProducer(
            **client_kwargs(self.bootstrap),
            transactional_id=self.transactional_id,
            linger_ms=2,
            max_request_size=CHECKPOINT_MAX_BYTES,
            request_timeout_ms=10_000,
        )
        self._producer = _TxnProducer(self.txn)  # type: ignore[assignment]
        return self.txn

    async def _recover(self, exc: BaseException) -> None:
        """The whole recovery on transactions: drop the open transaction (a new producer with the same
        transactional id aborts it on the broker: InitProducerId), restore the committed state, seek to the
        committed offsets. Nothing of the aborted transaction was visible, so nothing is emitted twice."""
        self.recoveries.append((time.monotonic(), type(exc).__name__, str(exc)[:160]))
        log(f"    txn stage: {type(exc).__name__}: {str(exc)[:160]} -> new producer, restore committed state")
        old = self.txn
        if old is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(old.stop(), 5)
        for p in list(self.states):
            self.states.pop(p, None)
            self._dirty.discard(p)
        assert self._consumer is not None
        self.hold(sorted(tp.partition for tp in self._consumer.assignment()))
        delay = 0.5
        while True:
            try:
                txn = self._new_txn()
                await txn.start()
                await txn.begin_transaction()
                self.recovered_at.append(time.monotonic())
                return
            except Exception as again:  # the broker is still away
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(txn.stop(), 5)
                log(f"    txn stage: producer not started ({type(again).__name__}); again in {delay:.1f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _turn(self) -> None:
        assert self._consumer is not None
        if self._pending:
            await self.acquire(sorted(self._pending))
        batch = await self._consumer.getmany(timeout_ms=self.fetch_max_wait_ms, max_records=self.max_records)
        await self.process(batch)
        await self.emit_due()
        await self.checkpoint()

    async def run(self) -> None:
        await self.registry.caught_up.wait()
        self.recoveries: list[tuple[float, str, str]] = []
        self.recovered_at: list[float] = []
        txn = self._new_txn()
        self._consumer = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                max_poll_records=self.max_records,
            )
        )
        from streams.checkpointed import _Rebalance

        self._consumer.subscribe([self.source_topic], listener=_Rebalance(self))
        await txn.start()  # InitProducerId: fences an older producer with this id, aborts its transaction
        await self._consumer.start()
        self._state_partitions = len(await topic_partitions(self._consumer, self.topics.window_state))
        await self.started()
        await txn.begin_transaction()
        try:
            while True:
                try:
                    if self._rewind_cause is not None:  # a commit on revocation failed
                        cause, self._rewind_cause = self._rewind_cause, None
                        raise cause
                    # aiokafka's sender task dies on ProducerFenced and then every send and commit waits for
                    # ever (docs/adr/0002): a turn that does not end is a failure like any other.
                    await asyncio.wait_for(self._turn(), STEP_TIMEOUT_S)
                except (AIOKafkaError, TimeoutError, OSError) as exc:
                    await self._recover(exc)
        finally:
            for step in (self._consumer.stop(), self.txn.stop() if self.txn else asyncio.sleep(0)):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(step, 5)


def _applied_all(stage: WindowingStage, ends: dict[int, int]) -> bool:
    return all(
        p in stage.states and (stage.applied_offset(stage.states[p], p) or -1) >= end - 1 for p, end in ends.items()
    )


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
    stage: WindowingStage
    if txn:
        stage = TxnWindowingStage(bootstrap, topics, registry, group_id=group, transactional_id=f"{group}-0")
    else:
        stage = WindowingStage(bootstrap, topics, registry, group_id=group)
    ends = await _ends(bootstrap, topics.search_results, partitions)
    ckpt_s: list[float] = []
    if not txn:
        original = stage.checkpoint

        async def timed(only: Iterable[int] | None = None, force: bool = False) -> None:
            before, started = stage.checkpoints, time.perf_counter()
            await original(only, force)
            if stage.checkpoints > before:
                ckpt_s.append(time.perf_counter() - started)

        stage.checkpoint = timed  # type: ignore[method-assign]
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
    times = stage.commit_s if isinstance(stage, TxnWindowingStage) else ckpt_s
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
    return {"counted": sum(counted.values()), "expected": sum(truth.values()), "wrong_slots": len(wrong)}


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
                for txn in [False, True] * args.rounds:
                    topics = Topics(unique_prefix("latt" if txn else "latc"))
                    r = asyncio.run(latency_phase(bootstrap, topics, dep, txn, args))
                    log(f"    {r}")
                    result.setdefault("latency", []).append(r)
                return result
            if args.faults:
                topics = Topics(unique_prefix("txnf"))
                result["faults"] = f = asyncio.run(faults_phase(bootstrap, topics, dep, args))
                log(f"    {f}")
                return result
            for txn in [False, True] * args.rounds:
                topics = Topics(unique_prefix("txn" if txn else "cus"))
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
    stage: WindowingStage
    if txn:
        stage = TxnWindowingStage(bootstrap, topics, registry, group_id=group, transactional_id=f"{group}-0")
    else:
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
    tid = f"{group}-0"
    stage = TxnWindowingStage(bootstrap, topics, registry, group_id=group, transactional_id=tid)
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
            fencer = AIOKafkaProducer(**client_kwargs(bootstrap), transactional_id=tid)
            await fencer.start()  # InitProducerId with the stage's id: the stage's producer is fenced
            events.append(f"{time.monotonic() - t0:.1f}s fencing producer started")
            await fencer.stop()
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
        "recoveries": [
            {"at_s": round(at - t0, 1), "error": name, "detail": detail} for at, name, detail in stage.recoveries
        ],
        "recovered_at_s": [round(at - t0, 1) for at in stage.recovered_at],
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
    parser.add_argument("--rounds", type=int, default=2, help="custom/transactions alternations (default 2)")
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
