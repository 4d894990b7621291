"""Issuing control commands as an operator: validate, produce, wait for the routers' acknowledgement.

A command is only "done" when every live router has published a state answering it. If none answers
in time, a ``start`` is compensated by an ``abort`` so no half-started canary is left behind.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from canary.config import Preset
from canary.core.deployment import ConfigRef
from canary.core.models import CommandType, ControlCommand, RouterState
from canary.errors import DeploymentError, KafkaError
from canary.kafka.topics import Topics
from canary.ops.view import ControlView, read_view_async


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def new_deployment_id() -> str:
    """The spec's style: canary_<epoch seconds>_<4 digits>."""
    return f"canary_{int(time.time())}_{random.randint(0, 9999):04d}"


@dataclass(frozen=True, slots=True)
class Ack:
    command: ControlCommand
    acked_by: list[str]
    waited_for: list[str]
    elapsed_ms: int
    compensated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command.command_id,
            "type": self.command.type,
            "deployment_id": self.command.deployment_id,
            "acked_by": self.acked_by,
            "waited_for": self.waited_for,
            "elapsed_ms": self.elapsed_ms,
            "compensated": self.compensated,
        }


async def produce_command(bootstrap: str, topics: Topics, cmd: ControlCommand) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        await producer.send_and_wait(topics.control, json.dumps(cmd.to_dict()).encode(), key=cmd.deployment_id.encode())
    finally:
        await producer.stop()


async def _wait_for_acks(
    bootstrap: str, topics: Topics, command_id: str, routers: list[str], timeout: float
) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    acked: set[str] = set()
    try:
        tp = TopicPartition(topics.state, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not set(routers) <= acked:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        state = RouterState.from_dict(json.loads(record.value))
                    except Exception:
                        continue
                    if state.answers_command_id == command_id:
                        acked.add(state.router_id)
    finally:
        await consumer.stop()
    return sorted(acked)


async def issue(bootstrap: str, topics: Topics, cmd: ControlCommand, view: ControlView, timeout: float) -> Ack:
    routers = sorted(s.router_id for s in view.live_routers())
    started = time.monotonic()
    await produce_command(bootstrap, topics, cmd)
    acked = await _wait_for_acks(bootstrap, topics, cmd.command_id, routers, timeout) if routers else []
    return Ack(cmd, acked, routers, int((time.monotonic() - started) * 1000))


def _command(kind: CommandType, deployment_id: str, **fields: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "candidate_config": None,
        "candidate_config_hash": None,
        "last_good_config": None,
        "weight": None,
        "reason": None,
        "evidence": None,
    }
    base.update(fields)
    return ControlCommand(
        command_id=f"{kind}-{uuid.uuid4().hex[:12]}",
        type=kind,
        deployment_id=deployment_id,
        issued_by=operator(),
        issued_at_ms=now_ms(),
        **base,
    )


async def start_canary(
    bootstrap: str,
    topics: Topics,
    candidate: Preset,
    default_last_good: Preset,
    weight: float = 0.10,
    timeout: float = 10.0,
    require_router: bool = True,
) -> Ack:
    view = await read_view_async(bootstrap, topics)
    current = view.current
    if current is not None:
        raise DeploymentError(
            f"another canary is already {current.status}: {current.deployment_id} "
            f"(candidate {current.candidate.name}); stop it first with 'canary stop --promote' or '--rollback'"
        )
    if require_router and not view.live_routers():
        raise DeploymentError(
            "no live router (none published a heartbeat in the last 15 s); start one with 'canary router'"
        )
    fallback = ConfigRef.from_snapshot(default_last_good.to_dict(), default_last_good.content_hash)
    last_good = view.last_good(fallback)
    assert last_good is not None
    cmd = _command(
        "start",
        new_deployment_id(),
        candidate_config=candidate.to_dict(),
        candidate_config_hash=candidate.content_hash,
        last_good_config=last_good.snapshot,
        weight=weight,
        reason=f"start canary of {candidate.name} {candidate.version}",
    )
    ack = await issue(bootstrap, topics, cmd, view, timeout)
    if ack.waited_for and not set(ack.waited_for) <= set(ack.acked_by):
        # Nothing may stay half-applied: withdraw the start everywhere.
        abort = _command("abort", cmd.deployment_id, reason="start not acknowledged by every router in time")
        await produce_command(bootstrap, topics, abort)
        return Ack(cmd, ack.acked_by, ack.waited_for, ack.elapsed_ms, compensated=True)
    return ack


async def stop_canary(bootstrap: str, topics: Topics, promote: bool, timeout: float = 10.0) -> Ack:
    view = await read_view_async(bootstrap, topics)
    current = view.current
    if current is None:
        raise DeploymentError("no canary is running; nothing to stop ('canary status' shows the last one)")
    kind: CommandType = "promote" if promote else "rollback"
    reason = f"manual {kind} by {operator()}"
    cmd = _command(kind, current.deployment_id, reason=reason, weight=0.0)
    return await issue(bootstrap, topics, cmd, view, timeout)


async def simple_command(
    bootstrap: str, topics: Topics, kind: CommandType, weight: float | None = None, timeout: float = 10.0
) -> Ack:
    view = await read_view_async(bootstrap, topics)
    current = view.current
    if current is None:
        raise DeploymentError(f"no canary is running; nothing to {kind}")
    cmd = _command(kind, current.deployment_id, weight=weight, reason=f"{kind} by {operator()}")
    return await issue(bootstrap, topics, cmd, view, timeout)
