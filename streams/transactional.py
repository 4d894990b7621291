"""A micro-batch consumer stage that is exactly-once through Kafka transactions (docs/adr/0004-*.md).

Both heavy stages of the worker — the windows stage (``search_results`` → partial windows) and the merge
step (partial windows → one window per key) — are this shape: aiokafka ``getmany`` batches handed to
Kafka-free core objects, one state object per assigned source partition.

Each source partition has its own transactional producer (transactional id ``<group>-<topic>-<partition>``,
created on assignment, closed on revocation). A partition commits ONE transaction at a time, holding its
output, its state record (compacted ``canary_window_state``, key ``<group>|<topic>|<partition>``) and its
source offset (``send_offsets_to_transaction``): at the end of the loop turn that made window output or a
boundary-moving progress mark (readers wait for those), otherwise every ``checkpoint_ms``. Transactions run
in tasks beside the loop, on a snapshot of the partition; what the loop does meanwhile goes into the next.
Readers of the output, the stage's own source consumer and the state restore read ``read_committed``:
output, state and offset become visible together, or never.

Why one producer per source partition: aiokafka 0.14 has no KIP-447 (``send_offsets_to_transaction``
carries no group generation), so only the transactional id can fence a *zombie* that lost the partition in
a rebalance but still commits: the new owner's producer (same id) fences it on ``start``.

A stage may write parts of its state apart, as *side records* in the same transaction, keyed ``<state key>\0<name>``
on the state record's partition (:meth:`TransactionalStage.state_side_records`): the windows stage writes its
request memory as segments that are written once each (streams/seen_segments.py), so a commit carries what changed,
not the whole memory.

Restore: the committed group offset is the resume point. The state record restored is the one committed
together with that offset: each commit stamps its state record (header ``canary-commit``) and the offset's
metadata with the same token, so a record written over it by anyone else (a bug, an attack, a stray
producer) is recognised, dead-lettered with the reason, and the committed one under it restored. A committed
record a read_committed reader cannot see yet — behind a transaction still open on the same state partition, e.g.
a killed worker's — is waited for (the partition is tried again) until the coordinator must have ended that
transaction. If the committed record is gone or unreadable the partition starts afresh from the committed
offset, loudly.

Any failure of a partition's transaction (the broker away, ``ProducerFenced``, a timeout: every step is
bounded, aiokafka's sender can die on a fence and leave calls waiting for ever) is recovered in-process
and for that partition only: its producer is dropped (the open transaction is aborted by the broker when
the next producer with the same id starts), its state is dropped, and the partition is acquired again —
new producer, committed state, committed offset. Nothing of the aborted transaction was ever visible, so
nothing is emitted twice and no reader deduplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from canary.core import wire
from canary.core.jsonio import dumps
from canary.errors import KafkaError
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs, consumer_kwargs
from canary.kafka.producer import STOP_STEP_S, broker_away, close_producer
from canary.kafka.topics import CHECKPOINT_MAX_BYTES, Topics, topic_partitions
from canary.pipeline.settings import DEFAULTS

CHECKPOINT_COST_FACTOR = 20  # encoding state takes at most ~5 % of the stage's time
# How often a partition commits its input, state and the output nobody waits for (windows and boundary-moving
# progress marks are committed at once, whatever this is). Each transaction is ~5 requests and a dozen wake-ups of the
# loop per partition; at 8k outcomes/s live they were most of the worker's fixed work. 1 s instead of 500 ms:
# 11.15 -> 10.08 µs an outcome (bench_live 8k/s, four interleaved pairs, each pair better; ADR 0006 session 44), and
# after a crash at most a second of input is read again instead of half a second.
COMMIT_INTERVAL_MS: Final = 1000
# A loop that has not come back from getmany for this long is not consuming (a rebalance waiting for a killed
# peer's 10 s session, or restoring state, is the slow normal case).
STALL_AFTER_S = 30.0
# Every call into a transactional producer is bounded: aiokafka's sender task can die on ProducerFenced, after
# which sends and commits wait for ever (docs/adr/0004). request_timeout_ms (10 s) ends the normal failures first.
STEP_TIMEOUT_S: Final = 15.0
REQUEST_TIMEOUT_MS: Final = 10_000
# The coordinator aborts a transaction left open this long — a killed worker's, whose id nobody starts again
# (a partition of the other stage, not reassigned yet). Every transaction is committed within STEP_TIMEOUT_S.
TRANSACTION_TIMEOUT_MS: Final = 30_000
# A committed state record is invisible to a read_committed reader while a transaction that began before it on
# the same state partition is still open: a restore waits this long for it before it concludes the record is gone.
VISIBLE_WITHIN_S: Final = TRANSACTION_TIMEOUT_MS / 1000 + STEP_TIMEOUT_S
RETRY_BACKOFF_S: Final = (0.5, 5.0)  # base, cap: between attempts to acquire a partition again
# Acquisitions in a row that failed for a reason other than the broker being away before the stage gives up
# (a refusal that outlives this many attempts is configuration — e.g. no ACL for the transactional id).
GIVE_UP_AFTER: Final = 8
COMMIT_HEADER: Final = "canary-commit"
MAX_REJECTED: Final = 100  # state records written over a committed one, dead-lettered per restore
# A state's side records (parts written apart, named by the stage) are keyed ``<state key>\0<name>`` on the state
# record's partition; a restore keeps at most this many bytes of them per partition.
SIDE_SEPARATOR: Final = b"\x00"
MAX_SIDE_BYTES: Final = wire.CHECKPOINT.max_bytes

log = logging.getLogger("canary.streams.stage")

State = TypeVar("State")

# Test-only fault injection (tests/integration/test_stage_failures.py), read at ONE boundary: with this variable
# naming a file, a stage whose name the file holds SIGKILLs its own process in its next transaction that holds
# window output — after the broker acknowledged the output, the state record and the offsets, before the
# commit: the crash the transaction must make invisible. The test writes the file when it wants the crash.
FAULT_KILL_FILE = os.environ.get("CANARY_FAULT_KILL_FILE") or None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Outbox:
    """Output of one source partition since its last commit: sent in its next transaction."""

    records: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)
    windows: int = 0  # window output among them (not marks or dead letters)
    urgent: bool = False  # output a downstream decision waits for: committed at once, not at the interval


def transactional_id(group_id: str, source_topic: str, partition: int) -> str:
    """The producer id that owns ``partition``'s transactions: whoever starts it fences the previous owner."""
    return f"{group_id}-{source_topic}-{partition}"


