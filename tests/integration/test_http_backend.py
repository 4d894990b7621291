"""The router on the real broker with an HTTP search backend (issue #14, part 4): a real local HTTP service
(tests/http_service.py) serves a preset whose ``backend`` section is ``{type: http}``; timeouts and 5xx / bad
answers are counted as such in the outcomes; a start command naming an import path is never applied."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.config import Preset
from canary.core.deployment import ConfigRef, snapshot_hash
from canary.core.models import ControlCommand
from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import (
    PRESETS,
    LoadGenerator,
    WorkerProcess,
    end_command,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    read_outcomes,
    send_command,
)
from router.backends.memory import relevant_for
from router.service import RouterService, now_ms
from tests.http_service import SearchService

pytestmark = pytest.mark.kafka


def http_snapshot(name: str, service: SearchService, **spec: Any) -> dict[str, Any]:
    snapshot = PRESETS.get(name).to_dict()
    snapshot["backend"] = {"type": "http", "url": f"{service.url}/search", **spec}
    return Preset.from_snapshot(snapshot).to_dict()  # validated, defaults filled in: what a start carries


def start_with(candidate: dict[str, Any], weight: float) -> ControlCommand:
    return ControlCommand(
        command_id=f"start-{uuid.uuid4().hex[:10]}",
        type="start",
        deployment_id=f"canary_{uuid.uuid4().hex[:8]}",
        candidate_config=candidate,
        candidate_config_hash=snapshot_hash(candidate),
        last_good_config=PRESETS.get("last_good").to_dict(),
        weight=weight,
        reason=None,
        evidence=None,
        issued_by="cli:test",
        issued_at_ms=now_ms(),
    )


async def _produce(bootstrap: str, topics: Topics, bodies: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for body in bodies:
            await producer.send(topics.search_requests, json.dumps(body).encode(), key=body["request_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _outcomes(bootstrap: str, topics: Topics, n: int, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = {o["request_id"]: o for o in await read_outcomes(bootstrap, topics.search_results)}
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def test_router_serves_an_http_preset_and_counts_timeouts_and_5xx(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    async with SearchService() as service:
        last_good = ConfigRef.from_snapshot(http_snapshot("last_good", service, timeout_ms=300, max_connections=32))
        router = RouterService(bootstrap, topics, make_backend(), last_good, recall_sample_rate=0.0)
        await router.start()
        kinds = {"ok": "q5", "slow": "slow:1500 q5", "boom": "boom", "junk": "junk", "reject": "reject"}
        bodies = [
            {"request_id": f"{kind}-{i}", "query": text, "collection": "documents", "relevant_ids": relevant_for(5)}
            for kind, text in kinds.items()
            for i in range(4)
        ]
        try:
            await _produce(bootstrap, topics, bodies)
            outcomes = await _outcomes(bootstrap, topics, len(bodies))
        finally:
            await router.stop()
    assert len(outcomes) == len(bodies)
    by_kind: dict[str, set[Any]] = {}
    for rid, o in outcomes.items():
        by_kind.setdefault(rid.split("-")[0], set()).add(o["error"])
    assert by_kind == {
        "ok": {None},
        "slow": {"timeout"},
        "boom": {"backend_http_5xx"},
        "junk": {"backend_bad_response"},
        "reject": {"backend_http_4xx"},
    }
    ok = [o for rid, o in outcomes.items() if rid.startswith("ok-")]
    assert all(o["recall_at_10"] == 1.0 and o["metrics"]["cost_units"] == 2.0 for o in ok)
    assert all(o["recall_at_10"] == 0.0 for rid, o in outcomes.items() if not rid.startswith("ok-"))  # errors: 0
    slow = [o["latency_ms"] for rid, o in outcomes.items() if rid.startswith("slow-")]
    assert all(250 <= ms < 1200 for ms in slow), slow  # the preset's 300 ms timeout, not the 1.5 s answer
    assert router.stats.errors == 16
    assert len(service.requests) == len(bodies)  # every search went to the service, none to the bundled one


async def test_a_candidate_on_an_http_service_beside_a_bundled_last_good(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    async with SearchService() as service:
        router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
        await router.start()
        cmd = start_with(http_snapshot("candidate_high_recall", service, params="query"), weight=0.5)
        try:
            await send_command(bootstrap, topics, cmd)
            deadline = time.monotonic() + 20
            while router.ledger.current is None:
                assert time.monotonic() < deadline, router.stats.rejected_commands
                await asyncio.sleep(0.05)
            arms = []
            for i in range(60):
                q = i % 20
                results, used = await router.execute_search(
                    f"q{q}", "documents", user_id=f"u{i}", relevant_ids=relevant_for(q)
                )
                assert results == relevant_for(q)
                arms.append(used["arm"])
            await send_command(bootstrap, topics, end_command(cmd.deployment_id))
        finally:
            await router.stop()
    served = [r for r in service.requests if r.get("config.name") == "candidate_high_recall"]
    assert len(served) == arms.count("candidate") > 0 and arms.count("last_good") > 0
    assert len(service.requests) == len(served)  # last_good never went to the HTTP service
    assert all(r["method"] == "GET" and "retriever.alpha" in r for r in served)


async def test_a_start_command_naming_an_import_path_is_never_applied(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    try:
        evil = PRESETS.get("candidate_high_recall").to_dict()
        evil["backend"] = "os:system"
        await send_command(bootstrap, topics, start_with(evil, weight=0.5))
        deadline = time.monotonic() + 10
        while not router.stats.rejected_commands and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await router.stop()
    assert router.stats.rejected_commands == {"invalid_preset": 1}
    assert router.ledger.current is None and not router.ledger.deployments


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Any) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "httprb", tmp_path) as w:
        yield w


async def test_a_candidate_whose_http_service_fails_is_rolled_back_on_errors(worker: WorkerProcess) -> None:
    """The whole pipeline: the candidate's service answers 503 to everything; the outcomes say
    backend_http_5xx, the windows count them as errors and the SLO agent rolls the candidate back."""
    bootstrap, topics = worker.bootstrap, worker.topics
    async with SearchService(force_status=503) as service:
        router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
        await router.start()
        cmd = start_with(http_snapshot("candidate_high_recall", service), weight=0.2)
        dep = cmd.deployment_id
        try:
            await send_command(bootstrap, topics, cmd)
            while router.ledger.current is None:
                await asyncio.sleep(0.05)
            load = LoadGenerator(router, qps=50)
            task = asyncio.create_task(load.run(40))
            started, after = time.monotonic(), None
            while not task.done():
                await asyncio.sleep(0.1)
                if router.ledger.deployments[dep].status == "rolled_back":
                    after = time.monotonic() - started
                    break
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await load.drain()
            await asyncio.sleep(2.5)
        finally:
            await router.stop()
    print(f"candidate on a failing HTTP service rolled back after {after} s")
    rollbacks = [c for c in await read_all(bootstrap, topics.control) if c["type"] == "rollback"]
    assert (
        len(rollbacks) == 1 and rollbacks[0]["reason"] == "SLO violation: error_rate failed for 2 consecutive buckets"
    )
    outcomes = [o for o in await read_outcomes(bootstrap, topics.search_results) if o["arm"] == "candidate"]
    assert outcomes and {o["error"] for o in outcomes} == {"backend_http_5xx"}
    windows = [w for w in await read_judged(bootstrap, topics, dep) if w["response_count"]]
    assert windows and all(w["error_count"] == w["response_count"] for w in windows)
