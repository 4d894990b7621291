"""The worker's stages recover in-process when their transactional producers are fenced (issue #19 item 5,
issue #22 item 3).

A stage's transaction can fail under it: the broker restarts, or another producer starts with its
transactional id and fences it (what the next owner of a partition does to a zombie). The stage must then do
what a restarted worker does, without exiting: drop the open transaction, start a new producer with the same
id, restore the partition's committed state and read again from its committed offset — counting each
outcome exactly once and emitting no window twice. Here the windows stage and the merge step run in-process
on the real broker, fed by a real router under load, and every partition's producer of both stages is fenced
through the broker mid-stream (tests/integration/test_broker_outage.py restarts a broker of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import LoadGenerator, make_backend, preset_ref, read_all, send_command, start_command
from router.service import RouterService
from streams.merging import MergeStage
from streams.registry import DeploymentRegistry
from streams.transactional import TransactionalStage
from streams.windowing import WindowingStage

pytestmark = pytest.mark.kafka


async def _windows(bootstrap: str, topics: Topics, dep: str) -> dict[str, dict[str, Any]]:
    """Merged windows of ``dep`` by id, as a read_committed reader sees them: each exactly once."""
    by_id: dict[str, dict[str, Any]] = {}
    for w in await read_all(bootstrap, topics.windows):
        if w.get("deployment_id") != dep:
            continue
        assert w["window_id"] not in by_id, ("a window emitted twice", w)
        by_id[w["window_id"]] = w
    return by_id


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def _fence(bootstrap: str, stage: TransactionalStage[Any]) -> None:
    """Start a producer with each assigned partition's transactional id: the stage's producers are fenced."""
    for p in sorted(stage.states):
        fencer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=stage.transactional_id(p))
        await fencer.start()  # InitProducerId: a new epoch for the id, the stage's open transaction aborted
        await fencer.stop()


async def test_stages_recover_from_fencing_and_count_each_outcome_once(kafka_bootstrap: str) -> None:
    topics = Topics(f"rewind{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    cmd = start_command("candidate_high_recall", weight=0.3)
    await send_command(kafka_bootstrap, topics, cmd)
    registry = DeploymentRegistry(kafka_bootstrap, topics.control)
    windowing = WindowingStage(kafka_bootstrap, topics, registry, group_id=f"{topics.prefix}w")
    merging = MergeStage(kafka_bootstrap, topics, group_id=f"{topics.prefix}m")
    stages = [asyncio.create_task(x.run()) for x in (registry, windowing, merging)]
    router = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    load = LoadGenerator(router, qps=80)
    try:
        await _until(lambda: _settled(windowing, merging), 60, "both stages to hold their partitions")
        await load.run(8)
        await _until(lambda: _read(windowing, load.sent), 30, "the windows stage to read the first half")
        for stage in (windowing, merging):
            await _fence(kafka_bootstrap, stage)
        await load.run(8)  # the second half goes out while the stages recover
        await load.drain()
        await _until(lambda: _settled(windowing, merging, rewound=True), 60, "both stages to rewind")

        async def complete() -> bool:
            windows = await _windows(kafka_bootstrap, topics, cmd.deployment_id)
            return sum(w["response_count"] for w in windows.values()) >= load.sent

        await _until(complete, 60, "windows covering every outcome")
        await asyncio.sleep(2)  # anything emitted twice reaches the windows topic too
        for task in stages:
            assert not task.done(), task  # nothing exited
    finally:
        await router.stop()
        for task in stages:
            task.cancel()
        for task in stages:
            with contextlib.suppress(BaseException):
                await task
    # Each fenced partition went back to its last commit: what it had read since was read again …
    assert windowing.rewinds >= 1 and merging.rewinds >= 1
    assert windowing.stats.outcomes >= load.sent
    windows = await _windows(kafka_bootstrap, topics, cmd.deployment_id)
    assert sum(w["response_count"] for w in windows.values()) == load.sent  # … and counted once
    assert router.stats.requests == load.sent


async def _read(stage: WindowingStage, n: int) -> bool:
    return stage.stats.outcomes >= n


async def _settled(*stages: TransactionalStage[Any], rewound: bool = False) -> bool:
    return all(s.states and not s._pending and (s.rewinds >= 1 or not rewound) for s in stages)
