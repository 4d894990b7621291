"""The worker's view of deployments, folded from the control topic by the shared ControlLedger.

Read without a consumer group from offset 0, so every worker knows every deployment and, after a restart,
knows which rollbacks were already issued before it judges a single window (exactly-once rollback).
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from canary.core.aggregations import WindowAggregator
from canary.core.deployment import ControlLedger, Deployment
from canary.core.models import ControlCommand, WindowKey
from canary.core.slo import SLORule, default_rules, rules_from_slo_section
from canary.errors import CanaryError

log = logging.getLogger("canary.streams.registry")


def rules_for(dep: Deployment | None) -> list[SLORule]:
    if dep is None:
        return default_rules()
    slo = dep.candidate.snapshot.get("slo")
    try:
        return rules_from_slo_section(slo) if isinstance(slo, dict) else default_rules()
    except CanaryError as exc:
        # Presets are validated before a start command is issued; a bad snapshot here means someone
        # wrote to the control topic by hand. Judge with the defaults rather than not at all.
        log.error("deployment %s: invalid slo section (%s); using default rules", dep.deployment_id, exc)
        return default_rules()


class DeploymentRegistry:
    def __init__(self, bootstrap: str, control_topic: str) -> None:
        self.bootstrap = bootstrap
        self.control_topic = control_topic
        self.ledger = ControlLedger()
        self.caught_up = asyncio.Event()
        self.invalid_commands = 0
        self._consumer: AIOKafkaConsumer | None = None

    def deployment(self, deployment_id: str | None) -> Deployment | None:
        return self.ledger.deployments.get(deployment_id) if deployment_id else None

    def rules(self, deployment_id: str | None) -> list[SLORule]:
        return rules_for(self.deployment(deployment_id))

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        """Per-request thresholds for ``slo_violations`` come from the deployment's own SLO."""
        latency, recall = 1200.0, 0.30
        for rule in self.rules(key.deployment_id):
            if rule.metric == "p95_ms":
                latency = rule.threshold
            elif rule.metric == "recall_at_10":
                recall = rule.threshold
        return WindowAggregator(latency_threshold_ms=latency, recall_threshold=recall)

    def apply_raw(self, raw: bytes | None) -> None:
        try:
            self.ledger.apply(ControlCommand.from_dict(json.loads(raw or b"null")))
        except Exception as exc:  # poison: skip, never stop the registry
            self.invalid_commands += 1
            log.warning("ignoring invalid control record: %s", exc)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, fetch_max_wait_ms=50)
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
                        self.apply_raw(record.value)
                if not self.caught_up.is_set() and await consumer.position(tp) >= end:
                    self.caught_up.set()
        finally:
            await consumer.stop()
