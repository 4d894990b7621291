"""The worker's view of deployments, folded from the control topic by the shared ControlLedger.

Read without a consumer group from offset 0, so every worker knows every deployment and, after a restart,
knows which rollbacks were already issued before it judges a single window (exactly-once rollback).
Every record is verified, then folded, by :class:`canary.control.ControlFold`; what became of each offset —
accepted and applied, accepted and refused by the ledger, or rejected with a reason — is kept for the audit
agent, which audits exactly these outcomes (:meth:`DeploymentRegistry.outcome_at`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from canary.control import ControlFold, ControlOutcome, Freshness, slimmed
from canary.core.aggregations import WindowAggregator
from canary.core.deployment import ControlLedger, Deployment
from canary.core.models import WindowKey
from canary.core.slo import SLOPolicy, SLORule
from canary.kafka.backoff import calm
from canary.kafka.clients import Cluster, client_kwargs
from canary.observability.metrics import WorkerMetrics
from canary.pipeline.policies import PolicyBook
from canary.security import CommandVerifier, default_verifier

log = logging.getLogger("canary.streams.registry")
rejected_log = logging.getLogger("canary.streams.rejected.control")  # rate-limited (a flood is one line per 5 s)
OUTCOMES_KEPT = 10_000
__all__ = ["OUTCOMES_KEPT", "DeploymentRegistry"]


class DeploymentRegistry:
    def __init__(
        self,
        bootstrap: Cluster,
        control_topic: str,
        verifier: CommandVerifier | None = None,
        metrics: WorkerMetrics | None = None,
        stale_after_s: float = 5.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.control_topic = control_topic
        self.verifier = verifier if verifier is not None else default_verifier(control_topic)
        self.fold = ControlFold(self.verifier, rejected_log=rejected_log, error_log=log)
        self.caught_up = asyncio.Event()
        self.policies = PolicyBook(lambda: self.ledger)
        self.outcomes: dict[int, ControlOutcome] = {}
        self.next_offset = 0  # every control offset below this one has been folded
        self._progress = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.metrics = metrics or WorkerMetrics()
        self.freshness = Freshness(
            stale_after_s, lambda problem: log.warning("cannot confirm the control topic's end (%s)", problem)
        )

    @property
    def ledger(self) -> ControlLedger:
        return self.fold.ledger

    @ledger.setter
    def ledger(self, ledger: ControlLedger) -> None:
        self.fold.ledger = ledger

    @property
    def invalid_commands(self) -> int:
        return self.fold.invalid

    @property
    def stale_after_s(self) -> float:
        return self.freshness.stale_after_s

    def deployment(self, deployment_id: str | None) -> Deployment | None:
        return self.ledger.deployments.get(deployment_id) if deployment_id else None

    def policy(self, deployment_id: str | None) -> SLOPolicy:
        return self.policies.policy(deployment_id)

    def rules(self, deployment_id: str | None) -> tuple[SLORule, ...]:
        return self.policies.rules(deployment_id)

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        """Per-request thresholds (``slo_violations``, exceedance counts) come from the deployment's policy."""
        return self.policies.aggregator_for(key)

    def apply_raw(
        self, raw: bytes | None, offset: int | None = None, timestamp_ms: int | None = None
    ) -> ControlOutcome:
        """Verify and fold one control record (appended at ``timestamp_ms``); never raises on its content."""
        outcome = self.fold.apply(raw, offset, timestamp_ms)
        verdict = outcome.verdict
        if verdict.command is None or not verdict.accepted:
            self.metrics.commands_rejected.labels(verdict.reason or "malformed").inc()
        else:
            counter = self.metrics.commands_applied if outcome.applied else self.metrics.commands_refused
            counter.labels(verdict.command.type).inc()
        if offset is not None:
            self._remember(offset, outcome)
            self._advance(offset + 1)
        return outcome

    def _remember(self, offset: int, outcome: ControlOutcome) -> None:
        """Kept for the audit agent, which takes each offset once (:meth:`outcome_at`). Bounded in count, and a
        rejected command is kept slim (:func:`slim_command`): only the worker that holds the control partition
        in the Faust group audits, and a flood of junk records — up to 1 MB each — must not grow any worker's
        memory (10,000 of them once grew the worker by 100 MB, for good). An offset asked for after it was
        evicted is verified again (:meth:`recheck`)."""
        self.outcomes[offset] = slimmed(outcome)
        while len(self.outcomes) > OUTCOMES_KEPT:
            del self.outcomes[next(iter(self.outcomes))]

    def recheck(self, offset: int, raw: bytes | None, appended_at_ms: int | None) -> ControlOutcome:
        """The outcome of a record the registry no longer keeps (the audit agent fell more than
        OUTCOMES_KEPT records behind): verified again on its own, and applied when the ledger holds its id."""
        verdict = self.verifier.check(raw, appended_at_ms, record=False)
        if verdict.accepted and verdict.command is not None and verdict.command.command_id in self.ledger.applied_ids:
            return ControlOutcome(offset, verdict, True, "applied (outcome re-verified for the audit)", appended_at_ms)
        return slimmed(ControlOutcome(offset, verdict, False, "not folded by the registry", appended_at_ms))

    def _advance(self, position: int) -> None:
        if position > self.next_offset:
            self.next_offset = position
            self._progress.set()
            self._progress = asyncio.Event()

    async def outcome_at(self, offset: int) -> ControlOutcome | None:
        """The outcome of the control record at ``offset``, once the fold has passed it (None for an
        offset that holds no record, or one no longer kept). Handed out once: its memory goes with it."""
        while self.next_offset <= offset:
            await self._progress.wait()
        return self.outcomes.pop(offset, None)

    def control_lag(self) -> float:
        """Seconds since the broker last confirmed this registry had read the control topic to its end."""
        return self.freshness.lag()

    async def run(self) -> None:
        consumer = calm(AIOKafkaConsumer(**client_kwargs(self.bootstrap), group_id=None, fetch_max_wait_ms=500))
        self._consumer = consumer
        await consumer.start()
        try:
            tp = TopicPartition(self.control_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            checked = 0.0
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        try:
                            self.apply_raw(record.value, record.offset, record.timestamp)
                        except Exception as exc:  # apply_raw never raises; if it ever did, go on past it
                            log.exception("control record at offset %s quarantined: %r", record.offset, exc)
                            self._advance(record.offset + 1)
                position = await consumer.position(tp)
                self._advance(position)  # also past offsets that hold no record (transaction markers)
                if not self.caught_up.is_set() and position >= end:
                    self.caught_up.set()
                    self.freshness.confirmed()
                if time.monotonic() - checked >= 1.0:
                    checked = time.monotonic()
                    await self.freshness.check(consumer, tp)
        finally:
            await consumer.stop()
