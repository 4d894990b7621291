"""The worker's view of deployments, folded from the control topic by the shared ControlLedger.

Read without a consumer group from offset 0, so every worker knows every deployment and, after a restart,
knows which rollbacks were already issued before it judges a single window (exactly-once rollback).
Every record is verified first (``canary.security``); what became of each offset — accepted and applied,
accepted and refused by the ledger, or rejected with a reason — is kept for the audit agent, which
audits exactly these outcomes (:meth:`DeploymentRegistry.outcome_at`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from canary.core.aggregations import WindowAggregator
from canary.core.deployment import ControlLedger, Deployment
from canary.core.models import WindowKey
from canary.core.slo import SLOPolicy, SLORule
from canary.kafka.clients import Cluster, client_kwargs
from canary.pipeline.policies import PolicyBook
from canary.security import CommandVerifier, Verdict, default_verifier

log = logging.getLogger("canary.streams.registry")


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """What the worker made of one control record: the verification verdict and, if accepted, whether the
    ledger applied it (a refused command — e.g. a start while another canary runs — carries the note)."""

    offset: int | None
    verdict: Verdict
    applied: bool
    note: str
    appended_at_ms: int | None = None

    @property
    def error_message(self) -> str | None:
        if not self.verdict.accepted:
            return self.verdict.message
        return None if self.applied else f"refused: {self.note}"


class DeploymentRegistry:
    def __init__(self, bootstrap: Cluster, control_topic: str, verifier: CommandVerifier | None = None) -> None:
        self.bootstrap = bootstrap
        self.control_topic = control_topic
        self.ledger = ControlLedger()
        self.caught_up = asyncio.Event()
        self.invalid_commands = 0
        self.policies = PolicyBook(lambda: self.ledger)
        self.verifier = verifier if verifier is not None else default_verifier()
        self.outcomes: dict[int, ControlOutcome] = {}
        self.next_offset = 0  # every control offset below this one has been folded
        self._progress = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

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
        verdict = self.verifier.check(raw, timestamp_ms)
        if not verdict.accepted or verdict.command is None:
            if verdict.reason == "malformed":
                self.invalid_commands += 1
            log.warning("REJECTED control record at offset %s: %s", offset, verdict.message)
            outcome = ControlOutcome(offset, verdict, False, verdict.message, timestamp_ms)
        else:
            transition = self.ledger.apply(verdict.command)
            outcome = ControlOutcome(offset, verdict, transition.applied, transition.note, timestamp_ms)
        if offset is not None:
            self.outcomes[offset] = outcome
            self._advance(offset + 1)
        return outcome

    def _advance(self, position: int) -> None:
        if position > self.next_offset:
            self.next_offset = position
            self._progress.set()
            self._progress = asyncio.Event()

    async def outcome_at(self, offset: int) -> ControlOutcome | None:
        """The outcome of the control record at ``offset``, once the fold has passed it (None for an
        offset that holds no record)."""
        while self.next_offset <= offset:
            await self._progress.wait()
        return self.outcomes.get(offset)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(**client_kwargs(self.bootstrap), group_id=None, fetch_max_wait_ms=50)
        self._consumer = consumer
        await consumer.start()
        try:
            tp = TopicPartition(self.control_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self.apply_raw(record.value, record.offset, record.timestamp)
                position = await consumer.position(tp)
                self._advance(position)  # also past offsets that hold no record (transaction markers)
                if not self.caught_up.is_set() and position >= end:
                    self.caught_up.set()
        finally:
            await consumer.stop()
