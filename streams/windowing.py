"""The windows stage: search_results → 5 s windows → canary_windows, as a micro-batch consumer.

Faust delivers records one event at a time through its stream machinery; measured on our 2-core
machines, a no-op Faust agent tops out near 5k records/s, an order of magnitude below what one worker
must aggregate. This stage therefore runs *inside the Faust worker* (started and stopped with the app)
but fetches with aiokafka's ``getmany`` and hands whole batches to the Kafka-free core
(:class:`~canary.core.windows.WindowFinalizer`), the micro-batching the design asks for. The SLO and
audit agents, which see a few records per second, stay ordinary Faust agents.

Durability without Faust tables: each source partition's finalizer state — open windows, the emission
cursor and the highest offset applied — is written to the compacted ``canary_window_state`` topic at
most every ``checkpoint_ms``, *after* the windows it emitted are acknowledged by the broker. On
assignment a worker restores that state and seeks just past the offset it records, so outcomes are
neither lost nor counted twice across crashes and rebalances; a window emitted after the last
checkpoint may be emitted again after a crash, and readers drop it by ``window_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from canary.core.models import RuleVerdict, WindowResult
from canary.core.windows import WindowFinalizer
from canary.kafka.topics import Topics
from canary.replay.decode import OutcomeDecoder, as_core_outcomes
from streams.registry import DeploymentRegistry

log = logging.getLogger("canary.streams.windows")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class WindowingStats:
    outcomes: int = 0
    invalid_outcomes: int = 0
    late_outcomes: int = 0
    windows_emitted: int = 0
    checkpoints: int = 0
    batches: int = 0
    by_partition: dict[int, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: WindowingStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.stage.release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # Fetching may already run for these partitions: hold them until their state is restored
        # by the main loop (restoring here, inside the rebalance, raced with the first fetches).
        self.stage.hold([tp.partition for tp in assigned])


class WindowingStage:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        registry: DeploymentRegistry,
        group_id: str,
        judge: Callable[[WindowResult], tuple[RuleVerdict, ...]] | None = None,
        window_ms: int = 5000,
        grace_ms: int = 1000,
        idle_windows: int = 12,
        checkpoint_ms: int = 500,
        max_records: int = 5000,
        session_timeout_ms: int = 10_000,
        instance_id: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.registry = registry
        self.group_id = group_id
        self.judge = judge
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self.idle_windows = idle_windows
        self.checkpoint_ms = checkpoint_ms
        self.max_records = max_records
        self.session_timeout_ms = session_timeout_ms
        self.instance_id = instance_id
        self.stats = WindowingStats()
        self.finalizers: dict[int, WindowFinalizer] = {}
        self._dirty: set[int] = set()
        self._pending: set[int] = set()
        self._decoder = OutcomeDecoder()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._last_checkpoint = 0.0

    # -- state ------------------------------------------------------------------------------------------
    def _state_key(self, partition: int) -> bytes:
        return f"{self.group_id}|{self.topics.search_results}|{partition}".encode()

    def _new_finalizer(self, state: dict[str, Any] | None) -> WindowFinalizer:
        if state is not None:
            return WindowFinalizer.from_dict(
                state, now_ms=now_ms(), aggregator=self.registry.aggregator_for, judge=self.judge
            )
        return WindowFinalizer(
            size_ms=self.window_ms,
            grace_ms=self.grace_ms,
            idle_windows=self.idle_windows,
            aggregator=self.registry.aggregator_for,
            judge=self.judge,
        )

    async def _load_states(self, partitions: list[int]) -> dict[int, dict[str, Any]]:
        """Latest checkpoint per partition from the compacted state topic (read to its current end)."""
        wanted = {self._state_key(p): p for p in partitions}
        found: dict[int, dict[str, Any]] = {}
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await reader.start()
        try:
            tp = TopicPartition(self.topics.window_state, 0)
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=500, max_records=10_000)
                for record in batch.get(tp, []):
                    partition = wanted.get(record.key or b"")
                    if partition is None:
                        continue
                    if record.value is None:
                        found.pop(partition, None)
                    else:
                        found[partition] = json.loads(record.value)
        finally:
            await reader.stop()
        return found

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topics.search_results, partition)

    def hold(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        self._pending.update(partitions)
        self._consumer.pause(*(self._tp(p) for p in partitions))

    async def acquire(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        states = await self._load_states(partitions)
        assigned = {tp.partition for tp in self._consumer.assignment()}
        for p in partitions:
            self._pending.discard(p)
            if p not in assigned:
                continue  # revoked again meanwhile
            fin = self._new_finalizer(states.get(p))
            self.finalizers[p] = fin
            applied = fin.applied_offset(p)
            if applied is not None:
                # The checkpoint, not the group's committed offset, says what the state already holds.
                self._consumer.seek(self._tp(p), int(applied) + 1)
            else:
                committed = await self._consumer.committed(self._tp(p))
                if committed is None:
                    await self._consumer.seek_to_beginning(self._tp(p))
                else:
                    self._consumer.seek(self._tp(p), committed)
            self._consumer.resume(self._tp(p))
        log.warning("windows: acquired partitions %s (restored state for %s)", partitions, sorted(states))

    async def release(self, partitions: list[int]) -> None:
        await self.checkpoint(only=partitions, force=True)
        for p in partitions:
            self.finalizers.pop(p, None)
            self._dirty.discard(p)
            self._pending.discard(p)

    async def checkpoint(self, only: Iterable[int] | None = None, force: bool = False) -> None:
        if self._producer is None:
            return
        if not force and (time.monotonic() - self._last_checkpoint) * 1000 < self.checkpoint_ms:
            return
        parts = sorted(set(only) & self._dirty if only is not None else self._dirty)
        if not parts:
            return
        # Emitted windows and dead letters must be on the broker before the state that says so.
        await self._producer.flush()
        futures = []
        offsets: dict[TopicPartition, int] = {}
        for p in parts:
            fin = self.finalizers.get(p)
            if fin is None:
                continue
            state = json.dumps(fin.to_dict()).encode()
            futures.append(await self._producer.send(self.topics.window_state, state, key=self._state_key(p)))
            applied = fin.applied_offset(p)
            if applied is not None:
                offsets[self._tp(p)] = applied + 1
        await asyncio.gather(*futures)
        self._dirty.difference_update(parts)
        self.stats.checkpoints += 1
        self._last_checkpoint = time.monotonic()
        if self._consumer is not None and offsets:
            with contextlib.suppress(Exception):  # commits are for lag visibility; the state is the truth
                await self._consumer.commit(offsets)

    # -- the loop ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.registry.caught_up.wait()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            group_instance_id=self.instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_poll_records=self.max_records,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=1000,
        )
        self._consumer.subscribe([self.topics.search_results], listener=_Rebalance(self))
        await self._consumer.start()
        try:
            while True:
                if self._pending:
                    await self.acquire(sorted(self._pending))
                batch = await self._consumer.getmany(timeout_ms=100, max_records=self.max_records)
                await self.process(batch)
                await self.emit_due()
                await self.checkpoint()
        finally:
            with contextlib.suppress(Exception):
                await self.checkpoint(force=True)
            await self._consumer.stop()
            await self._producer.stop()

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now = now_ms()
        for tp, records in batch.items():
            fin = self.finalizers.get(tp.partition)
            if fin is None:
                # Not restored (or revoked) yet: fetch these again once it is, never drop them.
                if records and self._consumer is not None and tp in self._consumer.assignment():
                    self._consumer.seek(tp, records[0].offset)
                continue
            outcomes, offsets = [], []
            for record in records:
                try:
                    outcomes.append(self._decoder.decode(record.value, record.offset))
                    offsets.append(record.offset)
                except Exception as exc:  # poison: dead-letter, never stop the stage
                    await self._dead_letter(tp.partition, record.offset, record.value, f"invalid outcome: {exc}")
                    self.stats.invalid_outcomes += 1
            if not outcomes:
                continue
            late = fin.add(tp.partition, as_core_outcomes(outcomes), now, offsets)
            self.stats.outcomes += len(outcomes)
            self.stats.batches += 1
            self.stats.by_partition[tp.partition] = self.stats.by_partition.get(tp.partition, 0) + len(outcomes)
            for outcome in late:
                self.stats.late_outcomes += 1
                await self._dead_letter(
                    tp.partition,
                    getattr(outcome, "offset", None),
                    None,
                    "late: window already finalized",
                    extra={"event_id": outcome.event_id, "ts": outcome.ts, "window_key": outcome.window_key.as_str()},
                )
            self._dirty.add(tp.partition)

    async def emit_due(self) -> None:
        assert self._producer is not None
        now = now_ms()
        for partition, fin in list(self.finalizers.items()):
            due = fin.due(now)
            for window in due:
                key = (window.deployment_id or "-").encode()
                await self._producer.send(self.topics.windows, json.dumps(window.to_dict()).encode(), key=key)
                self.stats.windows_emitted += 1
            if due:
                self._dirty.add(partition)

    async def _dead_letter(
        self, partition: int, offset: int | None, raw: bytes | None, reason: str, extra: dict[str, Any] | None = None
    ) -> None:
        assert self._producer is not None
        record: dict[str, Any] = {
            "reason": reason,
            "source_topic": self.topics.search_results,
            "partition": partition,
            "offset": offset,
            "raw": (raw or b"").decode("utf-8", errors="replace")[:10_000] if raw is not None else None,
            "dead_lettered_at_ms": now_ms(),
            **(extra or {}),
        }
        await self._producer.send(self.topics.results_dlq, json.dumps(record).encode())
        log.warning("dead-lettered outcome (partition %s offset %s): %s", partition, offset, reason)
