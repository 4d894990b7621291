"""The router's view of the control topic and what it says back on the state topic.

Every router instance reads the whole (single-partition) control topic itself, without a consumer group,
and folds it through the shared :class:`ControlLedger` (canary.control: verify, then apply): all instances
converge on the same state, and a rollback stops candidate traffic on each of them as soon as its control
fetch returns (≈100 ms). A view the broker has not confirmed for ``stale_after_s`` is stale: the router
then fails safe to last_good. Each applied command is answered by a state record; heartbeats repeat the
state (and any answer the broker did not take).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.structs import ConsumerRecord

from canary.control import ControlFold, Freshness, catch_up
from canary.core.deployment import ControlLedger
from canary.core.models import RouterState
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics
from canary.observability.metrics import RouterMetrics
from canary.security import CommandVerifier
from router.outcomes import delivery_log
from router.runtime import now_ms
from router.stats import RouterStats

log = logging.getLogger("canary.router")
# A flood of rejected control records (anyone with Write on the topic can append them) must not flood the
# log: rate-limited like the delivery logger.
control_log = logging.getLogger("canary.router.control")

# What the request intake reports for the state record: its partitions (None: it takes no requests from
# Kafka) and why it is not taking requests (None: it is).
IntakeStatus = Callable[[], tuple[tuple[int, ...] | None, str | None]]


class ControlView:
    """Reads and applies the control topic into ``ledger``, keeps its freshness, publishes router state."""

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        router_id: str,
        ledger: ControlLedger,
        verifier: CommandVerifier,
        producer: Callable[[], HealingProducer],
        intake_status: IntakeStatus,
        stats: RouterStats,
        metrics: RouterMetrics,
        stale_after_s: float,
        heartbeat_s: float,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.router_id = router_id
        self.ledger = ledger
        self._producer = producer
        self._intake_status = intake_status
        self.stats = stats
        self.metrics = metrics
        self.freshness = Freshness(
            stale_after_s,
            lambda problem: log.warning("%s: cannot read or confirm the control topic (%s)", self.router_id, problem),
        )
        self._failsafe_logged = False
        self.fold = ControlFold(verifier, ledger, who=router_id, rejected_log=control_log, error_log=log)
        self.consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()
        self._heartbeat_s = heartbeat_s
        self._seq = 0
        self._state_pending: str | None = None  # a transition whose state record failed: republished

    async def open(self) -> None:
        """Read the control topic to its end (applied without answering: old news), then say so."""
        self.consumer = calm(
            AIOKafkaConsumer(
                **client_kwargs(self.bootstrap), enable_auto_commit=False, fetch_max_wait_ms=50, group_id=None
            )
        )
        await self.consumer.start()
        control_tp = TopicPartition(self.topics.control, 0)
        self.consumer.assign([control_tp])
        await self.consumer.seek_to_beginning(control_tp)
        end = (await self.consumer.end_offsets([control_tp]))[control_tp]
        await catch_up(self.consumer, control_tp, end, lambda record: self._apply(record, publish=False))
        self.caught_up.set()
        self.freshness.confirmed()  # read to the end just now
        await self.publish_state(None)

    # -- freshness --------------------------------------------------------------------------------------------
    @property
    def stale(self) -> bool:
        return self.freshness.stale

    @property
    def failsafe_reason(self) -> str | None:
        """Why candidate traffic is held back right now, or None (view fresh, or no canary running)."""
        if not any(d.status == "running" for d in self.ledger.live) or not self.stale:
            return None
        return (
            f"control topic view unconfirmed for over {self.freshness.stale_after_s:.0f} s"
            f" ({self.freshness.problem or 'no progress'}); all traffic to last_good"
        )

    async def loop(self) -> None:
        assert self.consumer is not None
        tp = TopicPartition(self.topics.control, 0)
        checked = 0.0
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=200)
            except AIOKafkaError as exc:
                # Not fatal: an ACL can be restored, a broker can come back. Until this router has read the
                # control topic to its end again it fails safe (see _check_fresh).
                batch = {}
                self._note_problem(exc)
                await asyncio.sleep(0.5)
            for records in batch.values():
                for record in records:
                    transition_cmd = self._apply(record, publish=True)
                    if transition_cmd is not None:
                        await self._publish_transition(transition_cmd)
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                await self._check_fresh(tp)

    async def _check_fresh(self, tp: TopicPartition) -> None:
        """The view of the control topic is fresh when the broker confirms we have read to its end. A fetch
        that fails (broker down, Read ACL revoked) only shows as no confirmation: after
        ``stale_after_s`` the router sends nothing to the candidate (fail safe to last_good)."""
        assert self.consumer is not None
        was_stale = self.stale
        failures = self.freshness.failures
        if await self.freshness.check(self.consumer, tp) and was_stale:
            log.warning("%s: control topic view is fresh again; candidate traffic resumes", self.router_id)
        self.stats.control_check_failures += self.freshness.failures - failures
        stale = self.stale
        if stale and not self._failsafe_logged:
            log.error(
                "%s: FAIL-SAFE — no confirmed control-topic read for %.0f s (%s); all traffic goes to last_good",
                self.router_id,
                self.freshness.stale_after_s,
                self.freshness.problem or "no progress",
            )
        if stale != self._failsafe_logged:
            # Entering or leaving fail-safe is news for operators (canary status): say it on the state topic.
            with contextlib.suppress(Exception):
                await self.publish_state(self.ledger.last_command_id, heartbeat=True)
        self._failsafe_logged = stale

    def _note_problem(self, exc: BaseException) -> None:
        self.stats.control_check_failures += 1
        self.freshness.note_problem(exc)

    # -- applying commands ------------------------------------------------------------------------------------
    def _apply(self, record: ConsumerRecord[bytes, bytes], publish: bool) -> str | None:
        outcome = self.fold.apply(record.value, record.offset, record.timestamp)  # total: never raises
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

    # -- state ------------------------------------------------------------------------------------------------
    def _delivery_failed(self) -> None:
        # The producer replaces itself after a failed delivery (canary.kafka.producer); the caller sends again.
        self.metrics.publish_errors.labels("state").inc()

    async def _publish_transition(self, answers: str) -> None:
        """The state answering a command. If the broker does not take it, it is published again by the
        heartbeat loop (never skipped: operators wait for it and the audit records it)."""
        try:
            await self.publish_state(answers)
            self._state_pending = None
        except Exception as exc:
            self._state_pending = answers
            self._delivery_failed()
            delivery_log.error(
                "%s: state answering %s not delivered (%s: %s); publishing it again",
                self.router_id,
                answers,
                type(exc).__name__,
                exc,
            )

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if self._state_pending is not None:
                await self._publish_transition(self._state_pending)
                continue
            try:
                await self.publish_state(self.ledger.last_command_id, heartbeat=True)
            except Exception as exc:  # the broker is down or electing: the next beat tries again
                self._delivery_failed()
                delivery_log.error("%s: heartbeat not delivered (%s: %s)", self.router_id, type(exc).__name__, exc)

    def current_state(self, answers: str | None, heartbeat: bool = False) -> RouterState:
        dep = self.ledger.current or self.ledger.latest
        last = self.ledger.last_good
        status = dep.status if dep is not None else "idle"
        partitions, stalled = self._intake_status()
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
            request_partitions=partitions,
            requests_stalled=stalled,
        )

    async def publish_state(self, answers: str | None, heartbeat: bool = False) -> None:
        producer = self._producer()
        self._seq += 1
        state = self.current_state(answers, heartbeat)
        await producer.send_and_wait(
            self.topics.state, json.dumps(state.to_dict()).encode(), key=self.router_id.encode()
        )
