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
from canary.core.slo import SLOPolicy, SLORule
from canary.pipeline.policies import PolicyBook

log = logging.getLogger("canary.streams.registry")


class DeploymentRegistry:
    def __init__(self, bootstrap: str, control_topic: str) -> None:
        self.bootstrap = bootstrap
        self.control_topic = control_topic
        self.ledger = ControlLedger()
        self.caught_up = asyncio.Event()
        self.invalid_commands = 0
        self.policies = PolicyBook(lambda: self.ledger)
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