def state_key(group_id: str, source_topic: str, partition: int) -> bytes:
    """The key of ``partition``'s checkpoint records on ``canary_window_state``."""
    return f"{group_id}|{source_topic}|{partition}".encode()


@dataclass
class StateScan:
    """What a restore keeps of one key's committed state records, read in order: the last one committed with
    the partition's offset (its token) and what was written over it — not every older version."""

    token: str
    match: Any = None
    written_over: list[Any] = field(default_factory=list)  # after the match (or the last record, if none)
    more_written_over: int = 0  # beyond MAX_REJECTED: counted, not dead-lettered one by one
    side: dict[str, bytes] = field(default_factory=dict)  # the last value of each side record (deleted: absent)
    side_bytes: int = 0
    side_dropped: int = 0  # side records over MAX_SIDE_BYTES or with a name that is not UTF-8: not kept

    def add_side(self, name: bytes, value: bytes | None) -> None:
        try:
            text = name.decode()
        except UnicodeDecodeError:
            self.side_dropped += 1
            return
        old = self.side.pop(text, None)
        self.side_bytes -= 0 if old is None else len(old)
        if value is None:
            return
        if self.side_bytes + len(value) > MAX_SIDE_BYTES:
            self.side_dropped += 1
            return
        self.side[text] = value
        self.side_bytes += len(value)

    def add(self, record: Any) -> None:
        if self.token and _token(record) == self.token:
            self.match, self.written_over, self.more_written_over = record, [], 0
        elif self.match is None:
            self.written_over = [] if record.value is None else [record]  # only the last one
        elif record.value is not None:
            if len(self.written_over) < MAX_REJECTED:
                self.written_over.append(record)
            else:
                self.more_written_over += 1


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: TransactionalStage[Any]) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.stage.rebalancing_since = time.monotonic()
        await self.stage.release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.stage.rebalancing_since = None
        # Fetching may already run for these partitions: hold them until the main loop has started their
        # producer and restored their state (doing it here, inside the rebalance, raced with the first fetches).
        self.stage.hold([tp.partition for tp in assigned])


