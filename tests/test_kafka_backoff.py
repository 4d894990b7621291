"""canary.kafka.backoff on a real aiokafka client with nothing listening: failed metadata refreshes are
paced like the Java client's reconnect back-off instead of being retried at once (the router spin of #19)."""

from __future__ import annotations

import socket
import time

from aiokafka import AIOKafkaProducer

from canary.kafka.backoff import RECONNECT_BACKOFF_MAX_S, calm


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _refreshes_in(producer: AIOKafkaProducer, seconds: float) -> int:
    client = producer.client
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await client._metadata_update(client.cluster, set()) is False  # nothing there
        count += 1
    return count


async def test_failed_refreshes_back_off_up_to_one_second() -> None:
    bare = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{_closed_port()}")
    calmed = calm(AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{_closed_port()}"))
    try:
        assert await _refreshes_in(bare, 0.5) > 100  # what aiokafka does on its own
        # 0.1 + 0.2 + 0.4 + 0.8 + 1.0 + 1.0 …: five refreshes in the first 2.5 s, then one a second.
        assert 4 <= await _refreshes_in(calmed, 2.5) <= 6
        started = time.monotonic()
        await calmed.client._metadata_update(calmed.client.cluster, set())
        assert time.monotonic() - started >= RECONNECT_BACKOFF_MAX_S * 0.9
    finally:
        for p in (bare, calmed):
            await p.client.close()
            p._closed = True  # never started: nothing else to stop


async def test_calm_is_idempotent() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    wrapped = calm(producer).client._metadata_update
    assert calm(producer).client._metadata_update is wrapped
    producer._closed = True  # never started
