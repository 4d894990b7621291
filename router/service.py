"""The router: splits traffic last_good / candidate, runs searches, publishes every outcome, obeys control.

Every router instance reads the whole (single-partition) control topic itself, without a consumer group,
and folds it through the shared :class:`ControlLedger`: all instances converge on the same state, and a
rollback stops candidate traffic on each of them as soon as its control fetch returns (≈100 ms).
Requests come from ``search_requests`` (consumer group, so instances share the load) or from the
in-process :meth:`RouterService.execute_search`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec.structs
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.structs import ConsumerRecord

from canary.control import ControlFold, Freshness, catch_up
from canary.core import wire
from canary.core.deployment import ConfigRef, ControlLedger
from canary.core.models import ARMS, Arm, RouterState, RouterWatermark, SearchOutcome
from canary.core.split import baseline_of, candidate_of
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics
from canary.observability.metrics import RouterMetrics
from canary.security import INSECURE_WARNING, CommandVerifier, default_verifier
from router.backends.base import (
    BackendError,
    ExactSearchBackend,
    SearchBackend,
    exact_searcher,
    require_collection,
)
from router.backends.registry import BackendRegistry
from router.membership import RENEWABLE, RequestGroup, RequestIntakeFailed, Stall
from router.offsets import OffsetTracker
from router.requests import SearchRequest, mrr_at_10, ndcg_at_10, recall_at_10

log = logging.getLogger("canary.router")
# Delivery failures come in bursts (every pending record fails at once after an outage): this logger is
# rate-limited per message kind like aiokafka's (canary.observability.logs.RATE_LIMITED_LOGGERS).
delivery_log = logging.getLogger("canary.router.delivery")
# A flood of rejected control records (anyone with Write on the topic can append them) must not flood the
# log: rate-limited like the delivery logger.
control_log = logging.getLogger("canary.router.control")

DEFAULT_RECALL_SAMPLE_RATE: Final = 0.10  # docs/contracts.md, "Recall without labels": why 10 %
DEFAULT_MAX_EXACT_IN_FLIGHT: Final = 16  # a burst beyond this drops samples (counted), never queues them
DEFAULT_EXACT_TIMEOUT_MS: Final = 2000
EXACT_K: Final = 10
STOP_STEP_S = 2.0  # each step of a stop that waits for the broker gives up after this long
REDELIVERY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
COMMIT_INTERVAL_S: Final = 1.0
INTAKE_CHECK_INTERVAL_S: Final = 2.0
RENEW_JOIN_TIMEOUT_S: Final = 60.0  # a fresh member that gets no assignment by then counts as a failed renewal


def outcome_partition(request_id: str, partitions: int) -> int:
    """The ``search_results`` partition of a request's outcome (a contract with every producer: the same
    request always lands on the same partition, so a re-processed request is found and counted once)."""
    return zlib.crc32(request_id.encode()) % partitions


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


def _settle(outer: asyncio.Future[Any], inner: asyncio.Future[Any]) -> None:
    """Complete ``outer`` as ``inner`` completed."""
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())  # type: ignore[arg-type]
    else:
        outer.set_result(inner.result())


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], limit_s: float, owner: str) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that went on: Python 3.11's
    ``asyncio.wait_for`` loses a cancellation that arrives as its inner call completes (the control loop's
    freshness check uses it), and awaiting such a task would hang the stop forever. Bounded by ``limit_s``."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + limit_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("%s: stop: %d task(s) ignored cancellation; going on", owner, len(pending))
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.2, left))
    for task in tasks:  # retrieve their errors, so asyncio does not log them as never retrieved
        if task.done() and not task.cancelled():
            task.exception()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RouterStats:
    requests: int = 0
    by_arm: dict[str, int] = field(default_factory=lambda: {"last_good": 0, "candidate": 0})
    errors: int = 0
    invalid_requests: int = 0
    invalid_commands: int = 0
    watermarks: int = 0  # watermark rounds sent (one record per search_results partition each)
    failsafe_requests: int = 0  # sent to last_good because the control view was stale
    control_check_failures: int = 0
    # Control records refused before the ledger saw them, by reason (canary.security.verify.REJECT_REASONS).
    rejected_commands: dict[str, int] = field(default_factory=dict)
    last_candidate_dispatch_ms: int | None = None
    # Unlabeled requests sampled for an exact search, by result: measured, or dropped (busy, timeout, error,
    # empty) — a dropped sample's outcome goes out without recall, never later than the exact timeout.
    exact_samples: dict[str, int] = field(default_factory=dict)
    applied: list[tuple[str, str, int]] = field(default_factory=list)  # (command_id, type, applied_at_ms)


def sampled_for_exact(request_id: str, rate: float) -> bool:
    """Whether a request is in the exact-search sample: a stable hash of its id, so a re-processed request
    is sampled (or not) again, independently of the arm it is routed to."""
    if rate <= 0.0:
        return False
    return zlib.crc32(b"exact:" + request_id.encode()) % 1_000_000 < rate * 1_000_000


@dataclass(eq=False, slots=True)
class Delivery:
    """An outcome on its way to the broker. For a request sampled for exact search ``outcome`` becomes final
    (with the sampled recall) only when that search is done or given up; ``ack`` completes once the broker
    has the final one."""

    outcome: SearchOutcome
    ack: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class ConfigUsed:
    name: str
    version: str
    content_hash: str
    arm: Arm
    deployment_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_name": self.name,
            "config_version": self.version,
            "config_hash": self.content_hash,
            "arm": self.arm,
            "deployment_id": self.deployment_id,
        }


class RouterService:
    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        backend: SearchBackend,
        initial_last_good: ConfigRef,
        router_id: str | None = None,
        group_id: str | None = None,
        consume_requests: bool = True,
        max_in_flight: int = 256,
        search_timeout_ms: int = 10_000,
        heartbeat_seconds: float = 5.0,
        reply: bool = False,
        verifier: CommandVerifier | None = None,
        clock: Callable[[], int] | None = None,
        watermark_interval_ms: int = 50,
        control_stale_after_s: float = 5.0,
        metrics: RouterMetrics | None = None,
        recall_sample_rate: float | Mapping[str, float] = DEFAULT_RECALL_SAMPLE_RATE,
        max_exact_in_flight: int = DEFAULT_MAX_EXACT_IN_FLIGHT,
        exact_timeout_ms: int = DEFAULT_EXACT_TIMEOUT_MS,
    ) -> None:
        # One share for both arms, or one per arm ({"candidate": 0.2, "last_good": 0.05}; a missing arm: the default).
        rates: dict[str, float] = (
            {arm: float(recall_sample_rate.get(arm, DEFAULT_RECALL_SAMPLE_RATE)) for arm in ARMS}
            if isinstance(recall_sample_rate, Mapping)
            else dict.fromkeys(ARMS, float(recall_sample_rate))
        )
        for arm, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"recall_sample_rate[{arm}] = {rate!r}: must be between 0 and 1")
        self.bootstrap = bootstrap
        self.topics = topics
        self.backend = backend  # the operator's: serves every preset whose backend is bundled (or unset)
        self.backends = BackendRegistry(backend)  # a preset's allow-listed backend section -> its backend
        self.router_id = router_id or f"router-{uuid.uuid4().hex[:8]}"
        self.group_id = group_id or f"{topics.prefix}canary-router"
        self.consume_requests = consume_requests
        self.ledger = ControlLedger(last_good=initial_last_good)
        self.stats = RouterStats()
        self._seq = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._timeout_s = search_timeout_ms / 1000.0
        # Recall without labels: this share of unlabeled requests (per arm) is searched again exactly, off
        # the hot path, at most max_exact_in_flight at a time (more are dropped and counted, never queued).
        self.recall_sample_rates: dict[str, float] = rates
        self._exact_max = max(0, max_exact_in_flight)
        self._exact_in_flight = 0
        self._exact_timeout_s = exact_timeout_ms / 1000.0
        self._exact_tasks: set[asyncio.Task[None]] = set()
        self._offsets = OffsetTracker()
        # The request consumer's membership (router/membership.py): commit gate, rebalance epochs, stalls. A
        # consumer stalled (joining, or records waiting while slots are free) for renew_after_s is replaced
        # by a fresh group member; after max_renewals in a row that did not help the router exits.
        self._group = RequestGroup(self._offsets)
        self.renew_after_s = 30.0
        self.max_renewals = 3
        self._renewals = 0
        self._stall_reported = False
        self._freshness = Freshness(
            control_stale_after_s,
            lambda problem: log.warning("%s: cannot read or confirm the control topic (%s)", self.router_id, problem),
        )
        self._failsafe_logged = False
        # Event time of this router's outcomes and watermarks (a test hook may shift it: clock skew).
        self._clock: Callable[[], int] = clock or now_ms
        self._watermark_interval_s = watermark_interval_ms / 1000.0
        self._watermark_seq = 0
        self._unsent: dict[int, int] = {}  # outcomes stamped but not yet enqueued: token -> ts
        self._tokens = itertools.count()
        self._result_partitions = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._producer: HealingProducer | None = None
        self._control: AIOKafkaConsumer | None = None
        self._requests: AIOKafkaConsumer | None = None
        self._caught_up = asyncio.Event()
        self._heartbeat_s = heartbeat_seconds
        self.reply = reply
        # Every control record is verified before the ledger sees it (signature, trusted key, expiry, replay,
        # snapshot hash and preset validity); None = the verifier the process settings describe.
        self.verifier = verifier if verifier is not None else default_verifier(topics.control)
        self._fold = ControlFold(
            self.verifier, self.ledger, who=self.router_id, rejected_log=control_log, error_log=log
        )
        self.metrics = metrics or RouterMetrics(self.router_id)
        self.metrics.bind(
            control_lag=self._freshness.lag,
            failsafe=lambda: float(self.control_stale),
            # A slot is held from intake until the outcome is acknowledged; asyncio.Semaphore keeps its free
            # count in _value (no public accessor), which is exactly "in flight" from the other side.
            in_flight=lambda: float(max_in_flight - self._slots._value),
        )
        self.metrics.intake_stalled.set_function(lambda: float(self._group.stall is not None))
        self.started = False
        self._state_pending: str | None = None  # a transition whose state record failed: republished
        self._redeliveries: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.verifier.insecure:
            for _ in range(3):
                log.warning("router %s: %s", self.router_id, INSECURE_WARNING)
        # Replaced in-process when a delivery fails (after a broker restart the old one's sequence numbers
        # are refused for good); what it did not deliver fails back to _finish and is sent again.
        self._producer = HealingProducer(
            lambda: AIOKafkaProducer(
                **client_kwargs(self.bootstrap),
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                # Outcomes of one canary share two or three keys, so batches per partition fill fast; the
                # 16 KB default made every send wait for a drain.
                max_batch_size=1 << 20,
            ),
            f"{self.router_id} producer",
            on_replaced=lambda _cause: self.metrics.producer_replacements.inc(),
        )
        await self._producer.start()
        self._control = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap), enable_auto_commit=False, fetch_max_wait_ms=50, group_id=None
            )
        )
        await self._control.start()
        control_tp = TopicPartition(self.topics.control, 0)
        self._control.assign([control_tp])
        await self._control.seek_to_beginning(control_tp)
        end = (await self._control.end_offsets([control_tp]))[control_tp]
        await catch_up(self._control, control_tp, end, lambda record: self._apply_control(record, publish=False))
        self._caught_up.set()
        self._freshness.confirmed()  # read to the end just now
        await self._publish_state(None)
        self._result_partitions = len(await self._producer.partitions_for(self.topics.search_results))
        await self._send_watermarks("start")  # announces this producer to every windows-stage partition
        self._loops.append(asyncio.create_task(self._watermark_loop(), name=f"{self.router_id}-watermarks"))
        self._loops.append(asyncio.create_task(self._control_loop(), name=f"{self.router_id}-control"))
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name=f"{self.router_id}-heartbeat"))
        if self.consume_requests:
            self._requests = self._new_request_consumer()
            await self._requests.start()  # returns once the group assigned partitions
            self._loops.append(asyncio.create_task(self._request_loop(), name=f"{self.router_id}-requests"))
            self._loops.append(asyncio.create_task(self._commit_loop(), name=f"{self.router_id}-commit"))
        self.started = True

    async def _bounded(self, what: str, step: Any) -> bool:
        """One step of a stop, given up after STOP_STEP_S (the broker may be down): True if it finished."""
        try:
            await asyncio.wait_for(step, STOP_STEP_S)
            return True
        except asyncio.CancelledError:
            # aiokafka's consumer.stop() re-raises the CancelledError of the fetch task it cancels; only a
            # cancellation of this task itself must go on up.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("%s: stop: %s was cancelled inside the client; going on", self.router_id, what)
        except TimeoutError:
            log.warning("%s: stop: %s did not finish within %.0f s; going on", self.router_id, what, STOP_STEP_S)
        except Exception as exc:
            log.warning("%s: stop: %s failed (%s: %s); going on", self.router_id, what, type(exc).__name__, exc)
        return False

    async def stop(self) -> None:
        """Stop cleanly when the broker answers, promptly when it does not: every step that waits for the
        broker is bounded. What is not acknowledged by then is not committed, so it is consumed again."""
        await cancel_and_wait([*self._loops, *self._redeliveries], STOP_STEP_S, self.router_id)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_STEP_S)
            for task in pending:
                task.cancel()
        if self._exact_tasks:  # sampled outcomes still waiting for their exact search (bounded by its timeout)
            _, pending = await asyncio.wait(set(self._exact_tasks), timeout=STOP_STEP_S)
            for task in pending:
                task.cancel()  # not delivered, so not committed: consumed again after a restart
        # Acks mark offsets done; then the last commit covers them.
        if self._producer is not None and await self._bounded("flushing outcomes", self._producer.flush()):
            # A clean exit leaves the windows stage's live set at once.
            await self._bounded("the stop watermark", self._send_watermarks("stop"))
            await self._bounded("flushing the stop watermark", self._producer.flush())
        if self._requests is not None:
            await self._bounded("committing offsets", self._commit())
            await self._bounded("leaving the consumer group", self._requests.stop())
        if self._control is not None:
            await self._bounded("closing the control reader", self._control.stop())
        if self._producer is not None:
            await self._bounded("closing the producer", self._producer.stop())
        await self._bounded("closing the HTTP backends", self.backends.close())

    async def __aenter__(self) -> RouterService:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- control ----------------------------------------------------------------------------------------------
    @property
    def control_stale_after_s(self) -> float:
        return self._freshness.stale_after_s

    @property
    def _control_fresh_at(self) -> float:
        return self._freshness.fresh_at

    @_control_fresh_at.setter
    def _control_fresh_at(self, monotonic_s: float) -> None:  # a test hook: make the view stale or fresh
        self._freshness.fresh_at = monotonic_s

    async def _control_loop(self) -> None:
        assert self._control is not None
        tp = TopicPartition(self.topics.control, 0)
        checked = 0.0
        while True:
            try:
                batch = await self._control.getmany(timeout_ms=200)
            except AIOKafkaError as exc:
                # Not fatal: an ACL can be restored, a broker can come back. Until this router has read the
                # control topic to its end again it fails safe (see _check_control_fresh).
                batch = {}
                self._note_control_problem(exc)
                await asyncio.sleep(0.5)
            for records in batch.values():
                for record in records:
                    transition_cmd = self._apply_control(record, publish=True)
                    if transition_cmd is not None:
                        await self._publish_transition(transition_cmd)
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                await self._check_control_fresh(tp)

    async def _check_control_fresh(self, tp: TopicPartition) -> None:
        """The view of the control topic is fresh when the broker confirms we have read to its end. A fetch
        that fails (broker down, Read ACL revoked) only shows as no confirmation: after
        ``control_stale_after_s`` the router sends nothing to the candidate (fail safe to last_good)."""
        assert self._control is not None
        was_stale = self.control_stale
        failures = self._freshness.failures
        if await self._freshness.check(self._control, tp) and was_stale:
            log.warning("%s: control topic view is fresh again; candidate traffic resumes", self.router_id)
        self.stats.control_check_failures += self._freshness.failures - failures
        stale = self.control_stale
        if stale and not self._failsafe_logged:
            log.error(
                "%s: FAIL-SAFE — no confirmed control-topic read for %.0f s (%s); all traffic goes to last_good",
                self.router_id,
                self.control_stale_after_s,
                self._freshness.problem or "no progress",
            )
        if stale != self._failsafe_logged:
            # Entering or leaving fail-safe is news for operators (canary status): say it on the state topic.
            with contextlib.suppress(Exception):
                await self._publish_state(self.ledger.last_command_id, heartbeat=True)
        self._failsafe_logged = stale

    def _note_control_problem(self, exc: BaseException) -> None:
        self.stats.control_check_failures += 1
        self._freshness.note_problem(exc)

    @property
    def failsafe_reason(self) -> str | None:
        """Why candidate traffic is held back right now, or None (view fresh, or no canary running)."""
        if not any(d.status == "running" for d in self.ledger.live) or not self.control_stale:
            return None
        return (
            f"control topic view unconfirmed for over {self.control_stale_after_s:.0f} s"
            f" ({self._freshness.problem or 'no progress'}); all traffic to last_good"
        )

    def failure(self) -> BaseException | None:
        """The error of an essential loop that died (the process should exit non-zero with it)."""
        for loop in self._loops:
            if loop.done() and not loop.cancelled() and loop.exception() is not None:
                return loop.exception()
        if self._producer is not None:
            # Only what a new producer cannot fix (the broker refuses one); a restarted router consumes the
            # unanswered requests again.
            return self._producer.failure()
        return None

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """/readyz: started (connected, control topic read), request partitions assigned and their requests
        taken, control view fresh, producer alive and delivering."""
        checks: dict[str, tuple[bool, str]] = {
            "started": (self.started, "connected and caught up" if self.started else "starting")
        }
        if self.consume_requests:
            assigned = sorted(tp.partition for tp in self._group.owned)
            checks["assigned"] = (bool(assigned), f"{self.topics.search_requests} partitions {assigned}")
            stall = self._group.stall
            checks["consuming"] = (stall is None, "taking requests" if stall is None else stall.reason)
        lag = self._freshness.lag()
        checks["control_fresh"] = (self.started and not self.control_stale, f"control view confirmed {lag:.1f} s ago")
        failed = self.failure()
        replacing = self._producer is not None and self._producer.replacing
        checks["producer"] = (
            failed is None and not replacing and not self._redeliveries,
            f"failed: {failed!r}"
            if failed
            else "being replaced after a failed delivery"
            if replacing
            else f"{len(self._redeliveries)} outcome(s) awaiting redelivery",
        )
        return checks

    @property
    def control_stale(self) -> bool:
        return self._freshness.stale

    def _apply_control(self, record: ConsumerRecord[bytes, bytes], publish: bool) -> str | None:
        outcome = self._fold.apply(record.value, record.offset, record.timestamp)  # total: never raises
        verdict = outcome.verdict
        if not verdict.accepted or verdict.command is None:  # never applied; poison never stops the router
            reason = verdict.reason or "malformed"
            if verdict.poison:
                self.stats.invalid_commands += 1
            self.stats.rejected_commands[reason] = self.stats.rejected_commands.get(reason, 0) + 1
            self.metrics.commands_rejected.labels(reason).inc()
            return None
        cmd = verdict.command
        if outcome.applied:
            self.stats.applied.append((cmd.command_id, cmd.type, now_ms()))
            self.metrics.commands_applied.labels(cmd.type).inc()
            log.info("%s applied %s %s: %s", self.router_id, cmd.type, cmd.deployment_id, outcome.note)
            return cmd.command_id
        log.debug("%s: %s", self.router_id, outcome.note)
        return None

    async def _publish_transition(self, answers: str) -> None:
        """The state answering a command. If the broker does not take it, it is published again by the
        heartbeat loop (never skipped: operators wait for it and the audit records it)."""
        try:
            await self._publish_state(answers)
            self._state_pending = None
        except Exception as exc:
            self._state_pending = answers
            self._delivery_failed("state", exc)
            delivery_log.error(
                "%s: state answering %s not delivered (%s: %s); publishing it again",
                self.router_id,
                answers,
                type(exc).__name__,
                exc,
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if self._state_pending is not None:
                await self._publish_transition(self._state_pending)
                continue
            try:
                await self._publish_state(self.ledger.last_command_id, heartbeat=True)
            except Exception as exc:  # the broker is down or electing: the next beat tries again
                self._delivery_failed("state", exc)
                delivery_log.error("%s: heartbeat not delivered (%s: %s)", self.router_id, type(exc).__name__, exc)

    def current_state(self, answers: str | None, heartbeat: bool = False) -> RouterState:
        dep = self.ledger.current or self.ledger.latest
        last = self.ledger.last_good
        status = dep.status if dep is not None else "idle"
        return RouterState(
            router_id=self.router_id,
            deployment_id=dep.deployment_id if dep else None,
            status=status,
            active_config=last.name if last else "",
            last_good=last.name if last else "",
            candidate_config=dep.candidate.name if dep else None,
            weight=dep.candidate_weight if dep else 0.0,
            answers_command_id=answers,
            applied_at_ms=now_ms(),
            seq=self._seq,
            heartbeat=heartbeat,
            failsafe=self.failsafe_reason,
            request_partitions=tuple(sorted(tp.partition for tp in self._group.owned))
            if self.consume_requests
            else None,
            requests_stalled=self._group.stall.reason[:500] if self._group.stall is not None else None,
        )

    async def _publish_state(self, answers: str | None, heartbeat: bool = False) -> None:
        assert self._producer is not None
        self._seq += 1
        state = self.current_state(answers, heartbeat)
        await self._producer.send_and_wait(
            self.topics.state, json.dumps(state.to_dict()).encode(), key=self.router_id.encode()
        )

    # -- routing ------------------------------------------------------------------------------------------------
    def route(self, request: SearchRequest) -> tuple[ConfigRef, ConfigUsed]:
        """Pick the arm for a request from the state as it is right now (one or several candidates)."""
        last_good = self.ledger.last_good
        assert last_good is not None
        live = self.ledger.live
        if not live:
            latest = self.ledger.latest
            deployment_id = latest.deployment_id if latest else None
            return last_good, ConfigUsed(
                last_good.name, last_good.version, last_good.content_hash, "last_good", deployment_id
            )
        running = [d for d in live if d.status == "running"]
        chosen = None
        if running and self.control_stale:
            # Fail safe: a view of the control topic older than the bound may miss a rollback.
            self.stats.failsafe_requests += 1
            self.metrics.failsafe_requests.inc()
        elif running:
            chosen = candidate_of(request.routing_key, [d.arc for d in running])
        if chosen is not None:
            dep = self.ledger.deployments[chosen]
            config, arm = dep.candidate, "candidate"
        else:
            # last_good, counted as the baseline of exactly one live deployment
            baseline = baseline_of(request.routing_key, [d.deployment_id for d in live])
            dep = self.ledger.deployments[baseline] if baseline else live[-1]
            config, arm = dep.last_good, "last_good"
        used = ConfigUsed(config.name, config.version, config.content_hash, arm, dep.deployment_id)  # type: ignore[arg-type]
        return config, used

    async def execute_search(
        self,
        query: str,
        collection_name: str,
        user_id: str | None = None,
        relevant_ids: list[str] | None = None,
        request_id: str | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """The spec's in-process API: route, search, publish the outcome, return (results, config_used).
        ConfigError, before anything is counted or published, if the backend serving the request's config
        says ``collection_name`` is not one of its collections."""
        request = SearchRequest(
            request_id=request_id or uuid.uuid4().hex,
            query=query,
            collection=collection_name,
            user_id=user_id,
            ts=now_ms(),
            relevant_ids=tuple(relevant_ids) if relevant_ids is not None else None,
        )
        results, used, ack, delivery = await self._handle(request, check_collection=True)
        if ack.done():
            self._count_delivered(delivery.outcome)
        else:  # sampled for exact search: the answer does not wait for it, the outcome follows
            ack.add_done_callback(lambda fut: self._sampled_delivered(fut, delivery))
        return results, used.to_dict()

    def _sampled_delivered(self, ack: asyncio.Future[Any], delivery: Delivery) -> None:
        if ack.cancelled():
            return
        if ack.exception() is not None:
            self._delivery_failed("outcome", ack.exception())
            delivery_log.error("%s: sampled outcome not delivered: %r", self.router_id, ack.exception())
            return
        self._count_delivered(delivery.outcome)

    def backend_for(self, config: ConfigRef) -> SearchBackend:
        """The backend that serves ``config``: its preset's allow-listed ``backend`` section, else this
        router's own (router.backends.registry)."""
        return self.backends.for_config(config)

    def _exact_for(self, backend: SearchBackend, request: SearchRequest, arm: str) -> ExactSearchBackend | None:
        """The backend's exact search if this (unlabeled, answered) request is in the sample and a slot is
        free; a sampled request finding no slot is dropped and counted (serving never waits for it)."""
        if not sampled_for_exact(request.request_id, self.recall_sample_rates[arm]):
            return None
        exact = exact_searcher(backend)
        if exact is None:
            return None
        if self._exact_in_flight >= self._exact_max:
            self._count_exact(arm, "busy")
            return None
        self._exact_in_flight += 1
        return exact

    def _count_exact(self, arm: str, result: str) -> None:
        self.stats.exact_samples[result] = self.stats.exact_samples.get(result, 0) + 1
        self.metrics.exact_samples.labels(arm, result).inc()

    async def _handle(
        self, request: SearchRequest, wait_ack: bool = True, check_collection: bool = False
    ) -> tuple[list[str], ConfigUsed, asyncio.Future[Any], Delivery]:
        """Route and serve one request, then publish its outcome: at once, or — when it is sampled for exact
        search — from a background task once the exact top-10 is known (the answer never waits for that,
        and its latency is the served search's alone). The returned ack completes when the broker has the
        final outcome (``delivery.outcome``). ``check_collection`` (the in-process API): refuse a collection
        the serving backend says it does not have, before counting the request."""
        config, used = self.route(request)
        backend = self.backend_for(config)
        if check_collection:
            require_collection(backend, request.collection, config.name)
        self.stats.requests += 1
        self.stats.by_arm[used.arm] += 1
        self.metrics.requests.labels(used.arm).inc()
        if used.arm == "candidate":
            self.stats.last_candidate_dispatch_ms = now_ms()
        started = time.perf_counter()
        error: str | None = None
        results: list[str] = []
        engine_metrics: Any = None
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await backend.search(request.query, request.collection, config.snapshot)
                results = list(answer)
                # a RankedResults' own numbers (list() drops the attribute, so read it before)
                engine_metrics = getattr(answer, "metrics", None)
        except TimeoutError:
            error = "timeout"
        except BackendError as exc:  # a backend's own error code (router.backends.base.BACKEND_ERROR_CODES)
            error = exc.error_code
            log.debug("search failed: %r", exc)
        except Exception as exc:
            error = "backend_error"
            log.debug("search failed: %r", exc)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if error:
            self.stats.errors += 1
        ranked = [] if error else results
        metrics = dict(engine_metrics or {}) if not error else {}
        if request.relevant_ids:  # quality beyond recall, for presets' custom metrics (an error scores 0)
            metrics["ndcg_at_10"] = round(ndcg_at_10(ranked, request.relevant_ids) or 0.0, 6)
            metrics["mrr_at_10"] = round(mrr_at_10(ranked, request.relevant_ids) or 0.0, 6)
        outcome = SearchOutcome(
            event_id=f"{self.router_id}:{request.request_id}",
            request_id=request.request_id,
            ts=self._clock(),
            deployment_id=used.deployment_id,
            config_name=used.name,
            config_version=used.version,
            config_hash=used.content_hash,
            arm=used.arm,
            latency_ms=round(latency_ms, 3),
            # A labeled request that errored found nothing relevant: recall 0, never "unknown" (an error
            # must not make quality look better by dropping out of the mean).
            recall_at_10=recall_at_10([] if error else results, request.relevant_ids),
            result_count=len(results),
            error=error,
            router_id=self.router_id,
            metrics=metrics or None,
        )
        exact = None if request.relevant_ids or error else self._exact_for(backend, request, used.arm)
        if exact is not None:
            delivery = Delivery(outcome, asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._publish_sampled(exact, request, results, delivery))
            self._exact_tasks.add(task)
            task.add_done_callback(self._exact_tasks.discard)
            return results, used, delivery.ack, delivery
        try:
            ack = await self._publish_outcome(outcome, wait_ack)
        except Exception as exc:
            if wait_ack:
                raise
            # Not even queued (the producer gave up waiting for room): handled like a failed delivery, so
            # the request is never marked done without its outcome.
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(exc)
        return results, used, ack, Delivery(outcome, ack)

    async def _publish_sampled(
        self, exact: ExactSearchBackend, request: SearchRequest, results: list[str], delivery: Delivery
    ) -> None:
        """Exact top-10 for a sampled request (bounded by the exact timeout), then its outcome: recall@10 of
        the served results against it, ``recall_source: exact_sample``. Given up, the outcome goes out
        without recall. Its ``ts`` is stamped now, so it never holds a watermark back."""
        arm = delivery.outcome.arm
        truth: list[str] = []
        try:
            try:
                async with asyncio.timeout(self._exact_timeout_s):
                    answer = await exact.exact_search(request.query, request.collection, EXACT_K)
                    truth = [str(x) for x in itertools.islice(answer, EXACT_K)]  # bounded, whatever it returned
                result = "measured" if truth else "empty"
            except TimeoutError:
                result = "timeout"
            except Exception as exc:
                result = "error"
                log.debug("exact search failed: %r", exc)
            finally:
                self._exact_in_flight -= 1
            self._count_exact(arm, result)
            outcome = delivery.outcome
            if truth:
                recall = recall_at_10(results, tuple(truth))
                outcome = msgspec.structs.replace(outcome, recall_at_10=recall, recall_source="exact_sample")
            delivery.outcome = msgspec.structs.replace(outcome, ts=self._clock())
            inner = await self._publish_outcome(delivery.outcome, wait_ack=False)
        except Exception as exc:  # not even queued: handled like a failed delivery
            if not delivery.ack.done():
                delivery.ack.set_exception(exc)
            return
        inner.add_done_callback(lambda fut: _settle(delivery.ack, fut))

    def _delivery_failed(self, kind: str, exc: BaseException | None) -> None:
        # The producer replaces itself after a failed delivery (canary.kafka.producer); the caller sends again.
        self.metrics.publish_errors.labels(kind).inc()

    def _count_delivered(self, outcome: SearchOutcome) -> None:
        self.metrics.outcomes.labels(outcome.arm, outcome.error or "ok").inc()

    async def _publish_outcome(self, outcome: SearchOutcome, wait_ack: bool = True) -> asyncio.Future[Any]:
        """Enqueue the outcome; with ``wait_ack`` also wait until the broker has it."""
        assert self._producer is not None
        key = outcome.request_id.encode()
        # Spread over every partition by request: workers share the load, and a request re-processed by
        # another router lands on the same partition, where the windows stage drops the duplicate.
        partition = outcome_partition(outcome.request_id, self._result_partitions)
        token = next(self._tokens)
        self._unsent[token] = outcome.ts
        try:
            ack: asyncio.Future[Any] = await self._producer.send(
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
        now = self._clock()
        return min(now, min(self._unsent.values(), default=now) - 1)

    async def _send_watermarks(self, status: str) -> None:
        assert self._producer is not None
        self._watermark_seq += 1
        mark = RouterWatermark(self.router_id, max(0, self.watermark_now()), status, self._watermark_seq)  # type: ignore[arg-type]
        value = orjson.dumps(mark.to_dict())
        for partition in range(self._result_partitions):
            ack = await self._producer.send(
                self.topics.search_results, value, key=self.router_id.encode(), partition=partition
            )
            ack.add_done_callback(self._watermark_delivered)
        self.stats.watermarks += 1

    def _watermark_delivered(self, ack: asyncio.Future[Any]) -> None:
        # A lost watermark is harmless (the next one, 50 ms later, says more); count it, never leave the
        # future's exception unretrieved (asyncio would log each one).
        if not ack.cancelled() and ack.exception() is not None:
            self._delivery_failed("watermark", ack.exception())
            delivery_log.warning("%s: watermark not delivered: %r", self.router_id, ack.exception())

    async def _watermark_loop(self) -> None:
        interval = self._watermark_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send_watermarks("running")
            except Exception as exc:  # the producer could not even queue it (broker down for long)
                self.metrics.publish_errors.labels("watermark").inc()
                delivery_log.warning("%s: watermark not queued (%s: %s)", self.router_id, type(exc).__name__, exc)

    # -- Kafka request intake ------------------------------------------------------------------------------------
    def _new_request_consumer(self) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,
            )
        )
        consumer.subscribe([self.topics.search_requests], listener=self._group.listener())
        self._group.renewed(consumer)
        return consumer

    async def _request_loop(self) -> None:
        assert self._requests is not None
        consumer = self._requests
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
            epoch = self._group.epoch
            for tp, records in batch.items():
                for record in records:
                    await self._slots.acquire()
                    if self._group.epoch != epoch:
                        # A rebalance began while this batch waited for slots: its partitions may be another
                        # router's by now, and aiokafka reads the rest again from the committed offset.
                        self._slots.release()
                        break
                    self._offsets.started(tp.topic, tp.partition, record.offset)
                    self._group.taken(tp, record.offset)
                    task = asyncio.create_task(self._process_record(record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
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
                results, used, ack, delivery = await self._handle(request, wait_ack=False)
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
                self._redeliveries.add(task)
                task.add_done_callback(self._redeliveries.discard)
            else:
                # The slot frees and the offset becomes committable when the broker has the outcome (and,
                # for poison, its dead letter), without keeping this task alive until then.
                done = delivery
                ack.add_done_callback(lambda fut: self._finish(record, fut, done.outcome))

    async def _process_again(self, record: ConsumerRecord[bytes, bytes], attempt: int) -> None:
        await asyncio.sleep(REDELIVERY_BACKOFF_S[min(attempt - 1, len(REDELIVERY_BACKOFF_S) - 1)])
        if self.failure() is None:  # else the process exits; the request is consumed again after the restart
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
            self._delivery_failed("outcome", None if ack.cancelled() else ack.exception())
            delivery_log.error(
                "%s: outcome for offset %s/%s not delivered (%r); sending it again",
                self.router_id,
                record.partition,
                record.offset,
                None if ack.cancelled() else ack.exception(),
            )
            task = asyncio.create_task(self._redeliver(record, outcome))
            self._redeliveries.add(task)
            task.add_done_callback(self._redeliveries.discard)
            return
        self._slots.release()
        if outcome is not None:
            self._count_delivered(outcome)
        self._offsets.finished(record.topic, record.partition, record.offset)

    async def _redeliver(self, record: ConsumerRecord[bytes, bytes], outcome: SearchOutcome) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(REDELIVERY_BACKOFF_S[min(attempt, len(REDELIVERY_BACKOFF_S) - 1)])
            attempt += 1
            if self.failure() is not None:
                return  # the process exits; the request is consumed again after the restart
            try:
                await self._publish_outcome(outcome, wait_ack=True)
            except Exception as exc:
                self._delivery_failed("outcome", exc)
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
            self._slots.release()
            self._count_delivered(outcome)
            self._offsets.finished(record.topic, record.partition, record.offset)
            return

    async def _reply(self, request: SearchRequest, results: list[str], used: ConfigUsed) -> None:
        assert self._producer is not None
        body = {"request_id": request.request_id, "results": results, "config_used": used.to_dict()}
        ack = await self._producer.send(
            self.topics.responses, json.dumps(body).encode(), key=request.request_id.encode()
        )
        ack.add_done_callback(self._reply_delivered)

    def _reply_delivered(self, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            self._delivery_failed("reply", ack.exception())
            delivery_log.warning("%s: search response not delivered: %r", self.router_id, ack.exception())

    async def _reject(
        self, record: ConsumerRecord[bytes, bytes], reason: wire.DeadLetterReason, detail: str
    ) -> tuple[asyncio.Future[Any], Delivery]:
        """Poison request: dead-letter it with the reason and publish an error outcome (visible, not lost).
        Returns the outcome's ack, which completes only once the dead letter is on the broker too."""
        assert self._producer is not None
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
        dead_ack = await self._producer.send(self.topics.requests_dlq, orjson.dumps(dead))
        self.metrics.dlq.labels(reason).inc()
        request_id = f"invalid-{record.topic}-{record.partition}-{record.offset}"
        last_good = self.ledger.last_good
        assert last_good is not None
        # Answered, so requests and outcomes still match one to one, but outside every canary: a poison
        # request says nothing about a config, and a flood of them must not decide a deployment.
        outcome = SearchOutcome(
            event_id=f"{self.router_id}:{request_id}",
            request_id=request_id,
            ts=self._clock(),
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
        outcome_ack = await self._publish_outcome(outcome, wait_ack=False)
        both: asyncio.Future[Any] = asyncio.ensure_future(_both(dead_ack, outcome_ack, self._dead_letter_failed))
        return both, Delivery(outcome, both)

    def _dead_letter_failed(self, exc: BaseException) -> None:
        self.metrics.publish_errors.labels("dlq").inc()
        delivery_log.error("%s: dead letter not delivered (%s: %s)", self.router_id, type(exc).__name__, exc)

    async def _commit_loop(self) -> None:
        checked = time.monotonic()
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit()
            if time.monotonic() - checked >= INTAKE_CHECK_INTERVAL_S:
                checked = time.monotonic()
                await self._check_intake()

    async def _commit(self) -> None:
        """Acknowledged prefixes of the owned partitions; never during a rebalance (router/membership.py)."""
        if self._requests is not None:
            await self._group.commit()

    async def _check_intake(self) -> None:
        """Is the request consumer taking requests? Say so when that changes (state topic, log), and replace
        a consumer stalled by its own fault for ``renew_after_s``; exit when that does not help."""
        stall = await self._group.check(slots_free=not self._slots.locked())
        if (stall is not None) != self._stall_reported:
            if stall is not None:
                log.warning("%s: NOT taking requests: %s", self.router_id, stall.reason)
            else:
                log.warning("%s: taking requests again", self.router_id)
            self._stall_reported = stall is not None
            with contextlib.suppress(Exception):  # news for operators (canary status); heartbeats repeat it
                await self._publish_state(self.ledger.last_command_id, heartbeat=True)
        if stall is None:
            if self._group.proven:
                self._renewals = 0
        elif stall.kind in RENEWABLE and stall.lasted(self._group.clock()) >= self.renew_after_s:
            await self._renew_request_consumer(stall)

    async def _renew_request_consumer(self, stall: Stall) -> None:
        """Leave the group and join again as a fresh member (docs/adr/0003-request-group-membership.md).
        Requests in flight finish and are acknowledged; what was not committed is read again."""
        if self._renewals >= self.max_renewals:
            raise RequestIntakeFailed(
                f"router {self.router_id}: its {self.topics.search_requests} consumer still takes no requests "
                f"after {self._renewals} fresh group member(s) ({stall.reason}); exiting so that a restarted "
                "router and the other routers take its partitions over"
            )
        self._renewals += 1
        self.metrics.request_consumer_renewals.inc()
        log.error(
            "%s: the request consumer is stalled (%s); leaving the group and joining as a fresh member (%d/%d)",
            self.router_id,
            stall.reason,
            self._renewals,
            self.max_renewals,
        )
        intake = [t for t in self._loops if t.get_name() == f"{self.router_id}-requests"]
        await cancel_and_wait(intake, STOP_STEP_S, self.router_id)
        for task in intake:
            self._loops.remove(task)
        if self._requests is not None:
            await self._bounded("leaving the consumer group", self._requests.stop())
        self._requests = self._new_request_consumer()
        try:
            async with asyncio.timeout(RENEW_JOIN_TIMEOUT_S):
                await self._requests.start()
        except Exception as exc:  # the next check finds it still joining and renews again (or gives up)
            log.error("%s: the fresh request consumer did not join (%r)", self.router_id, exc)
        self._loops.append(asyncio.create_task(self._request_loop(), name=f"{self.router_id}-requests"))
