"""A micro-batch consumer stage whose per-partition state is checkpointed to a compacted topic.

Both heavy stages of the worker — the windows stage (``search_results`` → partial windows) and the merge
step (partial windows → one window per key) — are this shape: aiokafka ``getmany`` batches handed to
Kafka-free core objects, one state object per assigned source partition.

Durability without Faust tables: each partition's state, including the highest source offset it has
applied, is written to the compacted ``canary_window_state`` topic at most every ``checkpoint_ms`` (and
never more often than keeps encoding them under ``1/CHECKPOINT_COST_FACTOR`` of the stage's time: a
backlog with a large dedup memory would otherwise spend its time re-writing state),
*after* everything it emitted is acknowledged by the broker. On assignment the stage restores that state
and seeks just past the offset it records, so input is neither lost nor applied twice across crashes and
rebalances; output emitted after the last checkpoint may be emitted again after a crash, and readers drop
it by id. An unreadable checkpoint never crash-loops the worker: the stage logs why, starts the partition
afresh and re-reads ``recovery_lookback_ms`` of input (see :meth:`CheckpointedStage.recover_offset`).

Output the broker did not take (a broker restart: batches expired while it was away, and the idempotent
producer's sequence for those partitions is lost) is recovered in-process the same way a restarted worker
would: the producer replaces itself (canary.kafka.producer), and the stage *rewinds* — drops every
partition's state, restores it from its last checkpoint and re-reads the input after it, emitting again
what followed (:meth:`CheckpointedStage.rewind`). Nothing is emitted on the new producer before the rewind:
a progress mark sent after a lost partial would let the merge step close a window without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.partitioner import DefaultPartitioner

from canary.core import wire
from canary.core.jsonio import dumps
from canary.errors import KafkaError, ProducerFailed
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer, ProducerReplaced, broker_away
from canary.kafka.topics import CHECKPOINT_MAX_BYTES, Topics, topic_partitions
from canary.pipeline.settings import DEFAULTS

CHECKPOINT_COST_FACTOR = 20  # checkpoints take at most ~5 % of the stage's time
# A loop that has not come back from getmany for this long is not consuming (a rebalance waiting for a killed
# peer's 10 s session, or restoring state, is the slow normal case).
STALL_AFTER_S = 30.0

log = logging.getLogger("canary.streams.stage")

State = TypeVar("State")
STOP_STEP_S = 2.0
REWIND_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between rewinds in a row (the broker may still be away)
# Rewinds in a row that failed for a reason other than the broker being away before the stage gives up
# (a refusal that outlives this many attempts is configuration, not an outage).
GIVE_UP_AFTER = 8


# Test-only fault injection (tests/integration/test_stage_failures.py), read at ONE boundary: with this variable
# naming a file, a stage whose name the file holds SIGKILLs its own process at its next checkpoint that follows
# window output — after the broker acknowledged that output, before the state saying so is written: the
# crash the protocol must survive (output repeated after the restart, dropped by id). The test writes the
# file when it wants the crash; without the variable nothing is read.
FAULT_KILL_FILE = os.environ.get("CANARY_FAULT_KILL_FILE") or None


class Undelivered(KafkaError):
    """Output of the stage the broker did not take: the stage rewinds to its last checkpoint."""


# What a rewind recovers from: output not delivered, and the broker being away or restarting under a call.
RECOVERABLE = (Undelivered, ProducerReplaced, AIOKafkaError, TimeoutError, OSError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: CheckpointedStage[Any]) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.stage.release([tp.partition for tp in revoked])
        # No commit from now until the assignment: one that reached the coordinator behind our own JoinGroup
        # would carry the old generation, fail, and make aiokafka rejoin — for ever, when this member leads
        # the group (docs/adr/0003-request-group-membership.md). One still in flight is answered first.
        self.stage.rebalancing_since = time.monotonic()
        async with self.stage.commit_lock:
            pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.stage.rebalancing_since = None
        # Fetching may already run for these partitions: hold them until their state is restored by the
        # main loop (restoring here, inside the rebalance, raced with the first fetches).
        self.stage.hold([tp.partition for tp in assigned])


class CheckpointedStage(Generic[State]):
    """Subclasses provide the state per partition and what to do with a batch (see module docstring)."""

    name = "stage"

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        source_topic: str,
        group_id: str,
        *,
        checkpoint_ms: int = 500,
        max_records: int = DEFAULTS.batch_max,
        session_timeout_ms: int = 10_000,
        instance_id: str | None = None,
        fetch_max_wait_ms: int = DEFAULTS.batch_span_ms,
        recovery_lookback_ms: int = 180_000,
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
        self.recovery_lookback_ms = recovery_lookback_ms
        self.states: dict[int, State] = {}
        self._state_partitions = 1  # of the state topic, learnt at the start
        self.state_partitions_read = 0  # by the last restore
        self.checkpoints = 0
        self.unreadable_checkpoints = 0
        self._dirty: set[int] = set()
        self._pending: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: HealingProducer | None = None
        self._generation = 0  # the producer generation this stage's output since its last rewind went to
        self._rewind_cause: BaseException | None = None  # set where a rewind cannot run at once (rebalance)
        self.rewinds = 0
        self._rewinds_in_a_row = 0
        self._refusals_in_a_row = 0
        self._last_checkpoint = 0.0
        self._checkpoint_cost_s = 0.0  # time the last checkpoint spent encoding and sending state
        self._emitted: list[asyncio.Future[Any]] = []  # deliveries since the last checkpoint
        self.windows_since_checkpoint = 0  # window output (not marks or dead letters) since the last checkpoint
        self.commit_lock = asyncio.Lock()
        self.rebalancing_since: float | None = None  # between partitions revoked and assigned: no commit
        self.polled_at = time.monotonic()  # the main loop's last return from getmany

    # -- what a subclass provides -------------------------------------------------------------------------
    def new_state(self, partition: int, restored: dict[str, Any] | None) -> State:
        raise NotImplementedError

    def state_to_dict(self, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def applied_offset(self, state: State, partition: int) -> int | None:
        raise NotImplementedError

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        raise NotImplementedError

    async def emit_due(self) -> None:
        raise NotImplementedError

    async def started(self) -> None:
        """Hook once the producer and consumer run (e.g. to learn topic partitions)."""

    # -- state ------------------------------------------------------------------------------------------
    def _state_key(self, partition: int) -> bytes:
        return f"{self.group_id}|{self.source_topic}|{partition}".encode()

    def _state_partition(self, key: bytes) -> int:
        """Where the state record of ``key`` lives: the partition Kafka's default partitioner gives the key
        (aiokafka's and Java's alike), so any keyed write of it, ours or not, lands where restores look."""
        return int(DefaultPartitioner()(key, list(range(self._state_partitions)), []))

    async def _load_states(self, partitions: list[int]) -> dict[int, dict[str, Any]]:
        """Latest checkpoint per partition from the compacted state topic: only the state partitions that
        hold these keys are read (each to its current end), not every stage's checkpoints."""
        wanted = {self._state_key(p): p for p in partitions}
        found: dict[int, dict[str, Any]] = {}
        reader = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
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
            ends = await reader.end_offsets(tps)
            self.state_partitions_read = len(tps)
            for tp in tps:
                while await reader.position(tp) < ends[tp]:
                    batch = await reader.getmany(tp, timeout_ms=500, max_records=10_000)
                    for record in batch.get(tp, []):
                        partition = wanted.get(record.key or b"")
                        if partition is None:
                            continue
                        if record.value is None:
                            found.pop(partition, None)
                            continue
                        try:
                            found[partition] = wire.decode_object(record.value, wire.CHECKPOINT)
                        except wire.Rejected as exc:  # started afresh by acquire(), with the reason logged
                            found[partition] = {"__unreadable__": f"{exc.code}: {exc.detail[:200]}"}
        finally:
            await reader.stop()
        return found

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.source_topic, partition)

    def hold(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        self._pending.update(partitions)
        assigned = self._consumer.assignment()
        self._consumer.pause(*(tp for tp in map(self.tp, partitions) if tp in assigned))

    async def recover_offset(self, partition: int) -> int | None:
        """Where to re-read from when a checkpoint is unreadable: ``recovery_lookback_ms`` before now.

        Re-reading re-creates the open windows completely (nothing lost); windows emitted before are
        emitted again with the same ids and dropped by every reader (nothing counted twice), and within the
        re-read span a request is counted once (the windows stage deduplicates by request)."""
        assert self._consumer is not None
        found = await self._consumer.offsets_for_times({self.tp(partition): now_ms() - self.recovery_lookback_ms})
        hit = found.get(self.tp(partition))
        return None if hit is None else int(hit.offset)

    async def acquire(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        states = await self._load_states(partitions)
        assigned = {tp.partition for tp in self._consumer.assignment()}
        for p in partitions:
            self._pending.discard(p)
            if p not in assigned:
                continue  # revoked again meanwhile
            restored = states.get(p)
            state: State | None = None
            recovered = False
            if restored is not None:
                try:
                    if "__unreadable__" in restored:
                        raise ValueError(f"not a readable checkpoint: {restored['__unreadable__']}")
                    state = self.new_state(p, restored)
                except Exception as exc:
                    self.unreadable_checkpoints += 1
                    recovered = True
                    log.error(
                        "%s: checkpoint of partition %s is unreadable (%s); starting it afresh and re-reading "
                        "the last %.0f s of input (windows emitted before are emitted again and dropped by id)",
                        self.name,
                        p,
                        exc,
                        self.recovery_lookback_ms / 1000,
                    )
            if state is None:
                state = self.new_state(p, None)
            self.states[p] = state
            applied = None if recovered else self.applied_offset(state, p)
            if applied is not None:
                # The checkpoint, not the group's committed offset, says what the state already holds.
                self._consumer.seek(self.tp(p), int(applied) + 1)
            elif recovered:
                offset = await self.recover_offset(p)
                if offset is None:
                    await self._consumer.seek_to_beginning(self.tp(p))
                else:
                    self._consumer.seek(self.tp(p), offset)
            else:
                committed = await self._consumer.committed(self.tp(p))
                if committed is None:
                    await self._consumer.seek_to_beginning(self.tp(p))
                else:
                    self._consumer.seek(self.tp(p), committed)
            self._dirty.add(p)
            self._consumer.resume(self.tp(p))
        log.warning("%s: acquired partitions %s (restored state for %s)", self.name, partitions, sorted(states))

    async def release(self, partitions: list[int]) -> None:
        try:
            await self.checkpoint(only=partitions, force=True)
        except RECOVERABLE as exc:
            # Not checkpointed: their next owner resumes from the last good checkpoint and emits again. The
            # partitions kept may have lost output too: the main loop rewinds them (not here, mid-rebalance).
            self._rewind_cause = exc
            log.warning("%s: partitions %s released without a final checkpoint (%r)", self.name, partitions, exc)
        finally:
            for p in partitions:
                self.states.pop(p, None)
                self._dirty.discard(p)
                self._pending.discard(p)

    def mark_dirty(self, partition: int) -> None:
        self._dirty.add(partition)

    async def checkpoint(self, only: Iterable[int] | None = None, force: bool = False) -> None:
        if self._producer is None:
            return
        interval_s = max(self.checkpoint_ms / 1000, CHECKPOINT_COST_FACTOR * self._checkpoint_cost_s)
        if not force and time.monotonic() - self._last_checkpoint < interval_s:
            return
        parts = sorted(set(only) & self._dirty if only is not None else self._dirty)
        if not parts:
            return
        # Emitted output must be on the broker before the state that says so.
        await self._producer.flush()
        self._raise_undelivered()
        self._check_generation()
        if FAULT_KILL_FILE is not None and self.windows_since_checkpoint:
            self._fault_kill(FAULT_KILL_FILE)
        futures = []
        offsets: dict[TopicPartition, int] = {}
        encoding_started = time.perf_counter()
        for p in parts:
            state = self.states.get(p)
            if state is None:
                continue
            body = dumps(self.state_to_dict(state))
            key = self._state_key(p)
            futures.append(
                await self._producer.send(self.topics.window_state, body, key=key, partition=self._state_partition(key))
            )
            applied = self.applied_offset(state, p)
            if applied is not None:
                offsets[self.tp(p)] = applied + 1
        self._checkpoint_cost_s = time.perf_counter() - encoding_started
        await asyncio.gather(*futures)
        self._dirty.difference_update(parts)
        self.checkpoints += 1
        self.windows_since_checkpoint = 0
        self._rewinds_in_a_row = self._refusals_in_a_row = 0  # on the broker: whatever happened is behind us
        self._last_checkpoint = time.monotonic()
        if self._consumer is not None and offsets:
            async with self.commit_lock:
                if self.rebalancing_since is None:
                    with contextlib.suppress(Exception):  # commits are for lag visibility; the state is the truth
                        await self._consumer.commit(offsets)

    def _fault_kill(self, path: str) -> None:
        try:
            with open(path) as armed_for:
                armed = armed_for.read().strip() == self.name
        except OSError:
            return
        if armed:
            log.error("%s: fault injection: SIGKILL after output was acknowledged, before its checkpoint", self.name)
            os.kill(os.getpid(), signal.SIGKILL)

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

    # -- the loop ---------------------------------------------------------------------------------------
    @property
    def producer(self) -> HealingProducer:
        assert self._producer is not None
        return self._producer

    def producer_problem(self) -> str | None:
        """For readiness: why output cannot go out right now (None: it can)."""
        if self._producer is None:
            return "not started"
        failed = self._producer.failure()
        if failed is not None:
            return repr(failed)
        if self._producer.replacing:
            return "producer being replaced after a failed delivery"
        return None

    def _check_generation(self) -> None:
        """The producer replaced itself after a failed delivery since this stage's last rewind: what went
        out on the old one may have a hole, so nothing more goes out before the stage rewinds."""
        if self._producer is not None and self._producer.generation != self._generation:
            cause = self._producer.cause
            raise Undelivered(
                f"{self.name}: a delivery failed ({type(cause).__name__}: {cause}); the producer was replaced"
            ) from cause

    async def emit(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        """Send output; its delivery is checked before the next checkpoint claims the input behind it."""
        self._check_generation()
        self._emitted.append(await self.producer.send(topic, value, key=key, partition=partition))

    def _raise_undelivered(self) -> None:
        """A checkpoint over output the broker refused would lose it for good (after a broker restart the
        idempotent producer may fail a partition with OutOfOrderSequenceNumber): the stage rewinds instead,
        from the last good checkpoint, and emits again (readers drop the repeats by id)."""
        emitted = self._emitted
        self._emitted = [fut for fut in emitted if not fut.done()]
        for fut in emitted:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                exc = fut.exception()
                raise Undelivered(f"{self.name}: output not delivered ({type(exc).__name__}: {exc})") from exc

    def rewound(self, partitions: list[int]) -> None:
        """Hook: forget what the subclass keeps per partition beside its state (it is restored anew)."""

    async def rewind(self, cause: BaseException) -> None:
        """What a restarted worker would do, in-process: drop every partition's state and output not yet
        checkpointed, then restore each partition from its last checkpoint and re-read the input after it
        (:meth:`acquire`, on the next turn of the loop). Paced: the broker may still be away."""
        self.rewinds += 1
        self._rewinds_in_a_row += 1
        root = cause.__cause__ if isinstance(cause, Undelivered) and cause.__cause__ is not None else cause
        self._refusals_in_a_row = (
            0 if broker_away(root) or isinstance(root, ProducerReplaced) else (self._refusals_in_a_row + 1)
        )
        if self._refusals_in_a_row >= GIVE_UP_AFTER:
            raise KafkaError(
                f"{self.name}: {self._refusals_in_a_row} rewinds in a row failed ({type(root).__name__}: {root}); "
                "not an outage — giving up"
            ) from cause
        parts = sorted(set(self.states) | self._pending)
        n = self._rewinds_in_a_row
        if n & (n - 1) == 0:  # 1, 2, 4, 8, …: bounded logs however long the broker is away
            log.warning(
                "%s: rewinding partitions %s to their last checkpoint (%s: %s; rewind %d in a row); what "
                "followed it is read and emitted again",
                self.name,
                parts,
                type(cause).__name__,
                cause,
                n,
            )
        self._emitted = []
        self.windows_since_checkpoint = 0
        for p in parts:
            self.states.pop(p, None)
            self._dirty.discard(p)
        self.rewound(parts)
        if parts:
            self.hold(parts)
        await asyncio.sleep(REWIND_BACKOFF_S[min(n - 1, len(REWIND_BACKOFF_S) - 1)])
        if self._producer is not None:
            # Output from here on goes to the current (or the coming) producer; waits out a replacement.
            with contextlib.suppress(Exception):
                await self._producer.flush()
            self._generation = self._producer.generation

    async def run(self) -> None:
        self._producer = HealingProducer(
            lambda: AIOKafkaProducer(
                **client_kwargs(self.bootstrap),
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                max_request_size=CHECKPOINT_MAX_BYTES,
            ),
            f"{self.name} stage producer",
        )
        self._consumer = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
                group_id=self.group_id,
                group_instance_id=self.instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                max_poll_records=self.max_records,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=1000,
            )
        )
        self._consumer.subscribe([self.source_topic], listener=_Rebalance(self))
        try:
            await self._producer.start()
            await self._consumer.start()
            self._state_partitions = len(await topic_partitions(self._consumer, self.topics.window_state))
            await self.started()
            while True:
                try:
                    if self._rewind_cause is not None:
                        cause, self._rewind_cause = self._rewind_cause, None
                        raise Undelivered(f"{self.name}: {cause!r}") from cause
                    self._check_generation()  # a replacement since the last rewind: rewind before anything else
                    if self._pending:
                        await self.acquire(sorted(self._pending))
                    batch = await self._consumer.getmany(
                        timeout_ms=self.fetch_max_wait_ms, max_records=self.max_records
                    )
                    self.polled_at = time.monotonic()
                    await self.process(batch)
                    await self.emit_due()
                    await self.checkpoint()
                except ProducerFailed:
                    raise  # no producer can be started: the worker exits and says why
                except RECOVERABLE as exc:
                    await self.rewind(exc)
        finally:
            # Each step waits for the broker; with it down, a stop must still end (canary.runtime). A
            # checkpoint not written only means re-reading a little input after the restart.
            for step in (self.checkpoint(force=True), self._consumer.stop(), self._producer.stop()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(step, STOP_STEP_S)

    def refetch(self, tp: TopicPartition, records: list[Any]) -> None:
        """A batch for a partition whose state is not restored (or was revoked): fetch it again later."""
        if records and self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.seek(tp, records[0].offset)
