"""Publishing what the router did: one outcome per request on ``search_results`` (partitioned by request),
and this router's watermarks on every partition of it, so the windows stage knows which event times are
complete. Also the delivery accounting every publisher of the router shares (publish errors, outcomes)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from canary.core.models import RouterWatermark, SearchOutcome
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics
from canary.observability.metrics import RouterMetrics
from router.stats import RouterStats

# Delivery failures come in bursts (every pending record fails at once after an outage): this logger is
# rate-limited per message kind like aiokafka's (canary.observability.logs.RATE_LIMITED_LOGGERS).
delivery_log = logging.getLogger("canary.router.delivery")


def outcome_partition(request_id: str, partitions: int) -> int:
    """The ``search_results`` partition of a request's outcome (a contract with every producer: the same
    request always lands on the same partition, so a re-processed request is found and counted once)."""
    return zlib.crc32(request_id.encode()) % partitions


@dataclass(eq=False, slots=True)
class Delivery:
    """An outcome on its way to the broker. For a request sampled for exact search ``outcome`` becomes final
    (with the sampled recall) only when that search is done or given up; ``ack`` completes once the broker
    has the final one."""

    outcome: SearchOutcome
    ack: asyncio.Future[Any]


class OutcomePublisher:
    """Outcomes and watermarks of one router, on the producer the service owns (``producer`` returns it)."""

    def __init__(
        self,
        router_id: str,
        topics: Topics,
        producer: Callable[[], HealingProducer],
        clock: Callable[[], int],
        stats: RouterStats,
        metrics: RouterMetrics,
        watermark_interval_ms: int,
    ) -> None:
        self.router_id = router_id
        self.topics = topics
        self._producer = producer
        # Event time of this router's outcomes and watermarks (a test hook may shift it: clock skew).
        self.clock = clock
        self.stats = stats
        self.metrics = metrics
        self._watermark_interval_s = watermark_interval_ms / 1000.0
        self._watermark_seq = 0
        self._unsent: dict[int, int] = {}  # outcomes stamped but not yet enqueued: token -> ts
        self._tokens = itertools.count()
        self.result_partitions = 1

    async def open(self) -> None:
        """Learn how many partitions ``search_results`` has (outcomes spread over them, watermarks go to all)."""
        self.result_partitions = len(await self._producer().partitions_for(self.topics.search_results))

    def delivery_failed(self, kind: str, exc: BaseException | None) -> None:
        # The producer replaces itself after a failed delivery (canary.kafka.producer); the caller sends again.
        self.metrics.publish_errors.labels(kind).inc()

    def count_delivered(self, outcome: SearchOutcome) -> None:
        self.metrics.outcomes.labels(outcome.arm, outcome.error or "ok").inc()

    async def publish(self, outcome: SearchOutcome, wait_ack: bool = True) -> asyncio.Future[Any]:
        """Enqueue the outcome; with ``wait_ack`` also wait until the broker has it."""
        producer = self._producer()
        key = outcome.request_id.encode()
        # Spread over every partition by request: workers share the load, and a request re-processed by
        # another router lands on the same partition, where the windows stage drops the duplicate.
        partition = outcome_partition(outcome.request_id, self.result_partitions)
        token = next(self._tokens)
        self._unsent[token] = outcome.ts
        try:
            ack: asyncio.Future[Any] = await producer.send(
                self.topics.search_results, orjson.dumps(outcome.to_dict()), key=key, partition=partition
            )
        finally:
            del self._unsent[token]  # enqueued: a later watermark record is behind it on its partition
        if wait_ack:
            await ack
        return ack

    # -- watermarks ---------------------------------------------------------------------------------------------
    def watermark_now(self) -> int:
        """Every outcome this router stamps up to the returned time is already enqueued (so it precedes a
        watermark record sent now on its partition): the clock, held back by outcomes stamped but not yet
        handed to the producer."""
        now = self.clock()
        return min(now, min(self._unsent.values(), default=now) - 1)

    async def send_watermarks(self, status: str) -> None:
        producer = self._producer()
        self._watermark_seq += 1
        mark = RouterWatermark(self.router_id, max(0, self.watermark_now()), status, self._watermark_seq)  # type: ignore[arg-type]
        value = orjson.dumps(mark.to_dict())
        for partition in range(self.result_partitions):
            ack = await producer.send(
                self.topics.search_results, value, key=self.router_id.encode(), partition=partition
            )
            ack.add_done_callback(self._watermark_delivered)
        self.stats.watermarks += 1

    def _watermark_delivered(self, ack: asyncio.Future[Any]) -> None:
        # A lost watermark is harmless (the next one, 50 ms later, says more); count it, never leave the
        # future's exception unretrieved (asyncio would log each one).
        if not ack.cancelled() and ack.exception() is not None:
            self.delivery_failed("watermark", ack.exception())
            delivery_log.warning("%s: watermark not delivered: %r", self.router_id, ack.exception())

    async def watermark_loop(self) -> None:
        interval = self._watermark_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.send_watermarks("running")
            except Exception as exc:  # the producer could not even queue it (broker down for long)
                self.metrics.publish_errors.labels("watermark").inc()
                delivery_log.warning("%s: watermark not queued (%s: %s)", self.router_id, type(exc).__name__, exc)
