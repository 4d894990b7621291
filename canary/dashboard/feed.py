"""The dashboard's live state, folded from the topics it tails, and the tailing loop itself.

One consumer (no group: it reads everything, commits nothing) follows four topics from their beginning:
``canary_control`` (verified in topic order, then folded into a ledger, by :class:`canary.control.ControlFold`,
exactly as the routers and ``canary status`` do), ``canary_state``
(router states and heartbeats), ``canary_windows`` (last_good windows) and ``canary_verdicts`` (judged candidate
windows, as ``canary watch`` reads them). Reading from the beginning gives past deployments too; the
retention of those topics (30 days for windows, forever for control) bounds it.

Poison records are counted and skipped, never fatal: a dashboard must not go dark because someone wrote
garbage to a topic it only watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from canary.control import ControlFold
from canary.core import wire
from canary.core.deployment import ControlLedger, Deployment
from canary.core.judge import Judgement
from canary.core.models import RouterState, WindowResult
from canary.core.outages import KEPT, BrokerOutage, OutageNote, merge_outages
from canary.errors import KafkaError
from canary.kafka.clients import Cluster, consumer_kwargs
from canary.kafka.topics import Topics, topic_partitions
from canary.security import CommandVerifier, Verdict

log = logging.getLogger("canary.dashboard")

END_COMMANDS = ("rollback", "promote", "abort")
AUDIT_LINES_KEPT = 200


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One record of the control topic as the routers judged it."""

    offset: int
    appended_at_ms: int | None  # the broker's LogAppendTime
    raw: dict[str, Any]
    verdict: Verdict
    applied: bool  # accepted by verification and applied by the ledger
    note: str  # the ledger's note, or the rejection's message

    @property
    def command_id(self) -> str | None:
        return self.verdict.command.command_id if self.verdict.command is not None else None


@dataclass(frozen=True, slots=True)
class WindowArrival:
    """A window the dashboard just learned of, with the times the latency figures are made of."""

    window_id: str
    deployment_id: str | None
    arm: str
    window_end_ms: int
    emitted_at_ms: int  # the merge step emitted the window
    judged_at_ms: int | None  # the SLO agent judged it (candidate windows)
    received_at_ms: int  # this process read it from Kafka
    failed: bool

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        return d


@dataclass
class Changes:
    """What one fetched batch changed; the app re-renders from it."""

    deployments: set[str] = field(default_factory=set)
    control: bool = False
    routers: bool = False
    windows: list[WindowArrival] = field(default_factory=list)
    moments: list[ControlRecord] = field(default_factory=list)  # applied rollbacks / promotions / aborts

    def __bool__(self) -> bool:
        return bool(self.deployments or self.control or self.routers or self.windows or self.moments)


