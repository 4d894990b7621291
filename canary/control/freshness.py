"""Is a live reader's view of the control topic fresh? Only when the broker confirms it has read to the end.

A fetch that fails (broker down, Read ACL revoked) shows only as no confirmation; each reader decides what
staleness means (a router sends nothing to the candidate, a worker's /readyz says so). Failures to confirm
are logged throttled: the 1st, 10th, 100th and every 1000th (a broker that is away fails every second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

CONFIRM_TIMEOUT_S = 2.0


def throttled(count: int) -> bool:
    """Whether the ``count``-th repeat of a failure is worth a log line."""
    return count in (1, 10, 100) or count % 1000 == 0


class Freshness:
    """When a reader last confirmed it had read the control topic to its end. ``warn`` says (throttled) why a
    confirmation failed, given ``"ExceptionType: message"``."""

    def __init__(self, stale_after_s: float, warn: Callable[[str], None]) -> None:
        self.stale_after_s = stale_after_s
        self.fresh_at = time.monotonic()
        self.failures = 0
        self.problem: str | None = None  # the last error reading or confirming the topic, until confirmed
        self._warn = warn

    def lag(self) -> float:
        """Seconds since the broker last confirmed this reader had read the topic to its end."""
        return time.monotonic() - self.fresh_at

    @property
    def stale(self) -> bool:
        return self.lag() > self.stale_after_s

    def confirmed(self) -> None:
        self.fresh_at = time.monotonic()
        self.problem = None

    def note_problem(self, exc: BaseException) -> None:
        self.failures += 1
        self.problem = f"{type(exc).__name__}: {exc}"
        if throttled(self.failures):
            self._warn(self.problem)

    async def check(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Ask the broker for the topic's end: fresh if ``consumer`` has read to it. Never raises."""
        try:
            end = (await asyncio.wait_for(consumer.end_offsets([tp]), CONFIRM_TIMEOUT_S))[tp]
            if await consumer.position(tp) >= end:
                self.confirmed()
                return True
        except Exception as exc:  # broker down, ACL revoked: the lag grows, the reader fails safe
            self.note_problem(exc)
        return False