class TransactionalStage(Generic[State]):
    """Subclasses provide the state per partition and what to do with a batch (see module docstring)."""

    name = "stage"
    consumer_class: type[AIOKafkaConsumer] = AIOKafkaConsumer  # the windows stage's reads runs (canary.kafka.runs)

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        source_topic: str,
        group_id: str,
        *,
        checkpoint_ms: int = COMMIT_INTERVAL_MS,
        max_records: int = DEFAULTS.batch_max,
        session_timeout_ms: int = 10_000,
        instance_id: str | None = None,
        fetch_max_wait_ms: int = DEFAULTS.batch_span_ms,
        fetch_min_bytes: int = 1,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.source_topic = source_topic
        self.group_id = group_id
        self.checkpoint_ms = checkpoint_ms
        self.max_records = max_records
        self.session_timeout_ms = session_timeout_ms
        self.instance_id = instance_id
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.states: dict[int, State] = {}
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._next: dict[int, int] = {}  # per partition: the source offset after the last record applied
        self._outbox: dict[int, _Outbox] = {}
        self._dirty: set[int] = set()
        self._pending: set[int] = set()  # assigned, not acquired yet (or again, after a failure)
        self._retry_at: dict[int, float] = {}
        self._attempts: dict[int, int] = {}  # failed acquisitions in a row per partition
        self._hidden_since: dict[int, float] = {}  # committed state not visible yet (behind an open transaction)
        self._state_partitions = 1  # of the state topic, learnt at the start
        self.state_partitions_read = 0  # by the last restore
        self.checkpoints = 0  # transactions committed
        self.rewinds = 0  # transactions given up: the partition went back to its committed state
        self.unreadable_checkpoints = 0
        self.last_failure: str | None = None  # the last transaction or acquisition that failed, and why
        self._refusals_in_a_row = 0
        self._last_checkpoint = 0.0  # the last commit of every partition with something to commit
        self._last_commit = 0.0  # the last commit of any
        self._checkpoint_cost_s = 0.0  # time the last commit spent encoding state
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one of: starting commits, an acquisition, a recovery, a release
        self._inflight: dict[int, asyncio.Task[None]] = {}  # per partition: its open transaction
        self._broken: dict[int, tuple[AIOKafkaProducer, BaseException]] = {}  # failed, not recovered yet
        self.commit_seconds: deque[float] = deque(maxlen=1000)  # of the last transactions committed
        self.rebalancing_since: float | None = None  # between partitions revoked and assigned
        self.polled_at = time.monotonic()  # the main loop's last return from getmany

    # -- what a subclass provides -------------------------------------------------------------------------
    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> State:
        """The partition's state: restored from its committed record, or new (``restored`` None). ``side``: the side
        records found beside it (:meth:`state_side_records`), committed with it or earlier."""
        raise NotImplementedError

    def state_to_dict(self, partition: int, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def state_side_records(self, partition: int, state: State) -> list[tuple[str, bytes | None]]:
        """Parts of the state written apart from its record, in the same transaction, before it (called just before
        :meth:`state_to_dict`): ``(name, value)``, None deleting a name. A name is written once and never again with
        another value, so compaction keeps every one a committed state record can refer to."""
        return []

    def complete(self, state: State) -> None:
        """Finish work the state put off (the windows core folds outcomes lazily) before it is encoded: that work
        is the stage's, not the checkpoint's, and must not count in the checkpoint's cost, which paces commits."""

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Apply records of partitions whose state is restored (the base filters the batch)."""
        raise NotImplementedError

    async def emit_due(self) -> None:
        raise NotImplementedError

    async def started(self) -> None:
        """Hook once the consumer runs (e.g. to learn topic partitions)."""

    def forget(self, partitions: list[int]) -> None:
        """Hook: drop what the subclass keeps per partition beside its state (released or recovering)."""

    # -- output -------------------------------------------------------------------------------------------
    def emit(
        self,
        source: int,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        window: bool = False,
        urgent: bool = False,
    ) -> None:
        """Output caused by source partition ``source``: it goes out in that partition's next transaction —
        at the end of this turn if ``urgent`` or ``window`` (a reader waits for it), else at the interval."""
        box = self._outbox.setdefault(source, _Outbox())
        box.records.append((topic, value, key, partition))
        box.windows += window
        box.urgent = box.urgent or urgent or window

    def mark_dirty(self, partition: int) -> None:
        self._dirty.add(partition)

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.source_topic, partition)

    def transactional_id(self, partition: int) -> str:
        return transactional_id(self.group_id, self.source_topic, partition)

    # -- state ------------------------------------------------------------------------------------------
    def _state_key(self, partition: int) -> bytes:
        return state_key(self.group_id, self.source_topic, partition)

    def _state_partition(self, key: bytes) -> int:
        """Where the state record of ``key`` lives: the partition Kafka's default partitioner gives the key
        (aiokafka's and Java's alike), so any keyed write of it, ours or not, lands where restores look."""
        return int(DefaultPartitioner()(key, list(range(self._state_partitions)), []))

    async def _load_records(self, tokens: dict[int, str]) -> dict[int, StateScan]:
        """The committed state records of these partitions' keys, scanned for the one committed with each
        partition's offset (``tokens``): only the state partitions holding these keys are read (each to its
        last stable offset)."""
        wanted = {self._state_key(p): p for p in tokens}
        found = {p: StateScan(token) for p, token in tokens.items()}
        reader = calm(
            AIOKafkaConsumer(
                **consumer_kwargs(self.bootstrap),
                group_id=None,
                enable_auto_commit=False,
                max_partition_fetch_bytes=CHECKPOINT_MAX_BYTES,
                fetch_max_bytes=CHECKPOINT_MAX_BYTES * 2,
            )
        )
        await reader.start()
        try:
            tps = sorted({TopicPartition(self.topics.window_state, self._state_partition(k)) for k in wanted})
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)  # last stable offsets: read_committed
            self.state_partitions_read = len(tps)
            for tp in tps:
                while await reader.position(tp) < ends[tp]:
                    batch = await reader.getmany(tp, timeout_ms=500, max_records=10_000)
                    for record in batch.get(tp, []):
                        key = record.key or b""
                        p = wanted.get(key)
                        if p is not None:
                            found[p].add(record)
                            continue
                        owner, sep, name = key.partition(SIDE_SEPARATOR)
                        p = wanted.get(owner) if sep else None
                        if p is not None:
                            found[p].add_side(name, record.value)
        finally:
            await reader.stop()
        return found

    def _restore(self, p: int, scan: StateScan) -> tuple[State | None, list[tuple[Any, wire.DeadLetterReason, str]]]:
        """The state committed with the partition's offset (None: not there or unreadable), and the records to
        dead-letter with why: what was written over it, and it if it cannot be read."""
        rejected: list[tuple[Any, wire.DeadLetterReason, str]] = []
        for record in scan.written_over:
            code: wire.DeadLetterReason = "invalid"
            why = "not the state committed with the partition's offset"
            try:
                wire.decode_object(record.value, wire.CHECKPOINT)
            except wire.Rejected as exc:
                code, why = exc.code, f"{_why(exc)}; {why}"
            rejected.append((record, code, why))
        if scan.more_written_over:
            log.error(
                "%s: %d more state records of partition %s were written over its committed one",
                self.name,
                scan.more_written_over,
                p,
            )
        if scan.side_dropped:
            log.error(
                "%s: %d side records of partition %s's state were not kept (over %d bytes, or unreadable names)",
                self.name,
                scan.side_dropped,
                p,
                MAX_SIDE_BYTES,
            )
        if scan.match is None:
            return None, rejected
        try:
            state = self.new_state(p, wire.decode_object(scan.match.value, wire.CHECKPOINT), scan.side)
        except Exception as exc:  # a bug (an encoding this code cannot read): the partition starts afresh
            code = exc.code if isinstance(exc, wire.Rejected) else "invalid"
            return None, [*rejected, (scan.match, code, _why(exc))]
        return state, rejected

    # -- partitions -------------------------------------------------------------------------------------
    def hold(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        self._pending.update(partitions)
        assigned = self._consumer.assignment()
        self._consumer.pause(*(tp for tp in map(self.tp, partitions) if tp in assigned))

    async def _start_producer(self, p: int) -> AIOKafkaProducer:
        producer = calm(
            AIOKafkaProducer(
                **client_kwargs(self.bootstrap),
                transactional_id=self.transactional_id(p),
                linger_ms=2,
                max_request_size=CHECKPOINT_MAX_BYTES,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            )
        )
        try:
            # InitProducerId: fences any earlier producer with this id and aborts its open transaction.
            await asyncio.wait_for(producer.start(), STEP_TIMEOUT_S)
        except BaseException:
            await close_producer(producer)
            raise
        return producer

    async def acquire(self, partitions: list[int]) -> None:
        """Start each partition's producer, restore the state committed with its offset, resume after it."""
        assert self._consumer is not None
        consumer = self._consumer
        started = await asyncio.gather(*(self._start_producer(p) for p in partitions), return_exceptions=True)
        ready: dict[int, AIOKafkaProducer] = {}
        for p, got in zip(partitions, started, strict=True):
            if isinstance(got, BaseException):
                self._failed(p, got, "its producer did not start")
            else:
                ready[p] = got
        if not ready:
            return
        try:
            tps = [self.tp(p) for p in ready]
            # The coordinator's answer with its metadata (the commit token): aiokafka's committed() drops it.
            committed = await asyncio.wait_for(consumer._coordinator.fetch_committed_offsets(tps), STEP_TIMEOUT_S)
            tokens = {p: str(getattr(committed.get(self.tp(p)), "metadata", "") or "") for p in ready}
            scans = await asyncio.wait_for(self._load_records(tokens), STEP_TIMEOUT_S * 2)
        except Exception as exc:
            for p, producer in ready.items():
                await close_producer(producer)
                self._failed(p, exc, "its committed state could not be read")
            return
        assigned = {tp.partition for tp in consumer.assignment()}
        acquired: list[int] = []
        for p, producer in ready.items():
            if p not in assigned:  # revoked meanwhile
                self._pending.discard(p)
                self._hidden_since.pop(p, None)
                await close_producer(producer)
                continue
            meta = committed.get(self.tp(p))
            offset = None if meta is None or meta.offset < 0 else int(meta.offset)
            if offset is not None and self._hidden(p, scans[p]):
                await close_producer(producer)
                continue
            self._producers[p] = producer
            self._attempts.pop(p, None)
            self._retry_at.pop(p, None)
            state: State | None = None
            if offset is not None:
                state, rejected = self._restore(p, scans[p])
                for record, code, why in rejected:
                    self._reject_state(p, record, code, why, restored=state is not None, offset=offset)
                if state is None and not rejected:
                    log.warning("%s: partition %s has a committed offset but no state for it", self.name, p)
            # A state not restored still gets the side records: whatever no state refers to is deleted.
            self.states[p] = state if state is not None else self.new_state(p, None, scans[p].side)
            if offset is None:
                await consumer.seek_to_beginning(self.tp(p))
            else:
                consumer.seek(self.tp(p), offset)
            self._next[p] = await consumer.position(self.tp(p))
            self._dirty.add(p)
            self._pending.discard(p)
            consumer.resume(self.tp(p))
            acquired.append(p)
        if acquired:
            log.warning("%s: acquired partitions %s; holding %s", self.name, acquired, sorted(self._producers))

    def _hidden(self, p: int, scan: StateScan) -> bool:
        """The state committed with ``p``'s offset is not visible yet: a transaction that began before it on the
        same state partition is still open (a killed worker's, until its id is started again or the coordinator
        times it out), so read_committed stops short of it. Starting afresh would drop the open windows' input
        before the offset; the partition is tried again instead, for up to VISIBLE_WITHIN_S."""
        if not scan.token or scan.match is not None:
            self._hidden_since.pop(p, None)
            return False
        now = time.monotonic()
        since = self._hidden_since.setdefault(p, now)
        if now - since >= VISIBLE_WITHIN_S:
            log.error(
                "%s: partition %s: the state committed with its offset has not become visible in %.0f s",
                self.name,
                p,
                now - since,
            )
            self._hidden_since.pop(p, None)
            return False
        if since == now:
            log.warning(
                "%s: partition %s: its committed state is behind an open transaction; waiting for it", self.name, p
            )
        self._retry_at[p] = now + RETRY_BACKOFF_S[0]
        return True

    def _reject_state(
        self, p: int, record: Any, code: wire.DeadLetterReason, why: str, *, restored: bool, offset: int
    ) -> None:
        self.unreadable_checkpoints += 1
        then = (
            "restored the state committed under it"
            if restored
            else f"starting the partition afresh from its committed offset {offset} (input of windows still "
            "open before it is not in them)"
        )
        log.error(
            "%s: checkpoint of partition %s is unreadable (%s, at %s/%s): dead-lettered; %s",
            self.name,
            p,
            why,
            record.partition,
            record.offset,
            then,
        )
        dead = wire.dead_letter(
            code,
            f"{self.name} state record of partition {p}: {why}",
            source_topic=self.topics.window_state,
            partition=record.partition,
            offset=record.offset,
            raw=record.value,
        )
        self.emit(p, self.topics.results_dlq, dumps(dead))

    def _failed(self, p: int, exc: BaseException, what: str) -> None:
        """Partition ``p`` could not be acquired: tried again after a back-off (the broker may be away)."""
        n = self._attempts[p] = self._attempts.get(p, 0) + 1
        self._refusals_in_a_row = 0 if broker_away(exc) else self._refusals_in_a_row + 1
        self.last_failure = f"partition {p}: {what} ({type(exc).__name__}: {exc})"
        if self._refusals_in_a_row >= GIVE_UP_AFTER:
            raise KafkaError(
                f"{self.name}: {self._refusals_in_a_row} attempts in a row to acquire partitions failed "
                f"({type(exc).__name__}: {exc}); not an outage — giving up"
            ) from exc
        if n & (n - 1) == 0:  # 1, 2, 4, 8, …: bounded logs however long the broker is away
            log.warning("%s: partition %s: %s (%s: %s; attempt %d)", self.name, p, what, type(exc).__name__, exc, n)
        self._retry_at[p] = time.monotonic() + min(RETRY_BACKOFF_S[0] * 2 ** (n - 1), RETRY_BACKOFF_S[1])

    def _drop(self, partitions: Iterable[int]) -> list[AIOKafkaProducer]:
        parts = list(partitions)
        for p in parts:
            self.states.pop(p, None)
            self._outbox.pop(p, None)
            self._next.pop(p, None)
            self._dirty.discard(p)
        self.forget(parts)
        return [producer for p in parts if (producer := self._producers.pop(p, None)) is not None]

    async def release(self, partitions: list[int]) -> None:
        """Revoked: commit what they hold (their next owner resumes from it), close their producers."""
        async with self._lock:
            await self._drain([p for p in partitions if p in self._producers])
            for producer in self._drop(partitions):
                await close_producer(producer)
            self._pending.difference_update(partitions)
            for p in partitions:
                self._retry_at.pop(p, None)
                self._attempts.pop(p, None)
                self._hidden_since.pop(p, None)

    async def _recover(self, p: int, exc: BaseException) -> None:
        """The partition's transaction failed: abort it (the next producer with the id does), go back to the
        committed state and offset — what a restarted worker would do, for this partition only."""
        self.rewinds += 1
        self._refusals_in_a_row = 0 if broker_away(exc) else self._refusals_in_a_row
        self.last_failure = f"partition {p}: transaction failed ({type(exc).__name__}: {exc})"
        log.warning(
            "%s: partition %s: transaction not committed (%s: %s); back to its committed state",
            self.name,
            p,
            type(exc).__name__,
            exc,
        )
        for producer in self._drop([p]):
            await close_producer(producer)
        if self._consumer is not None and self.tp(p) in self._consumer.assignment():
            self.hold([p])
            self._retry_at[p] = time.monotonic() + RETRY_BACKOFF_S[0]

    # -- transactions -----------------------------------------------------------------------------------
    async def checkpoint(self, force: bool = False) -> None:
        """Start the transactions that are due; they run beside the loop (one per partition at a time)."""
        # Under read_committed a reader sees output at its commit: windows and progress marks (the merge step
        # and the SLO agent wait for them) are committed at the end of the turn that made them; input and
        # state alone every checkpoint_ms. Either way never so often that encoding state takes more than
        # 1/CHECKPOINT_COST_FACTOR of the stage's time (a backlog with a large dedup memory).
        await self._settle()
        now = time.monotonic()
        if not force and now < self._guard_until():
            return
        if force or now - self._last_checkpoint >= self.checkpoint_ms / 1000:
            parts = list(self._producers)
            self._last_checkpoint = now
        else:
            parts = self._urgent()
        async with self._lock:
            if self._start_commits(parts):
                self._last_commit = time.monotonic()

    def _start_commits(self, partitions: Iterable[int]) -> list[asyncio.Task[None]]:
        """Snapshot each partition's output, state and offset and commit them in a transaction of its own, off
        the loop: what the loop does meanwhile goes into the next one. A partition whose last transaction is
        still open waits for the next turn (a producer has one transaction at a time)."""
        parts = [
            p
            for p in partitions
            # A partition whose last transaction failed commits nothing more: the output of that transaction is
            # gone, and a later one would claim its input. It goes back to its committed state instead.
            if p in self._producers
            and p not in self._inflight
            and p not in self._broken
            and (p in self._dirty or p in self._outbox)
        ]
        if not parts:
            return []
        for p in parts:
            self.complete(self.states[p])
        encoding_started = time.perf_counter()
        sides = {p: self.state_side_records(p, self.states[p]) for p in parts}
        bodies = {p: dumps(self.state_to_dict(p, self.states[p])) for p in parts}
        self._checkpoint_cost_s = time.perf_counter() - encoding_started
        started = []
        for p in parts:
            producer = self._producers[p]
            box = self._outbox.pop(p, _Outbox())
            self._dirty.discard(p)
            task = asyncio.create_task(
                asyncio.wait_for(self._commit(p, producer, box, bodies[p], sides[p], self._next[p]), STEP_TIMEOUT_S),
                name=f"{self.name}-commit-{p}",
            )
            self._inflight[p] = task
            task.add_done_callback(functools.partial(self._committed, p, producer, time.perf_counter()))
            started.append(task)
        return started

    def _committed(self, p: int, producer: AIOKafkaProducer, started: float, task: asyncio.Task[None]) -> None:
        if self._inflight.get(p) is task:
            del self._inflight[p]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.commit_seconds.append(time.perf_counter() - started)
            self.checkpoints += 1
            self._refusals_in_a_row = 0
        else:  # recovered by the loop (_settle), unless the partition went meanwhile
            self._broken[p] = (producer, exc)

    async def _settle(self) -> None:
        """Recover every partition whose transaction failed since the last turn."""
        async with self._lock:
            for p, (producer, exc) in list(self._broken.items()):
                del self._broken[p]
                if self._producers.get(p) is producer:
                    await self._recover(p, exc)

    async def _drain(self, partitions: list[int]) -> None:
        """Wait for the open transactions of these partitions (each bounded), then commit what they hold."""
        still_open = [self._inflight[p] for p in partitions if p in self._inflight]
        if still_open:
            await asyncio.wait(still_open)
        last = self._start_commits(partitions)
        if last:
            await asyncio.wait(last)
        for p in partitions:
            failed = self._broken.pop(p, None)
            if failed is not None:  # its next owner resumes from the last commit
                log.warning("%s: partition %s released without a final commit (%r)", self.name, p, failed[1])

    async def _commit(
        self,
        p: int,
        producer: AIOKafkaProducer,
        box: _Outbox,
        state: bytes,
        side: list[tuple[str, bytes | None]],
        offset: int,
    ) -> None:
        token = uuid.uuid4().hex[:16]
        await producer.begin_transaction()
        for topic, value, key, partition in box.records:
            await producer.send(topic, value, key=key, partition=partition)
        key = self._state_key(p)
        for name, part in side:
            side_key = key + SIDE_SEPARATOR + name.encode()
            await producer.send(self.topics.window_state, part, key=side_key, partition=self._state_partition(key))
        await producer.send(
            self.topics.window_state,
            state,
            key=key,
            partition=self._state_partition(key),
            headers=[(COMMIT_HEADER, token.encode())],
        )
        await producer.send_offsets_to_transaction({self.tp(p): (offset, token)}, self.group_id)
        if FAULT_KILL_FILE is not None and box.windows:
            await producer.flush()  # on the broker, not yet committed
            self._fault_kill(FAULT_KILL_FILE)
        await producer.commit_transaction()

    def _fault_kill(self, path: str) -> None:
        try:
            with open(path) as armed_for:
                armed = armed_for.read().strip() == self.name
        except OSError:
            return
        if armed:
            log.error(
                "%s: fault injection: SIGKILL after output was acknowledged, before its transaction commits",
                self.name,
            )
            os.kill(os.getpid(), signal.SIGKILL)

    # -- readiness --------------------------------------------------------------------------------------
    def consuming(self) -> tuple[bool, str]:
        """Readiness: does the main loop come back from the broker with records (or none) as it should?"""
        quiet = time.monotonic() - self.polled_at
        if quiet < STALL_AFTER_S:
            return True, f"polled {quiet:.1f} s ago"
        if self.rebalancing_since is not None:
            return (
                False,
                f"no poll for {quiet:.0f} s, rebalancing for {time.monotonic() - self.rebalancing_since:.0f} s",
            )
        return False, f"no poll for {quiet:.0f} s"

    def producer_problem(self) -> str | None:
        """For readiness: why output cannot go out right now (None: it can)."""
        if self._consumer is None:
            return "not started"
        waiting = sorted(p for p in self._pending if p in self._retry_at)
        if waiting:
            return f"partitions {waiting} recovering: {self.last_failure}"
        return None

    # -- the loop ---------------------------------------------------------------------------------------
    async def _acquire_due(self) -> None:
        now = time.monotonic()
        due = sorted(p for p in self._pending if self._retry_at.get(p, 0.0) <= now)
        if due:
            async with self._lock:
                await self.acquire([p for p in due if p in self._pending])

    def _applicable(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """The records of partitions whose state is restored; the others are fetched again later."""
        assert self._consumer is not None
        out: dict[TopicPartition, list[Any]] = {}
        for tp, records in batch.items():
            if not records:
                continue
            if tp.partition in self.states and tp.partition not in self._pending:
                out[tp] = records
                self._next[tp.partition] = records[-1].offset + 1
                self._dirty.add(tp.partition)
            elif tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)  # not restored (or recovering): never drop them
        return out

    async def run(self) -> None:
        self._consumer = calm(
            self.consumer_class(
                **consumer_kwargs(self.bootstrap),
                group_id=self.group_id,
                group_instance_id=self.instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                fetch_min_bytes=self.fetch_min_bytes,
                max_poll_records=self.max_records,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=1000,
            )
        )
        self._consumer.subscribe([self.source_topic], listener=_Rebalance(self))
        try:
            await self._consumer.start()
            self._state_partitions = len(await topic_partitions(self._consumer, self.topics.window_state))
            await self.started()
            while True:
                await self._acquire_due()
                batch = await self._take_input()
                self.polled_at = time.monotonic()
                await self.process(self._applicable(batch))
                await self.emit_due()
                await self.checkpoint()
        finally:
            # Each step waits for the broker; with it down, a stop must still end (canary.runtime). A commit
            # not made only means re-reading a little input after the restart.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._final_commit(), STEP_TIMEOUT_S)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._consumer.stop(), STOP_STEP_S)
            for producer in self._drop(list(self._producers)):
                await close_producer(producer)

    def _guard_until(self) -> float:
        """When (monotonic s) commits may go out again: encoding state takes at most 1/CHECKPOINT_COST_FACTOR of the
        stage's time."""
        return self._last_commit + CHECKPOINT_COST_FACTOR * self._checkpoint_cost_s

    def _urgent(self) -> list[int]:
        """The partitions whose uncommitted output a reader waits for."""
        return [p for p, box in self._outbox.items() if box.urgent]

    async def _take_input(self) -> dict[TopicPartition, Any]:
        """This turn's input. Output held back (``_held_back``) first takes what has arrived: a backlog never waits."""
        assert self._consumer is not None
        batch: dict[TopicPartition, Any] = {}
        if self._urgent():
            batch = await self._consumer.getmany(timeout_ms=0, max_records=self.max_records)
        if not batch:
            batch = await self._consumer.getmany(timeout_ms=await self._held_back(), max_records=self.max_records)
        return batch

    async def _held_back(self) -> int:
        """How long this turn's fetch may still wait (ms). Output a reader waits for is committed at the end of the
        turn that made it, unless its partition's previous transaction is still open (a producer has one at a time)
        or the cost guard holds commits back (``checkpoint``): then it went out at the end of a later turn, after a
        whole fetch wait when no input came — up to the merge step's 500 ms before the SLO agent saw a window
        (bench_detection: p95 635–692 ms in 4 of 8 rounds of 10). Such a turn waits for that transaction instead
        (bounded by the fetch wait, as before) and then takes what has arrived, or waits no longer than the guard."""
        urgent = self._urgent()
        if not urgent:
            return self.fetch_max_wait_ms
        held = [self._inflight[p] for p in urgent if p in self._inflight]
        if held:
            await asyncio.wait(held, timeout=self.fetch_max_wait_ms / 1000)
            return 0
        guard_ms = (self._guard_until() - time.monotonic()) * 1000
        if guard_ms <= 0:  # held by nothing this stage waits for (a partition recovering): the usual wait
            return self.fetch_max_wait_ms
        return min(self.fetch_max_wait_ms, math.ceil(guard_ms))

    async def _final_commit(self) -> None:
        async with self._lock:
            await self._drain(list(self._producers))


def _token(record: Any) -> str | None:
    for name, value in record.headers or ():
        if name == COMMIT_HEADER:
            return bytes(value).decode("ascii", "replace")
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, wire.Rejected):
        return f"{exc.code}: {exc.detail[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
