"""Issue #10 on the real broker: windows that survive real clocks and real fleets.

Skewed router clocks, an outcome stamped an hour ahead, a router stopped mid-window, outcomes produced
twice — every window still counts exactly its requests, nothing is dropped as late, and a replay of the
span reproduces the live windows and decisions.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.cli.replay import replay_payload
from canary.core.models import SearchOutcome
from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings, load_settings
from devtools.harness import (
    ROOT,
    LoadGenerator,
    WorkerProcess,
    end_command,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService, now_ms, outcome_partition

pytestmark = pytest.mark.kafka


def _outcomes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if isinstance(r, dict) and "kind" not in r]


def _truth(outcomes: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """Distinct requests per (window key, window start) — what the windows must count."""
    seen: dict[tuple[str | None, str], dict[str, Any]] = {}
    for o in outcomes:
        seen.setdefault((o["deployment_id"], o["request_id"]), o)
    return Counter(
        (f"{o['deployment_id'] or '-'}|{o['config_name']}|{o['arm']}", o["ts"] - o["ts"] % 5000) for o in seen.values()
    )


async def _windows_until(
    bootstrap: str, topics: Topics, last_ts: int, timeout: float = 40
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    windows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for w in await read_all(bootstrap, topics.windows):
            windows.setdefault(str(w["window_id"]), w)
        if windows and max(int(w["window_end_ms"]) for w in windows.values()) > last_ts + 5000:
            break
        await asyncio.sleep(0.5)
    return windows


def _assert_exact(windows: dict[str, dict[str, Any]], outcomes: list[dict[str, Any]], dep: str) -> int:
    truth = _truth([o for o in outcomes if o["deployment_id"] == dep])
    counted = Counter(
        {
            (f"{w['deployment_id'] or '-'}|{w['config_name']}|{w['arm']}", int(w["window_start_ms"])): int(
                w["response_count"]
            )
            for w in windows.values()
            if w["deployment_id"] == dep and int(w["response_count"])
        }
    )
    assert all(int(w["late_count"]) == 0 for w in windows.values() if w["deployment_id"] == dep)
    assert counted == truth
    return sum(truth.values())


@pytest.fixture
def fleet(kafka_bootstrap: str, tmp_path: Path) -> Any:
    topics = Topics(f"fleet{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka_bootstrap, topics)
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path / "audit.log", tmp_path / "d", tmp_path / "w.log")
    worker.start()
    yield topics, worker
    assert worker.stop() == 0, worker.log_tail()


async def test_skewed_router_clocks_lose_nothing_and_replay_agrees(
    fleet: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics, worker = fleet
    slow = {"candidate_slow": Fault(added_latency_ms=1500)}
    # Router b's clock runs 2 s ahead of a's (a test hook on its clock).
    a = RouterService(kafka_bootstrap, topics, make_backend(slow), preset_ref("last_good"), consume_requests=False)
    b = RouterService(
        kafka_bootstrap,
        topics,
        make_backend(slow),
        preset_ref("last_good"),
        consume_requests=False,
        clock=lambda: now_ms() + 2000,
    )
    await a.start()
    await b.start()
    cmd = start_command("candidate_slow", weight=0.3)
    dep = cmd.deployment_id
    started = now_ms()
    try:
        await send_command(kafka_bootstrap, topics, cmd)
        while any(r.ledger.current is None for r in (a, b)):
            await asyncio.sleep(0.05)
        loads = [LoadGenerator(r, qps=30, seed=i) for i, r in enumerate((a, b))]
        running = [asyncio.create_task(g.run(30)) for g in loads]
        deadline = time.monotonic() + 40
        while a.ledger.deployments[dep].status != "rolled_back" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for g in loads:
            await g.drain()
    finally:
        await a.stop()
        await b.stop()
    assert a.ledger.deployments[dep].status == "rolled_back", worker.log_tail()
    ended = now_ms() + 2000
    windows = await _windows_until(kafka_bootstrap, topics, ended)
    outcomes = _outcomes(await read_all(kafka_bootstrap, topics.search_results))
    assert {o["router_id"] for o in outcomes} == {a.router_id, b.router_id}
    assert _assert_exact(windows, outcomes, dep) > 100
    dlq = await read_all(kafka_bootstrap, topics.results_dlq)
    assert not [d for d in dlq if str(d.get("reason", "")).startswith(("late", "future_ts"))]
    rollbacks = [c for c in await read_all(kafka_bootstrap, topics.control) if c["type"] == "rollback"]
    assert len(rollbacks) == 1

    settings = load_settings().with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix)
    report = await asyncio.to_thread(
        replay_payload, settings, started - 5000, ended, deployment_id=dep, output=tmp_path / "replay"
    )
    assert report["differences"] == [], report["summary"]


async def test_an_outcome_stamped_an_hour_ahead_is_dead_lettered_and_windows_go_on(
    fleet: Any, kafka_bootstrap: str
) -> None:
    topics, _worker = fleet
    router = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.3)
    dep = cmd.deployment_id
    try:
        await send_command(kafka_bootstrap, topics, cmd)
        while router.ledger.current is None:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=30)
        running = asyncio.create_task(load.run(16))
        await asyncio.sleep(4)
        future = SearchOutcome(
            "r:future",
            "future-1",
            now_ms() + 3_600_000,
            dep,
            "candidate_high_recall",
            "1",
            "h",
            "candidate",
            100.0,
            0.5,
            10,
            None,
            router.router_id,
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.search_results,
                json.dumps(future.to_dict()).encode(),
                key=b"future-1",
                partition=outcome_partition("future-1", 6),
            )
        finally:
            await producer.stop()
        await running
        await load.drain()
        await send_command(kafka_bootstrap, topics, end_command(dep))
    finally:
        await router.stop()
    windows = await _windows_until(kafka_bootstrap, topics, now_ms())
    dlq = await read_all(kafka_bootstrap, topics.results_dlq)
    assert [d["event_id"] for d in dlq if str(d.get("reason", "")).startswith("future_ts")] == ["r:future"]
    outcomes = [
        o for o in _outcomes(await read_all(kafka_bootstrap, topics.search_results)) if o["request_id"] != "future-1"
    ]
    _assert_exact(windows, outcomes, dep)
    judged = await read_judged(kafka_bootstrap, topics, dep)
    assert len([w for w in judged if w["response_count"]]) >= 2  # later windows still close and are judged


async def test_outcomes_produced_again_count_once(fleet: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    topics, _worker = fleet
    router = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.3)
    dep = cmd.deployment_id
    try:
        await send_command(kafka_bootstrap, topics, cmd)
        while router.ledger.current is None:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=100)
        running = asyncio.create_task(load.run(14))
        await asyncio.sleep(6)
        # 1,000 outcomes already on the topic, produced again (a redelivery after a router crash looks the same).
        first = _outcomes(await read_all(kafka_bootstrap, topics.search_results))[:1000]
        assert len(first) >= 500
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            for o in first:
                again = {**o, "event_id": f"other-router:{o['request_id']}"}
                await producer.send(
                    topics.search_results,
                    json.dumps(again).encode(),
                    key=o["request_id"].encode(),
                    partition=outcome_partition(o["request_id"], 6),
                )
            await producer.flush()
        finally:
            await producer.stop()
        await running
        await load.drain()
        await send_command(kafka_bootstrap, topics, end_command(dep))
    finally:
        await router.stop()
    windows = await _windows_until(kafka_bootstrap, topics, now_ms())
    outcomes = _outcomes(await read_all(kafka_bootstrap, topics.search_results))
    distinct = _assert_exact(windows, outcomes, dep)
    assert len(outcomes) - distinct >= len(first)  # the copies are there, and counted once
    settings = load_settings().with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix)
    begin = min(int(w["window_start_ms"]) for w in windows.values() if w["deployment_id"] == dep)
    end = max(int(w["window_end_ms"]) for w in windows.values() if w["deployment_id"] == dep)
    report = await asyncio.to_thread(replay_payload, settings, begin, end, deployment_id=dep, output=tmp_path / "r")
    assert report["differences"] == [], report["summary"]


def _router_process(settings: Settings, router_id: str, log: Any) -> subprocess.Popen[bytes]:
    import os

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.effective_bootstrap,
        "CANARY_TOPIC_PREFIX": settings.topic_prefix,
        "CANARY_PROJECT_ROOT": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "canary.cli", "router", "--router-id", router_id],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _load_process(bootstrap: str, prefix: str, seconds: int = 14) -> subprocess.Popen[bytes]:
    import os

    return subprocess.Popen(
        [sys.executable, "-m", "canary.cli", "load", "--qps", "60", "--duration", str(seconds)],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CANARY_TOPIC_PREFIX": prefix},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_router_stopped_mid_window_loses_nothing(fleet: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    topics, _worker = fleet
    settings = load_settings().with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix)
    logs = [(tmp_path / f"r{i}.log").open("wb") for i in range(2)]
    procs = [_router_process(settings, f"proc-router-{i}", logs[i]) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = await read_all(kafka_bootstrap, topics.state)
            if {s["router_id"] for s in states} >= {"proc-router-0", "proc-router-1"}:
                break
            await asyncio.sleep(0.5)
        load = _load_process(kafka_bootstrap, topics.prefix)
        await asyncio.sleep(5)
        procs[0].send_signal(signal.SIGSTOP)  # mid-window, with requests in flight
        await asyncio.sleep(3)
        procs[0].send_signal(signal.SIGCONT)
        await asyncio.to_thread(load.wait, 60)
        await asyncio.sleep(3)
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        for f in logs:
            f.close()
    windows = await _windows_until(kafka_bootstrap, topics, now_ms())
    outcomes = _outcomes(await read_all(kafka_bootstrap, topics.search_results))
    assert len(outcomes) >= 600
    truth = _truth(outcomes)
    counted = Counter(
        {
            (f"{w['deployment_id'] or '-'}|{w['config_name']}|{w['arm']}", int(w["window_start_ms"])): int(
                w["response_count"]
            )
            for w in windows.values()
            if int(w["response_count"])
        }
    )
    assert counted == truth
    assert all(int(w["late_count"]) == 0 for w in windows.values())


async def test_a_router_killed_mid_canary_counts_each_request_once(
    fleet: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A SIGKILLed router's unacknowledged requests are re-processed by the router that takes over its
    request partitions (new event ids, same request ids): each request still counts once."""
    topics, _worker = fleet
    settings = load_settings().with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix)
    logs = [(tmp_path / f"k{i}.log").open("wb") for i in range(2)]
    procs = [_router_process(settings, f"kill-router-{i}", logs[i]) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = await read_all(kafka_bootstrap, topics.state)
            if {s["router_id"] for s in states} >= {"kill-router-0", "kill-router-1"}:
                break
            await asyncio.sleep(0.5)
        load = _load_process(kafka_bootstrap, topics.prefix, seconds=24)
        await asyncio.sleep(6)
        procs[0].kill()  # no clean stop: its in-flight and uncommitted requests are redelivered
        await asyncio.to_thread(load.wait, 90)
        await asyncio.sleep(15)  # the survivor takes over after the session timeout and drains the backlog
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        for f in logs:
            f.close()
    windows = await _windows_until(kafka_bootstrap, topics, now_ms(), timeout=60)
    outcomes = _outcomes(await read_all(kafka_bootstrap, topics.search_results))
    requests = {r["request_id"] for r in await read_all(kafka_bootstrap, topics.search_requests)}
    counted = sum(int(w["response_count"]) for w in windows.values())
    assert {o["request_id"] for o in outcomes} == requests  # every request answered
    assert counted == len(requests), (counted, len(requests), len(outcomes))
