"""The control view: pointers, deployments and routers, event-sourced from the control and state topics.

The CLI folds the same control topic through the same :class:`ControlLedger` as the routers, after the
same verification (:mod:`canary.control`: a forged, unsigned or replayed command is not applied here either,
and is listed in ``rejected``), so the ``last_good`` / ``active`` pointers it shows are the ones the routers
use. Each successful read is cached locally so ``status`` can still answer (marked ``source: cache``) when
Kafka is down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer

from canary.control import fold_records, read_records, read_topic, resolve
from canary.core import wire
from canary.core.deployment import ConfigRef, ControlLedger, Deployment
from canary.core.models import ControlCommand, RouterState, WindowResult
from canary.errors import CanaryError, KafkaError
from canary.kafka.clients import Cluster, consumer_kwargs
from canary.kafka.topics import Topics
from canary.security import CommandVerifier, Verdict

__all__ = [
    "LIVE_ROUTER_MS",
    "ControlView",
    "Folded",
    "cache_path",
    "fold",
    "load_cache",
    "read_view_async",
    "save_cache",
]

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
    rejected: list[tuple[int | None, Verdict]] = field(default_factory=list)  # (record index, verdict): not applied
    command_times: list[int | None] = field(default_factory=list)  # append time of each command record
    # Verified but refused by the ledger (index, command, why): e.g. a rollout step before the plan allows it.
    refused: list[tuple[int, ControlCommand, str]] = field(default_factory=list)

    def accepted_commands(self) -> list[Any]:
        """The records verification accepted, in topic order (what a story or a report may show as commands:
        a forged copy of a real command id is not among them)."""
        rejected = {i for i, _ in self.rejected}
        return [c for i, c in enumerate(self.commands) if i not in rejected]

    def rejection(self, command_id: str) -> Verdict | None:
        """Why the control command ``command_id`` was rejected, if it was (the last rejected copy)."""
        found = [v for _, v in self.rejected if v.command is not None and v.command.command_id == command_id]
        return found[-1] if found else None

    def live_routers(self, now_ms: int | None = None) -> list[RouterState]:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return [s for s in self.routers.values() if now - s.applied_at_ms <= LIVE_ROUTER_MS]

    @property
    def current(self) -> Deployment | None:
        return self.ledger.current

    def last_good(self, fallback: ConfigRef | None) -> ConfigRef | None:
        return self.ledger.last_good or fallback


@dataclass
class Folded:
    ledger: ControlLedger
    invalid: int  # records that are not commands at all
    rejected: list[tuple[int | None, Verdict]]  # by verification, with their index in the records
    refused: list[tuple[int, ControlCommand, str]]  # by the ledger (not counting copies of applied commands)


def fold(
    commands: Sequence[bytes | Mapping[str, Any] | None],
    verifier: CommandVerifier,
    times: Sequence[int | None] | None = None,
) -> Folded:
    """Verify and fold control records — raw record values or already decoded objects — appended at
    ``times``, in topic order (:func:`canary.control.fold_records`). Total: no record can make it raise."""
    history = fold_records(commands, verifier, times)
    return Folded(
        history.ledger,
        history.invalid,
        [(i, o.verdict) for i, o in history.rejected],
        [(i, o.verdict.command, o.note) for i, o in history.refused if o.verdict.command is not None],
    )


async def read_view_async(
    bootstrap: Cluster, topics: Topics, with_windows: bool = False, verifier: CommandVerifier | None = None
) -> ControlView:
    """The view as of now. ``verifier``: a fresh one for this fold (None = the process settings')."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    try:
        await asyncio.wait_for(consumer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        timed = await read_records(consumer, topics.control)
        states_raw = await read_topic(consumer, topics.state, limits=wire.ROUTER_STATE)
        windows_raw = (
            await read_topic(consumer, topics.windows, limits=wire.WINDOW, tombstones=True) if with_windows else []
        )
    finally:
        await consumer.stop()
    raws = [value for value, _ in timed]
    times = [ts for _, ts in timed]
    folded = fold(raws, resolve(verifier, topics.control), times)
    invalid = folded.invalid
    commands = [wire.as_json(value, wire.CONTROL) for value in raws]
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
    now = int(time.time() * 1000)
    return ControlView(
        folded.ledger, commands, routers, "kafka", now, invalid, windows, folded.rejected, times, folded.refused
    )


def cache_path(home: Path, topics: Topics) -> Path:
    return home / f"control-view-{topics.prefix or 'default'}.json"


def save_cache(view: ControlView, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {
        "read_at_ms": view.read_at_ms,
        "commands": view.commands,
        "command_times": view.command_times,
        "routers": {k: v.to_dict() for k, v in view.routers.items()},
    }
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def load_cache(path: Path, verifier: CommandVerifier) -> ControlView | None:
    """The last view read from Kafka, from its cache file; None when there is none or it is unusable (a
    cache is a convenience: whatever the file holds, it never stops a command)."""
    try:
        payload = wire.decode_object(path.read_bytes(), wire.FILE)
        commands = payload.get("commands", [])
        times = payload.get("command_times") or [None] * len(commands)
        if not isinstance(commands, list) or not isinstance(times, list):
            return None
        folded = fold(commands, verifier, times)
        invalid = folded.invalid
        routers: dict[str, RouterState] = {}
        for value in (payload.get("routers") or {}).values():
            try:
                state = RouterState.from_dict(value)
            except CanaryError:
                invalid += 1
                continue
            routers[state.router_id] = state
        read_at = int(payload["read_at_ms"])
    except (OSError, wire.Rejected, KeyError, TypeError, ValueError, AttributeError):
        return None
    return ControlView(
        folded.ledger,
        commands,
        routers,
        "cache",
        read_at,
        invalid,
        rejected=folded.rejected,
        command_times=times,
        refused=folded.refused,
    )
