"""The control view: pointers, deployments and routers, event-sourced from the control and state topics.

The CLI folds the same control topic through the same :class:`ControlLedger` as the routers, so the
``last_good`` / ``active`` pointers it shows are the ones the routers use. Each successful read is cached
locally so ``status`` can still answer (marked ``source: cache``) when Kafka is down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer

from canary.core.deployment import ConfigRef, ControlLedger, Deployment
from canary.core.models import ControlCommand, RouterState, WindowResult
from canary.errors import CanaryError, KafkaError
from canary.kafka.topics import Topics, topic_partitions

LIVE_ROUTER_MS = 15_000  # three missed 5 s heartbeats


@dataclass
class ControlView:
    ledger: ControlLedger
    commands: list[dict[str, Any]]
    routers: dict[str, RouterState]
    source: Literal["kafka", "cache"]
    read_at_ms: int
    invalid_records: int = 0
    windows: list[WindowResult] = field(default_factory=list)

    def live_routers(self, now_ms: int | None = None) -> list[RouterState]:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return [s for s in self.routers.values() if now - s.applied_at_ms <= LIVE_ROUTER_MS]

    @property
    def current(self) -> Deployment | None:
        return self.ledger.current

    def last_good(self, fallback: ConfigRef | None) -> ConfigRef | None:
        return self.ledger.last_good or fallback


def fold(commands: Sequence[dict[str, Any]]) -> tuple[ControlLedger, int]:
    ledger = ControlLedger()
    invalid = 0
    for raw in commands:
        try:
            ledger.apply(ControlCommand.from_dict(raw))
        except CanaryError:
            invalid += 1
    return ledger, invalid


async def read_topic(consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every JSON record of ``topic`` from the beginning to the current end, partition by partition."""
    tps = await topic_partitions(consumer, topic)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
            return out
        if time.monotonic() > deadline:
            raise KafkaError(f"reading {topic} timed out after {timeout:.0f}s")
        batch = await consumer.getmany(timeout_ms=300)
        for records in batch.values():
            for record in records:
                if record.value is None:
                    continue
                try:
                    out.append(json.loads(record.value))
                except ValueError:
                    out.append({"_invalid": record.value.decode(errors="replace")[:200]})


async def read_view_async(bootstrap: str, topics: Topics, with_windows: bool = False) -> ControlView:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        await asyncio.wait_for(consumer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        commands = await read_topic(consumer, topics.control)
        states_raw = await read_topic(consumer, topics.state)
        windows_raw = await read_topic(consumer, topics.windows) if with_windows else []
    finally:
        await consumer.stop()
    ledger, invalid = fold(commands)
    routers: dict[str, RouterState] = {}
    for raw in states_raw:
        try:
            state = RouterState.from_dict(raw)
        except CanaryError:
            invalid += 1
            continue
        routers[state.router_id] = state
    windows = []
    for raw in windows_raw:
        try:
            windows.append(WindowResult.from_dict(raw))
        except CanaryError:
            invalid += 1
    return ControlView(ledger, commands, routers, "kafka", int(time.time() * 1000), invalid, windows)


def cache_path(home: Path, topics: Topics) -> Path:
    return home / f"control-view-{topics.prefix or 'default'}.json"


def save_cache(view: ControlView, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {
        "read_at_ms": view.read_at_ms,
        "commands": view.commands,
        "routers": {k: v.to_dict() for k, v in view.routers.items()},
    }
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def load_cache(path: Path) -> ControlView | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ledger, invalid = fold(payload.get("commands", []))
    routers = {k: RouterState.from_dict(v) for k, v in payload.get("routers", {}).items()}
    return ControlView(ledger, payload.get("commands", []), routers, "cache", int(payload["read_at_ms"]), invalid)
