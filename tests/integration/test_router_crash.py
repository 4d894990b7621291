"""Issue #19 acceptance on the real broker: both routers (real ``canary router`` processes) SIGKILLed mid-canary
and restarted. Every ``search_requests`` partition is served again within 30 s, every request has its
outcome after the backlog, both routers say they take requests (/readyz, ``canary status``).

The longer measurement (with the worker, ``canary load`` and the bundled backend) is
``bench/bench_router_crash.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import send_command, start_command
from devtools.services import Service, probe
from router.service import now_ms
from tests.integration.test_observability import cli
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.kafka

SERVED_AGAIN_WITHIN_S = 30.0


async def _ready(routers: list[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(r.ready() for r in routers):
        assert time.monotonic() < deadline, "\n".join(r.tail() for r in routers)
        assert all(r.running for r in routers), "\n".join(r.tail() for r in routers)
        await asyncio.sleep(0.5)


async def test_both_routers_killed_mid_canary_serve_every_partition_again_and_answer_every_request(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    bootstrap = settings.effective_bootstrap
    routers = [
        Service("router", f"crash-router-{i}", bootstrap, topics.prefix, tmp_path / f"router-{i}.log") for i in range(2)
    ]
    for router in routers:
        router.start()
    try:
        await _ready(routers, 90)
        cmd = start_command("candidate_high_recall", weight=0.2)
        await send_command(bootstrap, topics, cmd)
        async with Traffic(bootstrap, topics, qps=50) as traffic:
            await asyncio.sleep(6)  # mid-canary, requests in flight on every partition
            for router in routers:
                router.kill()  # returns once the process is gone
            killed_ms = now_ms()  # any outcome stamped later comes from a restarted router
            restarted = time.monotonic()
            for router in routers:
                router.start()
            served: dict[int, float] = {}
            while len(served) < 3 and time.monotonic() - restarted < SERVED_AGAIN_WITHIN_S + 5:
                await asyncio.sleep(0.25)
                for p in range(3):
                    at = traffic.served_after(p, killed_ms)
                    if at is not None:
                        served.setdefault(p, at - restarted)
            await asyncio.sleep(5)  # steady traffic after the takeover
            traffic.stop_sending()
            drained = await traffic.drained(60)
            unanswered = traffic.unanswered()
            sent = len(traffic.sent)
        await _ready(routers, 20)
        readiness = [probe(r.port, "/readyz")[1]["checks"]["consuming"] for r in routers]
        status = await asyncio.to_thread(cli, settings, "status", "--json")
        assert all(r.running for r in routers), "\n".join(r.tail() for r in routers)
    finally:
        for router in routers:
            if router.running:
                router.terminate()
    print(f"served again after the restart (s): {served}; {sent} requests, {unanswered} without an outcome")
    assert sorted(served) == [0, 1, 2], f"partitions never served again: {sorted({0, 1, 2} - set(served))}"
    assert max(served.values()) <= SERVED_AGAIN_WITHIN_S, served
    assert drained and unanswered == 0, f"{unanswered} of {sent} requests without an outcome"
    assert readiness == [{"ok": True, "detail": "taking requests"}] * 2
    payload = json.loads(status.stdout)
    live = {r["router_id"]: r for r in payload["routers"] if r["live"]}
    assert set(live) == {"crash-router-0", "crash-router-1"}
    assert sorted(p for r in live.values() for p in r["request_partitions"]) == [0, 1, 2]
    assert all(r["requests_stalled"] is None for r in live.values())
    assert payload["deployment_id"] == cmd.deployment_id and payload["status"] == "running"
