"""The router's request intake from ``search_requests``: a consumer in the routers' group, one slot per
request in flight, each request served by the searcher and done only when the broker has its outcome
(redelivered until it does), poison requests dead-lettered with an error outcome, acknowledged offsets
committed, and a consumer that stops taking requests replaced by a fresh group member
(router/membership.py, docs/adr/0003-request-group-membership.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.structs import ConsumerRecord

from canary.core import wire
from canary.core.deployment import ControlLedger
from canary.core.models import SearchOutcome
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics
from canary.observability.metrics import RouterMetrics
from router.membership import RENEWABLE, RequestGroup, RequestIntakeFailed, Stall
from router.offsets import OffsetTracker
from router.outcomes import Delivery, OutcomePublisher, delivery_log
from router.requests import SearchRequest
from router.runtime import STOP_STEP_S, bounded, cancel_and_wait
from router.search import ConfigUsed, Searcher
from router.stats import RouterStats

log = logging.getLogger("canary.router")

REDELIVERY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
COMMIT_INTERVAL_S: Final = 1.0
INTAKE_CHECK_INTERVAL_S: Final = 2.0
RENEW_JOIN_TIMEOUT_S: Final = 60.0  # a fresh member that gets no assignment by then counts as a failed renewal


def decode_request(raw: bytes | None) -> SearchRequest:
    """A ``search_requests`` value as a request; :class:`~canary.core.wire.Rejected` with its code for
    anything else (no value, too large or deep, not JSON, not an object, fields breaking the contract)."""
    data = wire.decode_object(raw, wire.REQUEST)
    try:
        return SearchRequest.from_dict(data)
    except Exception as exc:
        raise wire.rejection_of(exc) from None


async def _both(
    dead_ack: asyncio.Future[Any], outcome_ack: asyncio.Future[Any], on_dead_failure: Callable[[BaseException], None]
) -> Any:
    """A poison request is done when its error outcome is delivered. Its dead letter is best effort after
    one send: a dead letter lost with the broker is logged and counted, while the outcome (what the windows
    count) is redelivered until the broker has it."""
    try:
        await dead_ack
    except Exception as exc:
        on_dead_failure(exc)
    return await outcome_ack


class RequestIntake:
    """Takes requests from Kafka for one router. ``announce`` publishes the router's state (a stall or its
    end is news for operators); ``failure`` says whether the router is about to exit (then nothing is
    processed again: a restarted router consumes it)."""

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        group_id: str,
        router_id: str,
        ledger: ControlLedger,
        searcher: Searcher,
        outcomes: OutcomePublisher,
        producer: Callable[[], HealingProducer],
        caught_up: asyncio.Event,
        announce: Callable[[], Awaitable[None]],
        failure: Callable[[], BaseException | None],
        stats: RouterStats,
        metrics: RouterMetrics,
        max_in_flight: int,
        reply: bool,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.router_id = router_id
        self.ledger = ledger
        self.searcher = searcher
        self.outcomes = outcomes
        self._producer = producer
        self._caught_up = caught_up
        self._announce = announce
        self._failure = failure
        self.stats = stats
        self.metrics = metrics
        self.reply = reply
        self._max_in_flight = max_in_flight
        self.slots = asyncio.Semaphore(max_in_flight)
        self.offsets = OffsetTracker()
        # The request consumer's membership (router/membership.py): commit gate, rebalance epochs, stalls. A
        # consumer stalled (joining, or records waiting while slots are free) for renew_after_s is replaced
        # by a fresh group member; after max_renewals in a row that did not help the router exits.
        self.group = RequestGroup(self.offsets)
        self.renew_after_s = 30.0
        self.max_renewals = 3
        self.renewals = 0
        self._stall_reported = False
        self.consumer: AIOKafkaConsumer | None = None
        self.loops: list[asyncio.Task[None]] = []  # the request loop and the commit loop
        self.tasks: set[asyncio.Task[None]] = set()  # requests being processed
        self.redeliveries: set[asyncio.Task[None]] = set()

    def in_flight(self) -> float:
        # A slot is held from intake until the outcome is acknowledged; asyncio.Semaphore keeps its free
        # count in _value (no public accessor), which is exactly "in flight" from the other side.
        return float(self._max_in_flight - self.slots._value)

    def status(self) -> tuple[tuple[int, ...], str | None]:
        """The partitions it owns and why it is not taking requests (None: it is), for the state record."""
        stall = self.group.stall
        return tuple(sorted(tp.partition for tp in self.group.owned)), stall.reason[:500] if stall is not None else None

    async def start(self) -> None:
        self.consumer = self._new_consumer()
        await self.consumer.start()  # returns once the group assigned partitions
        self.loops.append(asyncio.create_task(self._request_loop(), name=f"{self.router_id}-requests"))
        self.loops.append(asyncio.create_task(self._commit_loop(), name=f"{self.router_id}-commit"))

    async def close(self) -> None:
        """The last commit (acks marked offsets done), then leave the group; each step bounded."""
        if self.consumer is not None:
            await bounded(self.router_id, "committing offsets", self.commit())
            await bounded(self.router_id, "leaving the consumer group", self.consumer.stop())

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,
            )
        )
        consumer.subscribe([self.topics.search_requests], listener=self.group.listener())
        self.group.renewed(consumer)
        return consumer

    async def _request_loop(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        await self._caught_up.wait()
        errors = 0
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
            except AIOKafkaError as exc:
                # A group error aiokafka hands to its user; its coordinator goes on once it has been read.
                # If it never recovers, the intake check sees the stall and renews the consumer.
                errors += 1
                if errors in (1, 10) or errors % 100 == 0:
                    log.warning(
                        "%s: reading %s failed (%d×): %r", self.router_id, self.topics.search_requests, errors, exc
                    )
                await asyncio.sleep(1.0)
                continue
            epoch = self.group.epoch
            for tp, records in batch.items():
                for record in records:
                    await self.slots.acquire()
                    if self.group.epoch != epoch:
                        # A rebalance began while this batch waited for slots: its partitions may be another
                        # router's by now, and aiokafka reads the rest again from the committed offset.
                        self.slots.release()
                        break
                    self.offsets.started(tp.topic, tp.partition, record.offset)
                    self.group.taken(tp, record.offset)
                    task = asyncio.create_task(self._process_record(record))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                else:
                    continue
                break

    async def _process_record(self, record: ConsumerRecord[bytes, bytes], attempt: int = 0) -> None:
        ack: asyncio.Future[Any] | None = None
        delivery: Delivery | None = None
        try:
            try:
                request = decode_request(record.value)
            except wire.Rejected as exc:  # poison: dead-lettered with its code, never stops the router
                ack, delivery = await self._reject(record, exc.code, exc.detail)
                return
            try:
                results, used, ack, delivery = await self.searcher.handle(request, wait_ack=False)
            except Exception as exc:  # quarantined: dead-lettered with the error, the loop goes on
                log.exception("request at %s/%s failed unexpectedly", record.partition, record.offset)
                ack, delivery = await self._reject(record, "quarantined", f"{type(exc).__name__}: {exc}")
                return
            if self.reply:
                await self._reply(request, results, used)
        except Exception:
            log.exception("request at %s/%s: its outcome could not be queued", record.partition, record.offset)
        finally:
            if ack is None or delivery is None:
                # Nothing queued (the producer gave up waiting for room): the request keeps its slot and its
                # offset stays uncommitted; it is processed again after a backoff — never done unanswered.
                task = asyncio.create_task(self._process_again(record, attempt + 1))
                self.redeliveries.add(task)
                task.add_done_callback(self.redeliveries.discard)
            else:
                # The slot frees and the offset becomes committable when the broker has the outcome (and,
                # for poison, its dead letter), without keeping this task alive until then.
                done = delivery
                ack.add_done_callback(lambda fut: self._finish(record, fut, done.outcome))

    async def _process_again(self, record: ConsumerRecord[bytes, bytes], attempt: int) -> None:
        await asyncio.sleep(REDELIVERY_BACKOFF_S[min(attempt - 1, len(REDELIVERY_BACKOFF_S) - 1)])
        if self._failure() is None:  # else the process exits; the request is consumed again after the restart
            await self._process_record(record, attempt)

    def _finish(
        self, record: ConsumerRecord[bytes, bytes], ack: asyncio.Future[Any] | None, outcome: SearchOutcome | None
    ) -> None:
        if ack is not None and outcome is not None and (ack.cancelled() or ack.exception() is not None):
            # Not acknowledged (broker down past the request timeout, leader election after a restart):
            # the offset stays in flight, so it is never committed, and the same outcome is sent again
            # until the broker has it. The slot stays taken meanwhile: intake slows down instead of
            # piling up. The failed delivery also made the producer replace itself (its sequence for
            # that partition is lost): the resend goes out on the new one, and the windows stage counts a
            # request once however often its outcome arrives.
            self.outcomes.delivery_failed("outcome", None if ack.cancelled() else ack.exception())
            delivery_log.error(
                "%s: outcome for offset %s/%s not delivered (%r); sending it again",
                self.router_id,
                record.partition,
                record.offset,
                None if ack.cancelled() else ack.exception(),
            )
            task = asyncio.create_task(self._redeliver(record, outcome))
            self.redeliveries.add(task)
            task.add_done_callback(self.redeliveries.discard)
            return
        self.slots.release()
        if outcome is not None:
            self.outcomes.count_delivered(outcome)
        self.offsets.finished(record.topic, record.partition, record.offset)

    async def _redeliver(self, record: ConsumerRecord[bytes, bytes], outcome: SearchOutcome) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(REDELIVERY_BACKOFF_S[min(attempt, len(REDELIVERY_BACKOFF_S) - 1)])
            attempt += 1
            if self._failure() is not None:
                return  # the process exits; the request is consumed again after the restart
            try:
                await self.outcomes.publish(outcome, wait_ack=True)
            except Exception as exc:
                self.outcomes.delivery_failed("outcome", exc)
                delivery_log.error(
                    "%s: outcome for offset %s/%s still not delivered after %d attempt(s) (%s: %s)",
                    self.router_id,
                    record.partition,
                    record.offset,
                    attempt,
                    type(exc).__name__,
                    exc,
                )
                continue
            self.metrics.redelivered_outcomes.inc()
            self.slots.release()
            self.outcomes.count_delivered(outcome)
            self.offsets.finished(record.topic, record.partition, record.offset)
            return

    async def _reply(self, request: SearchRequest, results: list[str], used: ConfigUsed) -> None:
        body = {"request_id": request.request_id, "results": results, "config_used": used.to_dict()}
        ack = await self._producer().send(
            self.topics.responses, json.dumps(body).encode(), key=request.request_id.encode()
        )
        ack.add_done_callback(self._reply_delivered)

    def _reply_delivered(self, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            self.outcomes.delivery_failed("reply", ack.exception())
            delivery_log.warning("%s: search response not delivered: %r", self.router_id, ack.exception())

    async def _reject(
        self, record: ConsumerRecord[bytes, bytes], reason: wire.DeadLetterReason, detail: str
    ) -> tuple[asyncio.Future[Any], Delivery]:
        """Poison request: dead-letter it with the reason and publish an error outcome (visible, not lost).
        Returns the outcome's ack, which completes only once the dead letter is on the broker too."""
        producer = self._producer()
        self.stats.invalid_requests += 1
        dead = wire.dead_letter(
            reason,
            detail,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            raw=record.value,
            extra={"router_id": self.router_id},
        )
        dead_ack = await producer.send(self.topics.requests_dlq, orjson.dumps(dead))
        self.metrics.dlq.labels(reason).inc()
        request_id = f"invalid-{record.topic}-{record.partition}-{record.offset}"
        last_good = self.ledger.last_good
        assert last_good is not None
        # Answered, so requests and outcomes still match one to one, but outside every canary: a poison
        # request says nothing about a config, and a flood of them must not decide a deployment.
        outcome = SearchOutcome(
            event_id=f"{self.router_id}:{request_id}",
            request_id=request_id,
            ts=self.outcomes.clock(),
            deployment_id=None,
            config_name=last_good.name,
            config_version=last_good.version,
            config_hash=last_good.content_hash,
            arm="last_good",
            latency_ms=0.0,
            recall_at_10=None,
            result_count=0,
            error="invalid_request",
            router_id=self.router_id,
        )
        outcome_ack = await self.outcomes.publish(outcome, wait_ack=False)
        both: asyncio.Future[Any] = asyncio.ensure_future(_both(dead_ack, outcome_ack, self._dead_letter_failed))
        return both, Delivery(outcome, both)

    def _dead_letter_failed(self, exc: BaseException) -> None:
        self.metrics.publish_errors.labels("dlq").inc()
        delivery_log.error("%s: dead letter not delivered (%s: %s)", self.router_id, type(exc).__name__, exc)

    # -- commits and stalls -------------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        checked = time.monotonic()
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self.commit()
            if time.monotonic() - checked >= INTAKE_CHECK_INTERVAL_S:
                checked = time.monotonic()
                await self.check()

    async def commit(self) -> None:
        """Acknowledged prefixes of the owned partitions; never during a rebalance (router/membership.py)."""
        if self.consumer is not None:
            await self.group.commit()

    async def check(self) -> None:
        """Is the request consumer taking requests? Say so when that changes (state topic, log), and replace
        a consumer stalled by its own fault for ``renew_after_s``; exit when that does not help."""
        stall = await self.group.check(slots_free=not self.slots.locked())
        if (stall is not None) != self._stall_reported:
            if stall is not None:
                log.warning("%s: NOT taking requests: %s", self.router_id, stall.reason)
            else:
                log.warning("%s: taking requests again", self.router_id)
            self._stall_reported = stall is not None
            with contextlib.suppress(Exception):  # news for operators (canary status); heartbeats repeat it
                await self._announce()
        if stall is None:
            if self.group.proven:
                self.renewals = 0
        elif stall.kind in RENEWABLE and stall.lasted(self.group.clock()) >= self.renew_after_s:
            await self._renew(stall)

    async def _renew(self, stall: Stall) -> None:
        """Leave the group and join again as a fresh member (docs/adr/0003-request-group-membership.md).
        Requests in flight finish and are acknowledged; what was not committed is read again."""
        if self.renewals >= self.max_renewals:
            raise RequestIntakeFailed(
                f"router {self.router_id}: its {self.topics.search_requests} consumer still takes no requests "
                f"after {self.renewals} fresh group member(s) ({stall.reason}); exiting so that a restarted "
                "router and the other routers take its partitions over"
            )
        self.renewals += 1
        self.metrics.request_consumer_renewals.inc()
        log.error(
            "%s: the request consumer is stalled (%s); leaving the group and joining as a fresh member (%d/%d)",
            self.router_id,
            stall.reason,
            self.renewals,
            self.max_renewals,
        )
        intake = [t for t in self.loops if t.get_name() == f"{self.router_id}-requests"]
        await cancel_and_wait(intake, STOP_STEP_S, self.router_id)
        for task in intake:
            self.loops.remove(task)
        if self.consumer is not None:
            await bounded(self.router_id, "leaving the consumer group", self.consumer.stop())
        self.consumer = self._new_consumer()
        try:
            async with asyncio.timeout(RENEW_JOIN_TIMEOUT_S):
                await self.consumer.start()
        except Exception as exc:  # the next check finds it still joining and renews again (or gives up)
            log.error("%s: the fresh request consumer did not join (%r)", self.router_id, exc)
        self.loops.append(asyncio.create_task(self._request_loop(), name=f"{self.router_id}-requests"))
