"""An idempotent producer that heals: replaced by a fresh one when it can no longer deliver.

An idempotent producer numbers its batches per partition, and the broker accepts a batch only if it
follows the last one it has. When a batch fails after it was numbered — it expired while the broker was
away (aiokafka fails it once ``request_timeout_ms`` passes without a leader), or the broker lost the
producer's state — every later batch for that partition is refused with ``OutOfOrderSequenceNumber``, and
aiokafka, unlike the Java client, never resets its producer id to start over (its sender task may also die
on ``ProducerFenced``, after which every ``send`` queues forever). The only way out Kafka offers an aiokafka
client is a new producer id, i.e. a new producer: :class:`HealingProducer` starts one as soon as a delivery
of the current one fails (whatever the error: after any failed numbered batch the partition is stuck),
waiting while the broker is away, and sends go to it from then on. Records the old producer could not
deliver fail (their futures never hang), so callers send them again — exactly what they do for any failed
delivery; readers already drop repeats by id. See docs/adr/0002-heal-producers-in-process.md.

Only what a new producer cannot fix ends it (:meth:`HealingProducer.failure`): a broker that keeps refusing
to register a producer for a reason other than being away (authorization, a misconfigured listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from canary.backoff import Backoff
from canary.errors import ProducerFailed
from canary.kafka.backoff import calm
from canary.kafka.health import producer_failure

log = logging.getLogger("canary.kafka.producer")

# Between a replacement and the next, and between attempts to start one while the broker is away.
REPLACE_BACKOFF_S: Final = (0.5, 5.0)  # base, cap
START_TIMEOUT_S: Final = 15.0
# How long a retired producer may go on delivering what it holds (to healthy partitions) before the rest
# is failed back to its callers.
RETIRE_FLUSH_S: Final = 5.0
STOP_STEP_S: Final = 2.0
# Attempts to start a new producer that end in an error other than "the broker is not there" before
# giving up: a refusal that outlives this many attempts is configuration, not an outage.
GIVE_UP_AFTER: Final = 8


def broker_away(exc: BaseException) -> bool:
    """An error that only says the broker did not answer (yet): retried without limit."""
    if isinstance(exc, (TimeoutError, OSError, ConnectionError)):
        return True
    name = type(exc).__name__
    if name in ("KafkaConnectionError", "KafkaTimeoutError", "NodeNotReadyError", "RequestTimedOutError"):
        return True
    return bool(getattr(exc, "retriable", False))


class ProducerReplaced(Exception):
    """What a record still held by a retired producer fails with: the caller sends it again."""


def _abandon(producer: AIOKafkaProducer, why: BaseException) -> None:
    """Fail every record the producer still holds (reads aiokafka's private accumulator: nothing public
    fails them, and a broker that is away would keep them pending until its own timeout)."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        with contextlib.suppress(Exception):
            accumulator.fail_all(why)


