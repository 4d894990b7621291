"""Alerts from a live worker (issue #12): a local HTTP receiver gets the start and the rollback with a
valid signature, every attempt is audited, and with the receiver down the rollback comes as fast."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from canary.alerts import verify
from canary.alerts.payloads import SIGNATURE_HEADER, TIMESTAMP_HEADER
from canary.core.models import parse_time
from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings
from devtools.harness import (
    ROOT,
    LoadGenerator,
    WorkerProcess,
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
SECRET = "alert-secret-for-tests"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((time.time(), dict(request.headers), await request.read()))
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int, web.AppRunner]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield rec, port, runner
    finally:
        await runner.cleanup()


@pytest.fixture
def alerting_worker(
    kafka_bootstrap: str, tmp_path: Path, receiver: tuple[Receiver, int, web.AppRunner], base_settings: Settings
) -> Iterator[tuple[WorkerProcess, Topics]]:
    _, port, _ = receiver
    project = tmp_path / "project"
    shutil.copytree(ROOT / "configs", project / "configs")
    (project / "configs" / "environments" / "alerting.yaml").write_text(
        "description: alerts test\n"
        "alerts_allow_private: true  # the receiver listens on 127.0.0.1\n"
        "alerts:\n"
        f"  - url: http://127.0.0.1:{port}/alerts\n"
        "    format: json\n"
        "    secret_env: CANARY_ALERT_TEST_SECRET\n"
        "    timeout_s: 1\n"
    )
    base = Topics(f"alert{uuid.uuid4().hex[:6]}.")
    env_topics = Topics(f"{base.prefix}alerting.")
    ensure_topics(kafka_bootstrap, env_topics)
    worker = WorkerProcess(
        kafka_bootstrap,
        base,
        tmp_path / "audit.log",
        tmp_path / "data",
        tmp_path / "worker.log",
        extra_env={
            "CANARY_ENV": "alerting",
            "CANARY_PROJECT_ROOT": str(project),
            "CANARY_ALERT_TEST_SECRET": SECRET,
        },
    )
    worker.start()
    try:
        yield worker, env_topics
    finally:
        worker.stop()
        print(worker.log_tail(30))


async def _failing_canary(bootstrap: str, topics: Topics) -> dict[str, Any]:
    backend = make_backend({"candidate_slow": Fault(added_latency_ms=1500)})
    # Every process of the environment verifies and signs for it (the worker runs with CANARY_ENV=alerting).
    verifier = security(environment="alerting").verifier(topics.control)
    router = RouterService(
        bootstrap, topics, backend, preset_ref("last_good"), consume_requests=False, verifier=verifier
    )
    await router.start()
    cmd = start_command("candidate_slow", weight=0.3)
    dep = cmd.deployment_id
    try:
        await send_command(bootstrap, topics, cmd, environment="alerting")
        load = LoadGenerator(router, qps=60)
        task = asyncio.create_task(load.run(60))
        while not task.done():
            await asyncio.sleep(0.1)
            current = router.ledger.deployments.get(dep)
            if current is not None and current.status == "rolled_back":
                task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
    finally:
        await router.stop()
    rollback = next(
        c for c in await read_all(bootstrap, topics.control) if c["deployment_id"] == dep and c["type"] == "rollback"
    )
    window_end = max(parse_time(w["window_end"]) for w in rollback["evidence"]["windows"])
    return {
        "deployment_id": dep,
        "rollback": rollback,
        "decided_after_window_end_ms": rollback["issued_at_ms"] - window_end,
    }


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_alerts_reach_a_local_receiver_signed_and_a_dead_one_does_not_slow_the_rollback(
    alerting_worker: tuple[WorkerProcess, Topics], receiver: tuple[Receiver, int, web.AppRunner]
) -> None:
    worker, topics = alerting_worker
    rec, _, runner = receiver
    first = await _failing_canary(worker.bootstrap, topics)
    deadline = time.monotonic() + 15
    while len({json.loads(b)["kind"] for _, _, b in rec.received}) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    bodies = [json.loads(b) for _, _, b in rec.received]
    kinds = [b["kind"] for b in bodies if b["deployment_id"] == first["deployment_id"]]
    assert kinds == ["start", "rollback"], (bodies, worker.log_tail())
    for _, headers, body in rec.received:
        assert verify(SECRET, int(headers[TIMESTAMP_HEADER]), body, headers[SIGNATURE_HEADER])
    rollback_alert = next(b for b in bodies if b["kind"] == "rollback")
    assert rollback_alert["environment"] == "alerting"
    assert rollback_alert["text"].startswith("[alerting] ROLLED BACK canary")
    assert rollback_alert["command"]["command_id"] == first["rollback"]["command_id"]

    await runner.cleanup()  # the receiver goes down
    second = await _failing_canary(worker.bootstrap, topics)
    print(
        "rollback decided after the triggering window's end: receiver up "
        f"{first['decided_after_window_end_ms']} ms, receiver down {second['decided_after_window_end_ms']} ms"
    )
    # The SLO agent never waits on a webhook: the rollback follows the 2nd failing window as before.
    assert second["decided_after_window_end_ms"] < 3000, second
    await asyncio.sleep(2.0)  # the first failed attempts reach the audit log
    attempts = [e for e in _audit(worker.audit_log) if e["event_type"] == "alert_delivery"]
    ok = [a for a in attempts if a["deployment_id"] == first["deployment_id"]]
    failed = [a for a in attempts if a["deployment_id"] == second["deployment_id"]]
    assert ok and all(a["success"] for a in ok)
    assert failed and not any(a["success"] for a in failed) and all(a["error_message"] for a in failed)