@dataclass
class DashboardState:
    """Everything the page shows, folded from the topics."""

    verifier: CommandVerifier
    ledger: ControlLedger = field(default_factory=ControlLedger)
    control: list[ControlRecord] = field(default_factory=list)
    windows: dict[str, dict[str, WindowResult]] = field(default_factory=dict)  # deployment → window id → window
    judgements: dict[str, Judgement] = field(default_factory=dict)  # deployment → latest judgement
    outages: tuple[BrokerOutage, ...] = ()  # noted on judgements (canary.core.outages), merged
    routers: dict[str, RouterState] = field(default_factory=dict)
    audit: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AUDIT_LINES_KEPT))
    poison: int = 0
    caught_up: bool = False
    _fold: ControlFold = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fold = ControlFold(self.verifier, self.ledger)

    # -- folding ----------------------------------------------------------------------------------------
    def add_control(self, value: bytes | None, offset: int, appended_at_ms: int | None, changes: Changes) -> None:
        raw = wire.as_json(value, wire.CONTROL)  # for display; the verifier decodes the record itself
        outcome = self._fold.apply(value, offset, appended_at_ms)
        verdict, applied = outcome.verdict, outcome.applied
        if verdict.accepted and verdict.command is not None:
            changes.deployments.add(verdict.command.deployment_id)
        record = ControlRecord(
            offset, appended_at_ms, raw if isinstance(raw, dict) else {}, verdict, applied, outcome.note
        )
        self.control.append(record)
        changes.control = True
        if applied and verdict.command is not None and verdict.command.type in END_COMMANDS:
            changes.moments.append(record)

    def add_window(self, window: WindowResult, changes: Changes, judged_at_ms: int | None = None) -> None:
        dep = window.deployment_id
        if dep is None:
            return  # traffic outside any canary: nothing on the page is about it
        known = self.windows.setdefault(dep, {})
        previous = known.get(window.window_id)
        if previous is not None and previous.emitted_at_ms > window.emitted_at_ms:
            return
        known[window.window_id] = window
        changes.deployments.add(dep)
        if previous is None:
            failed = any(v.outcome == "fail" for v in window.verdicts)
            changes.windows.append(
                WindowArrival(
                    window.window_id,
                    dep,
                    window.arm,
                    window.window_end_ms,
                    window.emitted_at_ms,
                    judged_at_ms,
                    now_ms(),
                    failed,
                )
            )

    def add_judgement(self, judgement: Judgement, changes: Changes) -> None:
        dep = judgement.deployment_id
        latest = self.judgements.get(dep)
        if latest is None or judgement.window.window_start_ms >= latest.window.window_start_ms:
            self.judgements[dep] = judgement
        note = OutageNote.from_context(judgement.context)
        if note is not None:
            self.outages = merge_outages([*self.outages, note.outage])[-KEPT:]
        self.add_window(judgement.window, changes, judgement.judged_at_ms or None)

    def add_router_state(self, state: RouterState, changes: Changes) -> None:
        previous = self.routers.get(state.router_id)
        if previous is None or (state.applied_at_ms, state.seq) >= (previous.applied_at_ms, previous.seq):
            self.routers[state.router_id] = state
            changes.routers = True

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def shown(self) -> Deployment | None:
        """The deployment the live view is about: the running one, else the latest."""
        return self.ledger.current or self.ledger.latest

    def accepted_commands(self) -> list[dict[str, Any]]:
        """The raw commands verification accepted, in topic order (what the report may fold)."""
        return [r.raw for r in self.control if r.verdict.accepted]

    def accepted_command_times(self) -> list[int | None]:
        """Their append times, in the same order."""
        return [r.appended_at_ms for r in self.control if r.verdict.accepted]

    def deployment_windows(self, deployment_id: str) -> list[WindowResult]:
        return list(self.windows.get(deployment_id, {}).values())

    def end_record(self, dep: Deployment) -> ControlRecord | None:
        """The applied control record that ended ``dep``, if it ended."""
        if dep.end_command_id is None:
            return None
        return next((r for r in reversed(self.control) if r.applied and r.command_id == dep.end_command_id), None)


Listener = Callable[[Changes], Awaitable[None]]


async def tail_topics(bootstrap: Cluster, topics: Topics, state: DashboardState, on_change: Listener) -> None:
    """Fold the four topics into ``state`` forever, calling ``on_change`` after every batch that changed
    something (once caught up with the history; the first call after that carries the whole history)."""
    consumer = AIOKafkaConsumer(
        **consumer_kwargs(bootstrap), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        await asyncio.wait_for(consumer.start(), 10)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise KafkaError(f"dashboard: cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        tps: list[TopicPartition] = []
        for name in (topics.control, topics.state, topics.windows, topics.verdicts):
            tps += await topic_partitions(consumer, name)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        history_end = await consumer.end_offsets(tps)
        pending = Changes()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    _fold(state, topics, tp.topic, record, pending)
            if not state.caught_up:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= history_end[tp] for tp in tps):
                    state.caught_up = True
                    log.info("dashboard: history read (%d control records)", len(state.control))
                else:
                    continue  # render once, after the history, not per historic batch
            if pending:
                changes, pending = pending, Changes()
                await on_change(changes)
    finally:
        await consumer.stop()


def _fold(state: DashboardState, topics: Topics, topic: str, record: Any, changes: Changes) -> None:
    try:
        if topic == topics.control:
            state.add_control(record.value, record.offset, record.timestamp, changes)
            return
        if record.value is None:
            return
        if topic == topics.verdicts:
            state.add_judgement(Judgement.from_dict(wire.decode_object(record.value, wire.JUDGEMENT)), changes)
        elif topic == topics.windows:
            window = WindowResult.from_dict(wire.decode_object(record.value, wire.WINDOW))
            if window.arm != "candidate":  # the candidate's judged copy comes from the verdicts topic
                state.add_window(window, changes)
        elif topic == topics.state:
            state.add_router_state(RouterState.from_dict(wire.decode_object(record.value, wire.ROUTER_STATE)), changes)
    except Exception as exc:  # poison (decoding or a contract), or a fold that choked on it: counted, skipped
        state.poison += 1
        log.debug("dashboard: skipped a poison record on %s@%s: %s", topic, record.offset, exc)


class AuditTail:
    """Follows the worker's audit log (JSON lines), tolerating its absence, truncation and a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self._offset:  # truncated or replaced: start over
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return []
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(size - self._offset)
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for its newline
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = wire.decode(line, wire.AUDIT_LINE)
            except wire.Rejected:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out


__all__ = [
    "AuditTail",
    "Changes",
    "ControlRecord",
    "DashboardState",
    "WindowArrival",
    "tail_topics",
]