async def close_producer(producer: AIOKafkaProducer) -> None:
    """Stop a producer whatever state it (and the broker) is in, bounded: a fenced or orphaned one may never
    answer (the healing producer's retired ones, the transactional stages' per-partition ones)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), STOP_STEP_S)
    client = getattr(producer, "client", None)
    if client is not None:  # stop() gave up before it closed the connections
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), STOP_STEP_S)


class HealingProducer:
    """The subset of :class:`AIOKafkaProducer` canary uses, over a producer replaced when it fails."""

    def __init__(
        self,
        factory: Callable[[], AIOKafkaProducer],
        name: str,
        *,
        on_replaced: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._factory = factory
        self.name = name
        self._on_replaced = on_replaced
        self._producer: AIOKafkaProducer | None = None
        self.generation = 0
        self.replacements = 0
        self._ready = asyncio.Event()
        self._replacing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._stopped = False
        self._churn = Backoff(*REPLACE_BACKOFF_S)  # replacements in a row without a delivery between them
        self.cause: BaseException | None = None  # what made the last replacement necessary

    def _new(self) -> AIOKafkaProducer:
        return calm(self._factory())

    async def start(self) -> None:
        producer = self._new()
        try:
            await producer.start()
        except BaseException:
            await close_producer(producer)
            raise
        self._producer = producer
        self._ready.set()

    @property
    def current(self) -> AIOKafkaProducer:
        assert self._producer is not None, "producer not started"
        return self._producer

    @property
    def replacing(self) -> bool:
        return self._replacing is not None

    def failure(self) -> BaseException | None:
        """Why no producer can deliver any more (None while one can, or while a replacement is under way)."""
        return self._failure

    async def _usable(self) -> tuple[AIOKafkaProducer, int]:
        while True:
            if self._failure is not None:
                raise ProducerFailed(str(self._failure)) from self._failure
            if self._stopped:
                raise ProducerFailed(f"{self.name}: producer stopped")
            producer = self._producer
            if producer is not None and self._ready.is_set():
                dead = producer_failure(producer)
                if dead is None:
                    return producer, self.generation
                self.replace(self.generation, dead)
            await self._ready.wait()

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Enqueue on the current producer (waiting while a replacement is under way); the future fails
        if the broker never acknowledges the record, and the caller decides whether to send it again."""
        producer, generation = await self._usable()
        try:
            ack: asyncio.Future[Any] = await producer.send(topic, value, key=key, partition=partition)
        except Exception as exc:
            if producer_failure(producer) is not None or type(exc).__name__ in _STUCK_SEND_ERRORS:
                self.replace(generation, exc)
            raise
        ack.add_done_callback(functools.partial(self._settled, generation))
        return ack

    async def send_and_wait(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None
    ) -> Any:
        return await (await self.send(topic, value, key=key, partition=partition))

    async def flush(self) -> None:
        """Until every record handed over so far is acknowledged or failed (retired producers included)."""
        if self._retiring:
            await asyncio.wait(set(self._retiring))
        if self._producer is not None:
            await self._producer.flush()

    async def partitions_for(self, topic: str) -> set[int]:
        producer, _ = await self._usable()
        partitions: set[int] = await producer.partitions_for(topic)
        return partitions

    def _settled(self, generation: int, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled():
            return
        exc = ack.exception()
        if exc is None:
            if generation == self.generation:
                self._churn.reset()
            return
        if not isinstance(exc, ProducerReplaced):
            self.replace(generation, exc)

    def replace(self, generation: int, cause: BaseException) -> None:
        """Start replacing the producer of ``generation`` (once; a later generation's is not touched)."""
        if generation != self.generation or self._replacing is not None or self._failure or self._stopped:
            return
        self.generation += 1  # what the old producer still reports no longer concerns the new one
        self.cause = cause
        self._ready.clear()
        old, self._producer = self._producer, None
        if old is not None:
            task = asyncio.create_task(self._retire(old, cause), name=f"{self.name}-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._replacing = asyncio.create_task(self._replace(cause), name=f"{self.name}-replace")

    async def _retire(self, old: AIOKafkaProducer, cause: BaseException) -> None:
        """Let the old producer deliver what it still can, fail the rest back to its callers, close it."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.flush(), RETIRE_FLUSH_S)
        _abandon(old, ProducerReplaced(f"{self.name}: producer replaced after {type(cause).__name__}: {cause}"))
        await close_producer(old)

    async def _replace(self, cause: BaseException) -> None:
        began = time.monotonic()
        log.warning(
            "%s: a delivery failed (%s: %s); replacing the producer — what it did not deliver is sent again "
            "by a new one",
            self.name,
            type(cause).__name__,
            cause,
        )
        starting = Backoff(*REPLACE_BACKOFF_S)
        attempt = refused = 0
        try:
            await self._churn.wait()
            while True:
                attempt += 1
                fresh = self._new()
                try:
                    await asyncio.wait_for(fresh.start(), START_TIMEOUT_S)
                except Exception as exc:
                    await close_producer(fresh)
                    refused = 0 if broker_away(exc) else refused + 1
                    if refused >= GIVE_UP_AFTER:
                        self._failure = ProducerFailed(
                            f"{self.name}: no new producer after {attempt} attempts in "
                            f"{time.monotonic() - began:.0f} s; the broker refuses it ({type(exc).__name__}: {exc})"
                        )
                        log.error("%s", self._failure)
                        return
                    if attempt & (attempt - 1) == 0:  # 1, 2, 4, 8, … : bounded logs however long it is away
                        log.warning(
                            "%s: new producer not started yet (attempt %d, %.0f s; %s: %s); trying again",
                            self.name,
                            attempt,
                            time.monotonic() - began,
                            type(exc).__name__,
                            exc,
                        )
                    await starting.wait()
                    continue
                if self._stopped:
                    await close_producer(fresh)
                    return
                self._producer = fresh
                self.replacements += 1
                log.warning(
                    "%s: new producer up after %.1f s (%d attempt(s)); sending resumes",
                    self.name,
                    time.monotonic() - began,
                    attempt,
                )
                if self._on_replaced is not None:
                    self._on_replaced(cause)
                return
        finally:
            self._replacing = None
            if self._producer is None and self._failure is None and not self._stopped:
                # Ended by something else than a stop (a bug, a cancellation): never leave senders waiting
                # on a producer that will not come.
                self._failure = ProducerFailed(f"{self.name}: the replacement of the producer ended without one")
            self._ready.set()  # wakes the waiting senders: a new producer, a failure or a stop

    async def stop(self) -> None:
        """Stop whatever is running (bounded: the broker may be away)."""
        self._stopped = True
        if self._replacing is not None:
            self._replacing.cancel()
            with contextlib.suppress(BaseException):
                await self._replacing
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=RETIRE_FLUSH_S + 2 * STOP_STEP_S)
        self._ready.set()
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_producer(producer)


# Errors of ``send`` itself that mean this producer will not take records any more.
_STUCK_SEND_ERRORS: Final = (
    "OutOfOrderSequenceNumber",
    "ProducerFenced",
    "InvalidProducerEpoch",
    "InvalidProducerIdMapping",
    "UnknownProducerId",
)
