"""The foundation works on the real broker: aiokafka round trip, topic declarations, a Faust agent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from canary.errors import TopicMismatch
from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings

pytestmark = pytest.mark.kafka
HERE = Path(__file__).resolve().parent


async def test_produce_and_consume_roundtrip(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(50):
            await producer.send(topics.search_requests, json.dumps({"i": i}).encode(), key=b"user-1")
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topics.search_requests, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(seen) < 50 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen += [json.loads(r.value)["i"] for r in records]
    finally:
        await consumer.stop()
    # One key → one partition → order preserved.
    assert seen == list(range(50))


def test_topics_are_idempotent_and_verified(settings: Settings, topics: Topics) -> None:
    again = ensure_topics(settings.effective_bootstrap, topics)
    assert {r.action for r in again} == {"ok"}
    assert len(again) == len(topics.specs())


async def test_topic_with_wrong_settings_is_reported(settings: Settings) -> None:
    names = Topics(settings.topic_prefix + "wrong.")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.effective_bootstrap)
    await admin.start()
    try:
        # The state topic must be compacted; create it as "delete" with the wrong partition count.
        await admin.create_topics([NewTopic(names.state, 2, 1, topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    with pytest.raises(TopicMismatch) as info:
        await asyncio.to_thread(ensure_topics, settings.effective_bootstrap, names)
    message = str(info.value)
    assert names.state in message
    assert "cleanup.policy = delete, expected compact" in message
    assert "partitions = 2, expected 1" in message


def test_minimal_faust_agent_with_table(settings: Settings, topics: Topics, tmp_path: Path) -> None:
    """A real Faust worker process counts per key in a table and publishes the counts."""
    env = {
        **os.environ,
        "PROBE_BROKER": settings.effective_bootstrap,
        "PROBE_IN": topics.search_requests,
        "PROBE_OUT": topics.search_results,
        "PROBE_APP": f"probe-{settings.topic_prefix}",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "faust_probe_app",
            "--datadir",
            str(tmp_path),
            "worker",
            "-l",
            "warn",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        counts = asyncio.run(_feed_and_collect(settings.effective_bootstrap, topics))
    finally:
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    assert counts == {"a": 3, "b": 2}, output.decode(errors="replace")[-3000:]
    assert worker.returncode is not None


async def _feed_and_collect(bootstrap: str, topics: Topics) -> dict[str, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    consumer = AIOKafkaConsumer(topics.search_results, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    latest: dict[str, int] = {}
    try:
        for key in ["a", "b", "a", "b", "a"]:
            await producer.send_and_wait(topics.search_requests, b"{}", key=key.encode())
        deadline = time.monotonic() + 90
        while latest != {"a": 3, "b": 2} and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    body = json.loads(record.value)
                    latest[body["key"]] = max(latest.get(body["key"], 0), body["count"])
    finally:
        await consumer.stop()
        await producer.stop()
    return latest
