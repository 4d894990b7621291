"""Steady requests onto every ``search_requests`` partition, and their outcomes tailed as they arrive: which
partition waits, since when, and whether every request got its outcome (tests of group membership)."""

from __future__ import annotations

import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from canary.kafka.topics import Topics


class Traffic:
    """Requests onto every search_requests partition at a steady rate; outcomes tailed as they arrive."""

    def __init__(self, bootstrap: str, topics: Topics, qps: float = 60.0) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.qps = qps
        self.sent: dict[str, tuple[int, float]] = {}  # request id -> (partition, monotonic send time)
        self.answered: dict[str, float] = {}  # request id -> monotonic time its first outcome was seen
        self.outcomes: list[tuple[str, int, float]] = []  # (request id, outcome ts ms, monotonic arrival)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._tail())]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_sending(self) -> None:
        self._tasks[0].cancel()

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            i = 0
            while True:
                request_id = f"r{i}"
                body = {"request_id": request_id, "query": "q1", "collection": "documents", "user_id": f"u{i}"}
                partition = i % 3
                await producer.send_and_wait(
                    self.topics.search_requests, json.dumps(body).encode(), partition=partition
                )
                self.sent[request_id] = (partition, time.monotonic())
                i += 1
                await asyncio.sleep(1 / self.qps)
        finally:
            await producer.stop()

    async def _tail(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.topics.search_results, p) for p in range(6)])
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        outcome = json.loads(record.value)
                        if "kind" not in outcome:  # not a watermark
                            arrived = time.monotonic()
                            self.answered.setdefault(outcome["request_id"], arrived)
                            self.outcomes.append((outcome["request_id"], int(outcome["ts"]), arrived))
        finally:
            await consumer.stop()

    def waiting_since(self, partition: int) -> float | None:
        """Send time of the oldest unanswered request of ``partition``."""
        times = [t for rid, (p, t) in self.sent.items() if p == partition and rid not in self.answered]
        return min(times, default=None)

    def served_after(self, partition: int, ts_ms: int) -> float | None:
        """Arrival (monotonic) of the first outcome stamped after ``ts_ms`` for a request of ``partition``."""
        return min(
            (
                arrived
                for rid, ts, arrived in self.outcomes
                if ts > ts_ms and self.sent.get(rid, (-1, 0.0))[0] == partition
            ),
            default=None,
        )

    def unanswered(self) -> int:
        return sum(1 for rid in list(self.sent) if rid not in self.answered)

    async def drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(rid in self.answered for rid in list(self.sent)):
                return True
            await asyncio.sleep(0.25)
        return False
