"""The router on the real broker: Kafka intake, split over 20k requests, poison requests, two routers."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import (
    end_command,
    make_backend,
    preset_ref,
    read_all,
    read_outcomes,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.backends.memory import relevant_for
from router.service import RouterService, now_ms

pytestmark = pytest.mark.kafka


async def _produce_requests(bootstrap: str, topics: Topics, n: int, users: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        for i in range(n):
            q = i % 200
            body = {
                "request_id": f"r{i}",
                "query": f"q{q}",
                "collection": "documents",
                "user_id": f"user-{i % users}",
                "ts": now_ms(),
                "relevant_ids": relevant_for(q),
            }
            await producer.send(topics.search_requests, json.dumps(body).encode(), key=body["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _wait_outcomes(bootstrap: str, topics: Topics, n: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    outcomes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        outcomes = await read_outcomes(bootstrap, topics.search_results)
        if len(outcomes) >= n:
            break
        await asyncio.sleep(1)
    return outcomes


async def test_20k_requests_split_10_percent_sticky_one_outcome_each(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"))
    await router.start()
    try:
        # A fixed deployment id (the split's salt) keeps this test deterministic; the split's statistics
        # over many salts are covered in tests/router/test_split.py. 10k users × 2 requests: the share
        # is measured over enough users while every user still sends twice (stickiness).
        cmd = start_command("candidate_high_recall", weight=0.10, deployment_id="canary_split_test")
        await send_command(bootstrap, topics, cmd)
        while router.ledger.current is None:
            await asyncio.sleep(0.05)
        await _produce_requests(bootstrap, topics, 20_000, users=10_000)
        outcomes = await _wait_outcomes(bootstrap, topics, 20_000)
    finally:
        await router.stop()
    assert len(outcomes) == 20_000
    assert len({o["request_id"] for o in outcomes}) == 20_000  # exactly one outcome per request
    share = sum(o["arm"] == "candidate" for o in outcomes) / len(outcomes)
    assert abs(share - 0.10) <= 0.01, share
    # user-k sent requests r{k} and r{k+10000}: both must be on one arm.
    per_user: dict[int, set[str]] = defaultdict(set)
    for o in outcomes:
        per_user[int(o["request_id"][1:]) % 10_000].add(o["arm"])
    assert all(len(arms) == 1 for arms in per_user.values())
    assert all(o["deployment_id"] == cmd.deployment_id for o in outcomes)
    assert {o["config_name"] for o in outcomes if o["arm"] == "candidate"} == {"candidate_high_recall"}
    assert all(o["recall_at_10"] == 1.0 for o in outcomes)


async def test_poison_requests_are_dead_lettered_and_answered(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), reply=True)
    await router.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for raw in (
            b"not json",
            b'{"query": "q1"}',
            b"[1,2]",
            b"[" * 3000 + b"]" * 3000,
            None,
            b'{"request_id": "ok1", "query": "q1", "collection": "c"}',
        ):
            await producer.send_and_wait(topics.search_requests, raw, key=b"a-tombstone" if raw is None else None)
        await producer.stop()
        outcomes = await _wait_outcomes(bootstrap, topics, 6, timeout=30)
        dead = await read_all(bootstrap, topics.requests_dlq)
        await asyncio.sleep(0.5)
        replies = await read_all(bootstrap, topics.responses)
    finally:
        await router.stop()
    assert [r["request_id"] for r in replies] == ["ok1"]
    assert replies[0]["config_used"]["arm"] == "last_good" and len(replies[0]["results"]) == 10
    assert len(outcomes) == 6
    assert sorted(o["error"] or "ok" for o in outcomes) == ["invalid_request"] * 5 + ["ok"]
    # Every poison request is dead-lettered with its code.
    assert sorted(d["reason"] for d in dead) == sorted(["not_json", "invalid", "not_object", "too_deep", "no_value"])
    assert any("request_id: required" in d["detail"] for d in dead)
    assert all({"reason", "detail", "raw", "raw_bytes", "partition", "offset", "router_id"} <= set(d) for d in dead)


async def test_rollback_reaches_two_routers_within_a_second(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.effective_bootstrap
    backend = make_backend({"candidate_slow": Fault(added_latency_ms=5)})
    routers = [
        RouterService(bootstrap, topics, backend, preset_ref("last_good"), consume_requests=False) for _ in range(2)
    ]
    for r in routers:
        await r.start()
    try:
        cmd = start_command("candidate_slow", weight=0.5)
        await send_command(bootstrap, topics, cmd)
        while any(r.ledger.current is None for r in routers):
            await asyncio.sleep(0.02)

        stop = asyncio.Event()

        async def traffic(router: RouterService, seed: int) -> None:
            i = 0
            while not stop.is_set():
                await router.execute_search(f"q{i % 200}", "documents", user_id=f"u{seed}-{i}")
                i += 1
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(traffic(r, n)) for n, r in enumerate(routers)]
        await asyncio.sleep(1.0)
        assert all(r.stats.by_arm["candidate"] > 0 for r in routers)
        produced_at = now_ms()
        await send_command(bootstrap, topics, end_command(cmd.deployment_id, "rollback"))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for r in routers:
            await r.stop()
    for r in routers:
        assert r.ledger.deployments[cmd.deployment_id].status == "rolled_back"
        last = r.stats.last_candidate_dispatch_ms
        assert last is not None and last - produced_at <= 1000, last - produced_at
        applied = next(t for cid, kind, t in r.stats.applied if kind == "rollback")
        assert applied - produced_at <= 1000
    states = [s for s in await read_all(bootstrap, topics.state) if s.get("status") == "rolled_back"]
    assert {s["router_id"] for s in states} == {r.router_id for r in routers}
