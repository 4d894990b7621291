"""Bake after promotion on the real broker (issue #23, item 3): a promoted config keeps being judged with its
absolute rules for the bake's duration, and a breach reverts the promotion — the previous last_good serves
again — with a signed rollback the ledger applies to the promoted deployment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec.structs
import pytest

from canary.core.bake import revert_command_id
from canary.core.deployment import snapshot_hash
from canary.ops.commands import stop_canary
from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    security,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka


@pytest.fixture
def worker(base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "bake", tmp_path) as proc:
        yield proc


async def test_a_promoted_config_that_degrades_is_reverted_within_its_bake(worker: WorkerProcess) -> None:
    backend = make_backend()
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.5)
    snapshot = {**cmd.candidate_config, "bake": {"duration_s": 120.0}}
    cmd = msgspec.structs.replace(cmd, candidate_config=snapshot, candidate_config_hash=snapshot_hash(snapshot))
    dep = cmd.deployment_id
    reverted_after: float | None = None
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        while dep not in router.ledger.deployments:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=60)
        task = asyncio.create_task(load.run(100))
        await asyncio.sleep(6)
        await send_command(worker.bootstrap, worker.topics, end_command(dep, "promote"))
        while router.ledger.deployments[dep].status != "promoted":
            await asyncio.sleep(0.05)
        assert router.ledger.last_good is not None and router.ledger.last_good.name == "candidate_high_recall"
        await asyncio.sleep(6)  # healthy at 100 %: the bake judges and passes
        backend.faults["candidate_high_recall"] = Fault(added_latency_ms=1500)  # degrades after promotion
        degraded = time.monotonic()
        while not task.done():
            await asyncio.sleep(0.1)
            if router.ledger.deployments[dep].status == "rolled_back":
                reverted_after = time.monotonic() - degraded
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
    finally:
        await router.stop()
    control = [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["deployment_id"] == dep]
    reverts = [c for c in control if c["type"] == "rollback"]
    print(f"promoted config reverted {reverted_after} s after it degraded")
    assert [c["command_id"] for c in reverts] == [revert_command_id(dep)], worker.log_tail()
    assert reverts[0]["issued_by"] == "slo-agent"
    assert reverts[0]["reason"].startswith("bake: SLO violation: p95_ms failed for 2 consecutive buckets")
    assert reverts[0]["reason"].endswith("last_good serves again")
    assert router.ledger.last_good is not None and router.ledger.last_good.name == "last_good"
    assert reverted_after is not None and reverted_after < 40
    audit = worker.audit_log.read_text()
    assert revert_command_id(dep) in audit


async def test_an_operator_reverts_a_baking_promotion(worker: WorkerProcess) -> None:
    """``canary stop --rollback`` with no canary running reverts the promotion still in its bake."""
    router = RouterService(
        worker.bootstrap, worker.topics, make_backend(), preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.2)
    snapshot = {**cmd.candidate_config, "bake": {"duration_s": 300.0}}
    cmd = msgspec.structs.replace(cmd, candidate_config=snapshot, candidate_config_hash=snapshot_hash(snapshot))
    dep = cmd.deployment_id
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        while dep not in router.ledger.deployments:
            await asyncio.sleep(0.05)
        await send_command(worker.bootstrap, worker.topics, end_command(dep, "promote"))
        while router.ledger.deployments[dep].status != "promoted":
            await asyncio.sleep(0.05)
        ack = await stop_canary(
            worker.bootstrap, worker.topics, promote=False, security=security(), issued_by="cli:alice", timeout=10
        )
        assert ack.command.deployment_id == dep and ack.command.type == "rollback"
        assert router.router_id in ack.acked_by
        assert router.ledger.deployments[dep].status == "rolled_back"
        assert router.ledger.last_good is not None and router.ledger.last_good.name == "last_good"
    finally:
        await router.stop()
