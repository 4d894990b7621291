"""The worker's stages rewind in-process when their producer is replaced (issue #19, item 5).

A failed delivery makes a stage's HealingProducer replace itself (what a broker restart does: batches expire,
the old producer's sequence is refused). The stage must then do what a restarted worker does, without
exiting: restore every partition from its last checkpoint, re-read the input after it and emit again —
counting each outcome exactly once. Here the windows stage and the merge step run in-process on the real
broker, fed by a real router under load, with checkpoints 60 s apart, so a rewind really re-reads everything
since the first checkpoint; the replacement is triggered through the producer's own entry point (the
broker is not disturbed: the session broker is shared; tests/integration/test_broker_outage.py restarts a
broker of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import LoadGenerator, make_backend, preset_ref, read_all, send_command, start_command
from router.service import RouterService
from streams.checkpointed import CheckpointedStage
from streams.merging import MergeStage
from streams.registry import DeploymentRegistry
from streams.windowing import WindowingStage

pytestmark = pytest.mark.kafka

EMITTED_AT = ("emitted_at", "emitted_at_ms")


async def _windows(bootstrap: str, topics: Topics, dep: str) -> dict[str, dict[str, Any]]:
    """Merged windows of ``dep`` by id; a window emitted again must be the same window."""
    by_id: dict[str, dict[str, Any]] = {}
    for w in await read_all(bootstrap, topics.windows):
        if w.get("deployment_id") != dep:
            continue
        body = {k: v for k, v in w.items() if k not in EMITTED_AT}
        assert by_id.setdefault(w["window_id"], body) == body
    return by_id


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _replace(stage: CheckpointedStage[Any]) -> None:
    stage.producer.replace(stage.producer.generation, RuntimeError("injected: a delivery failed"))


async def test_stages_rewind_to_their_checkpoint_and_count_each_outcome_once(kafka_bootstrap: str) -> None:
    topics = Topics(f"rewind{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    cmd = start_command("candidate_high_recall", weight=0.3)
    await send_command(kafka_bootstrap, topics, cmd)
    registry = DeploymentRegistry(kafka_bootstrap, topics.control)
    windowing = WindowingStage(kafka_bootstrap, topics, registry, group_id=f"{topics.prefix}w", checkpoint_ms=60_000)
    merging = MergeStage(kafka_bootstrap, topics, group_id=f"{topics.prefix}m", checkpoint_ms=60_000)
    stages = [asyncio.create_task(x.run()) for x in (registry, windowing, merging)]
    router = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    load = LoadGenerator(router, qps=80)
    try:
        await _until(lambda: _settled(windowing, merging), 60, "both stages to hold their partitions")
        first = (windowing.checkpoints, merging.checkpoints)
        await load.run(8)
        await _until(lambda: _read(windowing, load.sent), 30, "the windows stage to read the first half")
        read_before = windowing.stats.outcomes
        assert (windowing.checkpoints, merging.checkpoints) == first  # still the checkpoint of the assignment
        for stage in (windowing, merging):
            _replace(stage)
        await load.run(8)  # the second half goes out while the stages rewind
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
    # No checkpoint was written between the assignment's and the rewind (60 s apart): the rewind went back
    # to it, and everything read before the replacement was read again — and counted once.
    assert windowing.rewinds >= 1 and merging.rewinds >= 1
    assert windowing.producer.replacements >= 1 and merging.producer.replacements >= 1
    assert windowing.stats.outcomes >= read_before + load.sent  # read twice …
    windows = await _windows(kafka_bootstrap, topics, cmd.deployment_id)
    assert sum(w["response_count"] for w in windows.values()) == load.sent  # … counted once
    assert router.stats.requests == load.sent


async def _read(stage: WindowingStage, n: int) -> bool:
    return stage.stats.outcomes >= n


async def _settled(*stages: CheckpointedStage[Any], rewound: bool = False) -> bool:
    return all(s.states and not s._pending and (s.rewinds >= 1 or not rewound) for s in stages)
