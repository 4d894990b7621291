"""An idempotent producer whose numbered batch failed is refused for good; HealingProducer gets past it.

The broker refuses a batch (here: larger than the topic's ``max.message.bytes``) after aiokafka numbered it,
so the broker's next expected sequence number is behind the producer's: every later batch for that
partition is ``OutOfOrderSequenceNumber`` — what a broker restart does to the routers' and the worker's
producers when batches expire while it is away (bench/bench_outage.py shows that one). Real broker, no outage
needed: the refusal is deterministic.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from canary.kafka.producer import HealingProducer

pytestmark = pytest.mark.kafka

LIMIT = 2000  # the topic's max.message.bytes


async def _topic(bootstrap: str) -> str:
    name = f"heal{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(LIMIT)})])
    finally:
        await admin.close()
    return name


def _factory(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)


async def _outcome(fut: asyncio.Future[Any]) -> str:
    try:
        await fut
        return "ok"
    except Exception as exc:
        return type(exc).__name__


async def test_a_refused_batch_stops_an_idempotent_aiokafka_producer_for_good(kafka_bootstrap: str) -> None:
    """The failure HealingProducer exists for (if aiokafka ever recovers by itself, this says so)."""
    topic = await _topic(kafka_bootstrap)
    producer = _factory(kafka_bootstrap)
    await producer.start()
    try:
        assert await _outcome(await producer.send(topic, b"first")) == "ok"
        assert await _outcome(await producer.send(topic, b"x" * (LIMIT * 2))) != "ok"
        later = [await _outcome(await producer.send(topic, b"small %d" % i)) for i in range(3)]
        assert later == ["OutOfOrderSequenceNumber"] * 3
    finally:
        await producer.stop()


async def test_healing_producer_replaces_itself_and_delivers_what_follows(kafka_bootstrap: str) -> None:
    topic = await _topic(kafka_bootstrap)
    replaced: list[BaseException] = []
    producer = HealingProducer(lambda: _factory(kafka_bootstrap), "test", on_replaced=replaced.append)
    await producer.start()
    try:
        assert await _outcome(await producer.send(topic, b"first")) == "ok"
        too_large = await _outcome(await producer.send(topic, b"x" * (LIMIT * 2)))
        assert too_large != "ok"
        # Sent at once after the refusal: waits for the new producer instead of meeting the old one's hole.
        results = [await _outcome(await producer.send(topic, b"small %d" % i)) for i in range(5)]
        assert results == ["ok"] * 5
        assert producer.replacements == 1 and producer.failure() is None
        assert len(replaced) == 1 and type(replaced[0]).__name__ == too_large
        # Many failures of one generation make one replacement, not one each.
        fails = [await producer.send(topic, b"y" * (LIMIT * 2)) for _ in range(3)]
        assert all(r != "ok" for r in [await _outcome(f) for f in fails])
        assert await _outcome(await producer.send(topic, b"after")) == "ok"
        assert producer.replacements == 2
    finally:
        await producer.stop()
    raw = await _raw_values(kafka_bootstrap, topic)
    assert raw == [b"first", *(b"small %d" % i for i in range(5)), b"after"]


async def _raw_values(bootstrap: str, topic: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[bytes] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                out.extend(r.value for r in records if r.value is not None)
        return out
    finally:
        await consumer.stop()
