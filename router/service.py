"""The router: splits traffic last_good / candidate, runs searches, publishes every outcome, obeys control.

:class:`RouterService` owns the lifecycle (start, stop, readiness, failure) and the producer, and composes
the parts that do the work, each in its own module:

* ``router/control.py`` — the router's view of the control topic (read in full by every instance, verified
  and folded into the ledger, freshness and fail-safe) and the state records answering it;
* ``router/search.py`` — routing a request and searching (exact-search sampling included);
* ``router/outcomes.py`` — publishing outcomes and watermarks on ``search_results``;
* ``router/intake.py`` — the ``search_requests`` consumer (consumer group, so instances share the load):
  redelivery, dead letters, commits, stalls and consumer renewal (with ``router/membership.py``).

Requests come from ``search_requests`` or from the in-process :meth:`RouterService.execute_search`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from canary.core.deployment import ConfigRef, ControlLedger
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics
from canary.observability.metrics import RouterMetrics
from canary.security import INSECURE_WARNING, CommandVerifier, default_verifier
from router.backends.base import SearchBackend
from router.backends.registry import BackendRegistry
from router.control import ControlView
from router.intake import RequestIntake, decode_request
from router.outcomes import Delivery, OutcomePublisher, outcome_partition
from router.requests import SearchRequest
from router.runtime import STOP_STEP_S, bounded, cancel_and_wait, now_ms
from router.search import (
    DEFAULT_DIFF_SAMPLE_RATE,
    DEFAULT_EXACT_TIMEOUT_MS,
    DEFAULT_MAX_DIFF_IN_FLIGHT,
    DEFAULT_MAX_EXACT_IN_FLIGHT,
    DEFAULT_MAX_MIRROR_IN_FLIGHT,
    DEFAULT_RECALL_SAMPLE_RATE,
    SHADOW_SUFFIX,
    ConfigUsed,
    Searcher,
    recall_sample_rates,
    sampled_for_diff,
    sampled_for_exact,
    sampled_for_mirror,
)
from router.stats import RouterStats

log = logging.getLogger("canary.router")

# What callers and tests import from here (the router's public face); each lives in the module of its job.
__all__ = [
    "DEFAULT_DIFF_SAMPLE_RATE",
    "DEFAULT_EXACT_TIMEOUT_MS",
    "DEFAULT_MAX_EXACT_IN_FLIGHT",
    "DEFAULT_RECALL_SAMPLE_RATE",
    "SHADOW_SUFFIX",
    "STOP_STEP_S",
    "ConfigUsed",
    "Delivery",
    "RouterService",
    "RouterStats",
    "cancel_and_wait",
    "decode_request",
    "now_ms",
    "outcome_partition",
    "sampled_for_diff",
    "sampled_for_exact",
    "sampled_for_mirror",
]


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
        diff_sample_rate: float = DEFAULT_DIFF_SAMPLE_RATE,
        max_diff_in_flight: int = DEFAULT_MAX_DIFF_IN_FLIGHT,
        max_mirror_in_flight: int = DEFAULT_MAX_MIRROR_IN_FLIGHT,
    ) -> None:
        rates = recall_sample_rates(recall_sample_rate)
        self.bootstrap = bootstrap
        self.topics = topics
        self.backend = backend  # the operator's: serves every preset whose backend is bundled (or unset)
        self.backends = BackendRegistry(backend)  # a preset's allow-listed backend section -> its backend
        self.router_id = router_id or f"router-{uuid.uuid4().hex[:8]}"
        self.group_id = group_id or f"{topics.prefix}canary-router"
        self.consume_requests = consume_requests
        self.ledger = ControlLedger(last_good=initial_last_good)
        self.stats = RouterStats()
        self.metrics = metrics or RouterMetrics(self.router_id)
        self._loops: list[asyncio.Task[None]] = []
        self._producer: HealingProducer | None = None
        # Every control record is verified before the ledger sees it (signature, trusted key, expiry, replay,
        # snapshot hash and preset validity); None = the verifier the process settings describe.
        self.verifier = verifier if verifier is not None else default_verifier(topics.control)
        # Event time of this router's outcomes and watermarks (a test hook may shift it: clock skew).
        self.outcomes = OutcomePublisher(
            self.router_id,
            topics,
            self._need_producer,
            clock or now_ms,
            self.stats,
            self.metrics,
            watermark_interval_ms,
        )
        self.control = ControlView(
            bootstrap,
            topics,
            self.router_id,
            self.ledger,
            self.verifier,
            self._need_producer,
            self._intake_status,
            self.stats,
            self.metrics,
            control_stale_after_s,
            heartbeat_seconds,
        )
        self.searcher = Searcher(
            self.router_id,
            self.ledger,
            self.backends,
            self.outcomes,
            lambda: self.control.stale,
            self.stats,
            self.metrics,
            search_timeout_ms,
            rates,
            max_exact_in_flight,
            exact_timeout_ms,
            diff_sample_rate,
            max_diff_in_flight,
            max_mirror_in_flight,
        )
        self.intake = RequestIntake(
            bootstrap,
            topics,
            self.group_id,
            self.router_id,
            self.ledger,
            self.searcher,
            self.outcomes,
            self._need_producer,
            self.control.caught_up,
            lambda: self.control.publish_state(self.ledger.last_command_id, heartbeat=True),
            self.failure,
            self.stats,
            self.metrics,
            max_in_flight,
            reply,
        )
        self.metrics.bind(
            control_lag=self.control.freshness.lag,
            failsafe=lambda: float(self.control.stale),
            in_flight=self.intake.in_flight,
        )
        self.metrics.intake_stalled.set_function(lambda: float(self.intake.group.stall is not None))
        self.started = False

    def _need_producer(self) -> HealingProducer:
        assert self._producer is not None
        return self._producer

    def _intake_status(self) -> tuple[tuple[int, ...] | None, str | None]:
        partitions, stalled = self.intake.status()
        return (partitions if self.consume_requests else None), stalled

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.verifier.insecure:
            for _ in range(3):
                log.warning("router %s: %s", self.router_id, INSECURE_WARNING)
        # Replaced in-process when a delivery fails (after a broker restart the old one's sequence numbers
        # are refused for good); what it did not deliver fails back to the intake and is sent again.
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
        await self.control.open()  # read to its end, then the first state record
        await self.outcomes.open()
        await self.outcomes.send_watermarks("start")  # announces this producer to every windows-stage partition
        self._loops.append(asyncio.create_task(self.outcomes.watermark_loop(), name=f"{self.router_id}-watermarks"))
        self._loops.append(asyncio.create_task(self.control.loop(), name=f"{self.router_id}-control"))
        self._loops.append(asyncio.create_task(self.control.heartbeat_loop(), name=f"{self.router_id}-heartbeat"))
        if self.consume_requests:
            await self.intake.start()
        self.started = True

    async def _bounded(self, what: str, step: Any) -> bool:
        """One step of a stop, given up after STOP_STEP_S (the broker may be down): True if it finished."""
        return await bounded(self.router_id, what, step)

    async def stop(self) -> None:
        """Stop cleanly when the broker answers, promptly when it does not: every step that waits for the
        broker is bounded. What is not acknowledged by then is not committed, so it is consumed again."""
        intake = self.intake
        await cancel_and_wait([*self._loops, *intake.loops, *intake.redeliveries], STOP_STEP_S, self.router_id)
        if intake.tasks:
            _, pending = await asyncio.wait(set(intake.tasks), timeout=STOP_STEP_S)
            for task in pending:
                task.cancel()
        if self.searcher.exact_tasks:  # sampled outcomes still waiting for their exact search (bounded by its timeout)
            _, pending = await asyncio.wait(set(self.searcher.exact_tasks), timeout=STOP_STEP_S)
            for task in pending:
                task.cancel()  # not delivered, so not committed: consumed again after a restart
        # Acks mark offsets done; then the last commit covers them.
        if self._producer is not None and await self._bounded("flushing outcomes", self._producer.flush()):
            # A clean exit leaves the windows stage's live set at once.
            await self._bounded("the stop watermark", self.outcomes.send_watermarks("stop"))
            await self._bounded("flushing the stop watermark", self._producer.flush())
        await intake.close()
        if self.control.consumer is not None:
            await self._bounded("closing the control reader", self.control.consumer.stop())
        if self._producer is not None:
            await self._bounded("closing the producer", self._producer.stop())
        await self._bounded("closing the HTTP backends", self.backends.close())
        self.searcher.close()

    async def __aenter__(self) -> RouterService:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def failure(self) -> BaseException | None:
        """The error of an essential loop that died (the process should exit non-zero with it)."""
        for loop in [*self._loops, *self.intake.loops]:
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
            assigned = sorted(tp.partition for tp in self.intake.group.owned)
            checks["assigned"] = (bool(assigned), f"{self.topics.search_requests} partitions {assigned}")
            stall = self.intake.group.stall
            checks["consuming"] = (stall is None, "taking requests" if stall is None else stall.reason)
        lag = self.control.freshness.lag()
        checks["control_fresh"] = (self.started and not self.control.stale, f"control view confirmed {lag:.1f} s ago")
        failed = self.failure()
        replacing = self._producer is not None and self._producer.replacing
        redeliveries = self.intake.redeliveries
        checks["producer"] = (
            failed is None and not replacing and not redeliveries,
            f"failed: {failed!r}"
            if failed
            else "being replaced after a failed delivery"
            if replacing
            else f"{len(redeliveries)} outcome(s) awaiting redelivery",
        )
        return checks

    # -- the public API; everything else is asked of the part that owns it (control, searcher, intake) -----
    def route(self, request: SearchRequest) -> tuple[ConfigRef, ConfigUsed]:
        """Pick the arm for a request from the state as it is right now (one or several candidates)."""
        return self.searcher.route(request)

    async def execute_search(
        self,
        query: str,
        collection_name: str,
        user_id: str | None = None,
        relevant_ids: list[str] | None = None,
        request_id: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """The spec's in-process API (router.search.Searcher.execute_search); ``attributes`` are what rings
        may target besides the user id (e.g. ``{"tenant": "acme"}``)."""
        return await self.searcher.execute_search(
            query, collection_name, user_id, relevant_ids, request_id, attributes=attributes
        )
