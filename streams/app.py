"""The Faust app: search_results → 5 s windows → SLO agent → control topic; control/state → audit.log.

Agents are thin loops around the Kafka-free core (``canary.core``). Window finalization does not use
Faust's ``on_window_close`` (a 30 s wall-clock cleanup timer that loses callbacks): each source
partition has a :class:`WindowFinalizer` driven by event time, with the processing-time fallback built
into its watermark, and a 100 ms tick closes windows when traffic stops.

Durability: each partition's finalizer state is written to a Faust table changelog once per micro-batch
(and once per emission), never per event. It records the highest source offset applied, so events
redelivered after a crash (at-least-once) are skipped instead of counted twice. Faust flushes the
producer before committing offsets, so state and outputs are on the broker before their input offsets
are committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import EventT, StreamT

from canary.core.models import ControlCommand, RouterState, SearchOutcome, WindowKey, WindowResult
from canary.core.slo import SLOEvaluator, judge_all
from canary.core.windows import WindowFinalizer
from canary.kafka.topics import Topics
from streams.audit import AuditLog, control_event, state_event
from streams.registry import DeploymentRegistry

log = logging.getLogger("canary.streams")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    bootstrap: str
    topics: Topics
    audit_log: Path
    data_dir: Path
    app_id: str = "canary-streams"
    window_ms: int = 5000
    grace_ms: int = 1000
    idle_windows: int = 12
    tick_seconds: float = 0.1
    batch_max: int = 2000
    batch_within: float = 0.05
    partitions: int = 3
    # A SIGKILLed worker keeps its partitions until the broker expires its session; 60 s (Faust's
    # default) would delay a rollback by a minute after a crash. With a stable instance id (static
    # membership) a restarted worker takes its partitions back at once.
    session_timeout: float = 10.0
    instance_id: str | None = None


@dataclass
class StreamsStats:
    outcomes: int = 0
    invalid_outcomes: int = 0
    late_outcomes: int = 0
    windows_emitted: int = 0
    rollbacks_issued: int = 0
    audit_lines: int = 0
    by_partition: dict[int, int] = field(default_factory=lambda: defaultdict(int))


class CanaryStreams:
    """Builds and wires the Faust app for one worker process."""

    def __init__(self, config: StreamsConfig) -> None:
        self.config = config
        self.stats = StreamsStats()
        topics = config.topics
        self.app = faust.App(
            f"{topics.prefix}{config.app_id}",
            broker=f"kafka://{config.bootstrap}",
            store="memory://",
            processing_guarantee="at_least_once",
            topic_partitions=config.partitions,
            topic_replication_factor=1,
            web_enabled=False,
            datadir=str(config.data_dir),
            broker_commit_interval=1.0,
            producer_linger=0.0,
            stream_wait_empty=False,
            table_cleanup_interval=3600.0,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=config.session_timeout,
            broker_heartbeat_interval=1.0,
            consumer_group_instance_id=config.instance_id,
        )
        app = self.app
        self.registry = DeploymentRegistry(config.bootstrap, topics.control)
        self.audit = AuditLog(config.audit_log)
        self.results_topic = self._raw_topic(topics.search_results, config.partitions)
        self.windows_topic = self._raw_topic(topics.windows, config.partitions)
        self.control_topic = self._raw_topic(topics.control, 1)
        self.state_topic = self._raw_topic(topics.state, 1)
        self.dlq_topic = self._raw_topic(topics.results_dlq, 1)
        self.window_state = app.Table("window-state", partitions=config.partitions, default=None)
        self.slo_state = app.Table("slo-state", partitions=config.partitions, default=None)
        self.finalizers: dict[int, WindowFinalizer] = {}

        app.agent(self.results_topic, name="windows", concurrency=1)(self._windows_agent)
        app.agent(self.windows_topic, name="slo", concurrency=1)(self._slo_agent)
        app.agent(self.control_topic, name="audit-control", concurrency=1)(self._audit_control_agent)
        app.agent(self.state_topic, name="audit-state", concurrency=1)(self._audit_state_agent)
        app.task(self._run_registry)
        app.timer(config.tick_seconds, name="window-tick")(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    def _raw_topic(self, name: str, partitions: int) -> faust.TopicT:
        # Declared topics are created by `canary kafka topics`; Faust must not re-declare them differently.
        return self.app.topic(name, partitions=partitions, key_serializer="raw", value_serializer="raw")

    # -- deployments -----------------------------------------------------------------------------------------
    async def _run_registry(self) -> None:
        await self.registry.run()

    # -- windows -------------------------------------------------------------------------------------------
    def _new_finalizer(self, state: dict[str, Any] | None) -> WindowFinalizer:
        judge = self._judge
        if state is not None:
            return WindowFinalizer.from_dict(
                state, now_ms=now_ms(), aggregator=self.registry.aggregator_for, judge=judge
            )
        return WindowFinalizer(
            size_ms=self.config.window_ms,
            grace_ms=self.config.grace_ms,
            idle_windows=self.config.idle_windows,
            aggregator=self.registry.aggregator_for,
            judge=judge,
        )

    def _judge(self, window: WindowResult) -> tuple[Any, ...]:
        if window.arm != "candidate" or window.deployment_id is None:
            return ()
        return judge_all(self.registry.rules(window.deployment_id), window)

    def _finalizer(self, partition: int) -> WindowFinalizer:
        fin = self.finalizers.get(partition)
        if fin is None:
            stored = self.window_state.data.get(f"p{partition}")
            fin = self._new_finalizer(stored if isinstance(stored, dict) else None)
            self.finalizers[partition] = fin
        return fin

    def _persist(self, partition: int) -> None:
        key = f"p{partition}"
        value = self.finalizers[partition].to_dict()
        self.window_state.data[key] = value
        self.window_state.send_changelog(partition, key, value)

    async def _windows_agent(self, stream: StreamT[bytes]) -> None:
        await self.registry.caught_up.wait()
        batches = cast(faust.Stream[bytes], stream).take_events(self.config.batch_max, within=self.config.batch_within)
        async for events in batches:
            await self._process_batch(events)

    async def _process_batch(self, events: Sequence[EventT[bytes]]) -> None:
        by_partition: dict[int, tuple[list[SearchOutcome], list[int]]] = {}
        for event in events:
            message = event.message
            try:
                outcome = SearchOutcome.from_dict(json.loads(event.value))
            except Exception as exc:  # a poison message must never stop the agent
                await self._dead_letter(message.partition, message.offset, event.value, f"invalid outcome: {exc}")
                continue
            outs, offs = by_partition.setdefault(message.partition, ([], []))
            outs.append(outcome)
            offs.append(message.offset)
        now = now_ms()
        for partition, (outcomes, offsets) in by_partition.items():
            fin = self._finalizer(partition)
            late = fin.add(partition, outcomes, now, offsets)
            self.stats.outcomes += len(outcomes)
            for outcome in late:
                self.stats.late_outcomes += 1
                await self._dead_letter(
                    partition, None, json.dumps(outcome.to_dict()).encode(), "late: window already finalized"
                )
            await self._emit(partition, fin.due(now))
            self._persist(partition)

    async def _tick(self) -> None:
        if not self.registry.caught_up.is_set():
            return
        now = now_ms()
        for partition in self._assigned_result_partitions():
            fin = self._finalizer(partition)
            due = fin.due(now)
            if due:
                await self._emit(partition, due)
                self._persist(partition)

    def _assigned_result_partitions(self) -> list[int]:
        """Partitions of search_results this worker owns, once their table state is recovered."""
        recovery: Any = getattr(self.app.tables, "recovery", None)
        if recovery is None or not recovery.completed.is_set():
            return sorted(self.finalizers)
        try:
            assignment = self.app.consumer.assignment()
        except Exception:
            return sorted(self.finalizers)
        return sorted({tp.partition for tp in assignment if tp.topic == self.results_topic.get_topic_name()})

    async def _emit(self, partition: int, windows: list[WindowResult]) -> None:
        for window in windows:
            key = (window.deployment_id or "-").encode()
            await self.windows_topic.send(key=key, value=json.dumps(window.to_dict()).encode())
            self.stats.windows_emitted += 1

    async def _dead_letter(self, partition: int, offset: int | None, raw: bytes, reason: str) -> None:
        if reason.startswith("invalid"):
            self.stats.invalid_outcomes += 1
        record = {
            "reason": reason,
            "source_topic": self.config.topics.search_results,
            "partition": partition,
            "offset": offset,
            "raw": raw.decode("utf-8", errors="replace")[:10_000],
            "dead_lettered_at_ms": now_ms(),
        }
        await self.dlq_topic.send(value=json.dumps(record).encode())
        log.warning("dead-lettered outcome (partition %s offset %s): %s", partition, offset, reason)

    async def _on_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        for tp in revoked:
            if tp.topic == self.results_topic.get_topic_name():
                self.finalizers.pop(tp.partition, None)

    # -- SLO -----------------------------------------------------------------------------------------------
    async def _slo_agent(self, stream: StreamT[bytes]) -> None:
        await self.registry.caught_up.wait()
        async for event in stream.events():
            try:
                window = WindowResult.from_dict(json.loads(event.value))
            except Exception as exc:  # poison: log and skip, never stop the agent
                log.warning("ignoring invalid window result: %s", exc)
                continue
            await self._judge_window(window)

    async def _judge_window(self, window: WindowResult) -> None:
        dep_id = window.deployment_id
        if window.arm != "candidate" or dep_id is None:
            return
        stored = self.slo_state.get(dep_id)
        evaluator = SLOEvaluator.from_dict(stored) if isinstance(stored, dict) else SLOEvaluator()
        evaluator.set_rules(dep_id, self.registry.rules(dep_id))
        decision = evaluator.observe(window)
        if decision is not None:
            deployment = self.registry.deployment(dep_id)
            if deployment is None or not deployment.live or decision.command_id in self.registry.ledger.applied_ids:
                log.info("rollback for %s not issued: deployment no longer live", dep_id)
            else:
                evidence = {
                    **decision.evidence,
                    "config_name": deployment.candidate.name,
                    "triggering_window": decision.window_id,
                }
                cmd = ControlCommand(
                    command_id=decision.command_id,
                    type="rollback",
                    deployment_id=dep_id,
                    candidate_config=None,
                    candidate_config_hash=deployment.candidate.content_hash,
                    last_good_config=None,
                    weight=0.0,
                    reason=decision.reason,
                    evidence=evidence,
                    issued_by="slo-agent",
                    issued_at_ms=now_ms(),
                )
                fut = await self.control_topic.send(key=dep_id.encode(), value=json.dumps(cmd.to_dict()).encode())
                await fut
                self.stats.rollbacks_issued += 1
                log.warning("ROLLBACK %s: %s", dep_id, decision.reason)
        self.slo_state[dep_id] = evaluator.to_dict()

    # -- audit ----------------------------------------------------------------------------------------------
    async def _audit_control_agent(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                entry = control_event(ControlCommand.from_dict(json.loads(event.value)))
            except Exception as exc:  # poison: log and skip, never stop the agent
                log.warning("audit: invalid control record at offset %s: %s", event.message.offset, exc)
                continue
            if self.audit.append(entry):
                self.stats.audit_lines += 1

    async def _audit_state_agent(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            if event.value is None:
                continue  # compaction tombstone
            try:
                state = RouterState.from_dict(json.loads(event.value))
            except Exception as exc:  # poison: log and skip, never stop the agent
                log.warning("audit: invalid state record at offset %s: %s", event.message.offset, exc)
                continue
            if state.heartbeat:
                continue
            entry = state_event(state)
            if self.audit.append(entry):
                self.stats.audit_lines += 1


def window_key_of(outcome: SearchOutcome) -> WindowKey:
    return outcome.window_key


async def wait_forever() -> None:  # pragma: no cover - used by the CLI around Worker
    await asyncio.Event().wait()
