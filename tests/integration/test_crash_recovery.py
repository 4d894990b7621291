"""Crash safety: the worker (windows, SLO and audit agents) is SIGKILLed mid-run and restarted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    make_backend,
    preset_ref,
    read_all,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka


async def _first_failing_window(bootstrap: str, topic: str, dep: str, timeout: float) -> dict[str, Any] | None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    window = json.loads(record.value).get("window") or {}
                    if window.get("deployment_id") == dep and any(
                        v["outcome"] == "fail" for v in window.get("verdicts", [])
                    ):
                        return dict(window)
        return None
    finally:
        await consumer.stop()


def _worker(bootstrap: str, tmp_path: Path) -> WorkerProcess:
    topics = Topics(f"crash{uuid.uuid4().hex[:6]}.")
    ensure_topics(bootstrap, topics)
    return WorkerProcess(
        bootstrap,
        topics,
        tmp_path / "audit.log",
        tmp_path / "data",
        tmp_path / "worker.log",
        instance_id=f"worker-{topics.prefix}",
    )


async def test_worker_killed_after_first_failing_window_still_rolls_back_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    worker = await asyncio.to_thread(_worker, kafka_bootstrap, tmp_path)
    worker.start()
    backend = make_backend({"candidate_slow": Fault(added_latency_ms=1500)})
    router = RouterService(kafka_bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command("candidate_slow", weight=0.2)
    dep = cmd.deployment_id
    try:
        await send_command(kafka_bootstrap, worker.topics, cmd)
        load = LoadGenerator(router, qps=50)
        load_task = asyncio.create_task(load.run(60))
        # Tail the verdicts (re-reading the topic each time is too slow on a busy machine: the second
        # failing window, 5 s later, would come before the kill).
        first_fail = await _first_failing_window(kafka_bootstrap, worker.topics.verdicts, dep, 40)
        assert first_fail is not None, worker.log_tail()
        worker.kill()
        assert not any(c["type"] == "rollback" for c in await read_all(kafka_bootstrap, worker.topics.control))
        await asyncio.sleep(3)  # traffic keeps flowing while the worker is down
        worker.start()
        deadline = time.monotonic() + 60
        while router.ledger.deployments[dep].status != "rolled_back" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert router.ledger.deployments[dep].status == "rolled_back", worker.log_tail()
        # Let the restarted worker run on: redelivered windows must not produce a second rollback.
        await asyncio.sleep(8)
        load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await load.drain()
    finally:
        await router.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
    control = await read_all(kafka_bootstrap, worker.topics.control)
    rollbacks = [c for c in control if c["type"] == "rollback" and c["deployment_id"] == dep]
    assert len(rollbacks) == 1
    assert rollbacks[0]["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    # The first failing window before the crash is part of the evidence: state survived the SIGKILL.
    evidence_ids = [w["window_id"] for w in rollbacks[0]["evidence"]["windows"]]
    assert first_fail["window_id"] in evidence_ids
    # Windows are published once per window_id in the normal path; after a crash a window may be
    # republished, but never with different contents.
    windows = [w for w in await read_all(kafka_bootstrap, worker.topics.windows) if w["deployment_id"] == dep]
    by_id: dict[str, dict[str, object]] = {}
    for w in windows:
        body = {k: v for k, v in w.items() if k not in ("emitted_at", "emitted_at_ms")}
        assert by_id.setdefault(w["window_id"], body) == body


async def test_audit_survives_kill_without_loss_or_duplicates(kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = await asyncio.to_thread(_worker, kafka_bootstrap, tmp_path)
    worker.start()
    routers = [
        RouterService(kafka_bootstrap, worker.topics, make_backend(), preset_ref("last_good"), consume_requests=False)
        for _ in range(2)
    ]
    for r in routers:
        await r.start()
    try:
        # A stream of control commands (each answered by both routers with a state event),
        # with the worker killed in the middle of it.
        for i in range(12):
            cmd = start_command("candidate_high_recall", weight=0.1)
            await send_command(kafka_bootstrap, worker.topics, cmd)
            await asyncio.sleep(0.15)
            await send_command(kafka_bootstrap, worker.topics, end_command(cmd.deployment_id, "abort"))
            await asyncio.sleep(0.15)
            if i == 5:
                await asyncio.sleep(2)
                worker.kill()
            if i == 7:
                worker.start()
        expected_control = {
            f"control:{c['command_id']}" for c in await read_all(kafka_bootstrap, worker.topics.control)
        }
        states = await read_all(kafka_bootstrap, worker.topics.state)
        expected_state = {
            f"state:{s['router_id']}:{s['seq']}:{s['applied_at_ms']}" for s in states if not s.get("heartbeat")
        }
        expected = expected_control | expected_state
        deadline = time.monotonic() + 60
        ids: list[str] = []
        while time.monotonic() < deadline:
            lines = worker.audit_log.read_text().splitlines() if worker.audit_log.exists() else []
            ids = [json.loads(line)["event_id"] for line in lines if line.strip()]
            if set(ids) >= expected:
                break
            await asyncio.sleep(0.5)
    finally:
        for r in routers:
            await r.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
    assert len(expected_control) == 24
    assert len(ids) == len(set(ids)), "duplicate audit lines"
    assert set(ids) == expected, (len(set(ids) - expected), len(expected - set(ids)))
