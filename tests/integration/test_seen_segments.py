"""The windows stage's request memory checkpointed by what changed (streams/seen_segments.py), on a real broker.

Outcomes go through an in-process windows stage; its producers are fenced (the transaction open then aborts, the
stage goes back to its committed state and offset in-process, as a restarted worker would); then the same requests
come again. The memory restored from the segments must know every one of them (each is a duplicate), the state
topic must hold each remembered key in exactly one committed segment (what a start gained is written once, not
the whole memory at every commit), and the committed state records must list the segments instead of carrying
the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from canary.core.models import SearchOutcome
from canary.kafka.clients import consumer_kwargs
from canary.kafka.topics import Topics, ensure_topics
from streams.registry import DeploymentRegistry
from streams.transactional import SIDE_SEPARATOR
from streams.windowing import WindowingStage

pytestmark = pytest.mark.kafka

N = 1200


def _outcome(i: int, base: int) -> SearchOutcome:
    return SearchOutcome(
        event_id=f"r:{i}",
        request_id=f"req-{i}",
        ts=base + i * 5,  # 1200 outcomes over 6 s: two window starts
        deployment_id="canary_segments",
        config_name="last_good",
        config_version="1",
        config_hash="h",
        arm="last_good",
        latency_ms=100.0 + i % 50,
        recall_at_10=0.5,
        result_count=10,
        error=None,
        router_id="r",
    )


async def _produce(bootstrap: str, topics: Topics, base: int, resent: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    await producer.start()
    try:
        for i in range(N):
            o = _outcome(i, base)
            # A request sent again is a new event of the same request (another event id): a duplicate by request.
            value = {**o.to_dict(), "event_id": f"r:{i}:again{resent}"} if resent else o.to_dict()
            await producer.send(topics.search_results, json.dumps(value).encode(), key=o.request_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _produce_to_each(bootstrap: str, topics: Topics, base: int, partitions: int) -> None:
    """One new request to each partition of ``search_results``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for p in range(partitions):
            o = msgspec.structs.replace(_outcome(0, base), event_id=f"t:{p}", request_id=f"trigger-{p}")
            await producer.send_and_wait(topics.search_results, json.dumps(o.to_dict()).encode(), partition=p)
    finally:
        await producer.stop()


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def _state_records(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of the state topic (read_committed), in (partition, offset) order."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                got = await consumer.getmany(tp, timeout_ms=500)
                out += got.get(tp, [])
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def test_the_memory_restored_from_segments_knows_every_request_and_each_key_is_written_once(
    kafka_bootstrap: str,
) -> None:
    topics = Topics(f"seg{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    base = (int(time.time() * 1000) // 5000 - 2) * 5000
    registry = DeploymentRegistry(kafka_bootstrap, topics.control)
    stage = WindowingStage(kafka_bootstrap, topics, registry, group_id=f"{topics.prefix}w")
    tasks = [asyncio.create_task(x.run()) for x in (registry, stage)]
    try:
        await _until(lambda: stage.states and not stage._pending, 60, "the stage to hold its partitions")
        parts = len(stage.states)
        await _produce(kafka_bootstrap, topics, base)
        await _until(lambda: stage.stats.outcomes >= N, 30, "the first sending to be read")
        committed = stage.checkpoints
        await _until(lambda: stage.checkpoints >= committed + len(stage.states) + 1, 30, "checkpoints after it")
        # Fence every partition's producer; a record to each partition makes it commit, find itself fenced and go
        # back to its committed state, restored from Kafka (segments included).
        for p in sorted(stage.states):
            fencer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=stage.transactional_id(p))
            await fencer.start()
            await fencer.stop()
        await _produce_to_each(kafka_bootstrap, topics, base, parts)
        await _until(lambda: stage.rewinds >= parts and not stage._pending, 60, "every partition to rewind")
        await _until(lambda: stage.stats.outcomes >= N + parts, 30, "the records after the commits to be read again")
        before = stage.stats.duplicate_outcomes
        await _produce(kafka_bootstrap, topics, base, resent=1)  # the same requests again
        await _until(
            lambda: stage.stats.duplicate_outcomes >= before + N, 60, "every request sent again to be a duplicate"
        )
        committed = stage.checkpoints
        await _until(lambda: stage.checkpoints >= committed + parts + 1, 30, "checkpoints after it")
        for task in tasks:
            assert not task.done(), task
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    assert stage.rewinds == parts  # once each: no other failure
    assert stage.stats.duplicate_outcomes == before + N  # the memory restored knew each request sent again
    assert stage.unreadable_checkpoints == 0
    remembered = N + parts

    records = await _state_records(kafka_bootstrap, topics.window_state)
    side = [r for r in records if SIDE_SEPARATOR in (r.key or b"")]
    mains = [r for r in records if r.value is not None and SIDE_SEPARATOR not in (r.key or b"")]
    assert side and mains
    last: dict[bytes, dict[str, Any]] = {}
    for r in mains:
        last[r.key] = json.loads(r.value)
    for state in last.values():
        assert "seen" not in state and "seen_segments" in state
    # Each remembered key in exactly one committed segment, 8 bytes each, however many commits.
    written = [r.value for r in side if r.value is not None]
    assert sum(len(v) for v in written) == 8 * remembered
    keys = b"".join(written)
    assert len({keys[i : i + 8] for i in range(0, len(keys), 8)}) == remembered
    # The last state records list exactly the segments on the topic.
    listed = {
        key + SIDE_SEPARATOR + name.encode()
        for key, state in last.items()
        for segs in state["seen_segments"].values()
        for name, _ in segs
    }
    assert listed == {r.key for r in side if r.value is not None}
