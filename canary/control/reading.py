"""Reading a topic to its end: the control topic's readers, and readers of other topics that need the same.

:func:`read_records` reads every partition of a topic from its beginning to the end it had when asked
(the CLI's view, export, reports); :func:`catch_up` takes one partition from where a live consumer stands to
a given end (a router at start, before it serves). Nothing is decoded here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from canary.core import wire
from canary.errors import KafkaError
from canary.kafka.topics import topic_partitions


class LogRecord(NamedTuple):
    value: bytes | None
    timestamp: int | None  # the broker's append time on the control topic, which verification judges expiry by
    partition: int
    offset: int


async def read_records(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0
) -> list[tuple[bytes | None, int | None]]:
    """Every record value of ``topic`` (tombstones included, as None) from the beginning to the current end,
    partition by partition, with its timestamp. Nothing is decoded here."""
    return [(r.value, r.timestamp) for r in await read_log(consumer, topic, timeout)]


async def read_log(consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0) -> list[LogRecord]:
    """Like :func:`read_records`, with each record's partition and offset (the audit names a rejected
    control record by its offset)."""
    tps = await topic_partitions(consumer, topic)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    out: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    while True:
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
            return out
        if time.monotonic() > deadline:
            raise KafkaError(f"reading {topic} timed out after {timeout:.0f}s")
        batch = await consumer.getmany(timeout_ms=300)
        for records in batch.values():
            out.extend(LogRecord(r.value, r.timestamp, r.partition, r.offset) for r in records)


async def read_topic(
    consumer: AIOKafkaConsumer,
    topic: str,
    timeout: float = 15.0,
    limits: wire.Limits = wire.RECORD,
    *,
    tombstones: bool = False,
) -> list[Any]:
    """Every record of ``topic`` from the beginning to the current end, partition by partition, as JSON
    (:func:`~canary.core.wire.as_json`: a record that is not bounded JSON becomes an ``_invalid`` marker).
    Null values are skipped as deletes (compacted topics); with ``tombstones`` they are markers too (on a
    topic without compaction a null value is poison, and its reader counts it)."""
    return [
        wire.as_json(value, limits)
        for value, _ in await read_records(consumer, topic, timeout)
        if value is not None or tombstones
    ]


async def catch_up(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    on_record: Callable[[ConsumerRecord[bytes, bytes]], object],
) -> None:
    """Hand every record of ``tp`` from the consumer's position up to ``end`` to ``on_record``, in order."""
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=500)
        for record in batch.get(tp, []):
            on_record(record)
