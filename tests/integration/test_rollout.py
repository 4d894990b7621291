"""Rollout plans on the real broker (issue #12): walk 10 → 25 → 50 → 100 % and promote, survive a worker
SIGKILL mid-plan without repeating a step, and roll back from the step where the candidate breaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canary.cli.replay import replay_payload
from canary.core.rollout import promote_command_id, step_command_id
from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka
CANDIDATE = "candidate_progressive"  # steps 0.10 → 0.25 → 0.50 → 1.00, 2 windows each, promote after ≥ 30 s


@pytest.fixture
def worker(base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "roll", tmp_path) as proc:
        yield proc


async def _commands(worker: WorkerProcess, dep: str) -> list[dict[str, Any]]:
    return [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["deployment_id"] == dep]


async def _walk(
    worker: WorkerProcess,
    *,
    kill_worker_at_weight: float | None = None,
    break_at_weight: float | None = None,
    seconds: float = 120,
) -> tuple[str, RouterService, list[tuple[float, float]]]:
    """Run the progressive candidate under load until it ends; the (time, weight) path the router saw."""
    backend = make_backend()
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command(CANDIDATE, weight=0.10)
    dep = cmd.deployment_id
    path: list[tuple[float, float]] = []
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        load = LoadGenerator(router, qps=80)
        load_task = asyncio.create_task(load.run(seconds))
        started = time.monotonic()
        while not load_task.done():
            await asyncio.sleep(0.1)
            current = router.ledger.deployments.get(dep)
            if current is None:
                continue
            if not path or path[-1][1] != current.weight:
                path.append((time.monotonic() - started, current.weight))
            if kill_worker_at_weight is not None and current.weight >= kill_worker_at_weight:
                worker.kill()  # mid-plan, as a crash would
                worker.start()
                kill_worker_at_weight = None
            if break_at_weight is not None and current.weight >= break_at_weight:
                backend.faults = {CANDIDATE: Fault(added_latency_ms=1500)}  # breaks under the larger share
                break_at_weight = None
            if not current.live:
                await asyncio.sleep(1.0)
                load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await load.drain()
        return dep, router, path
    finally:
        await router.stop()


async def test_a_healthy_candidate_walks_every_step_once_and_is_promoted_across_a_worker_crash(
    worker: WorkerProcess,
) -> None:
    dep, router, path = await _walk(worker, kill_worker_at_weight=0.5)
    final = router.ledger.deployments[dep]
    assert final.status == "promoted", (path, worker.log_tail())
    assert [w for _, w in path] == [0.10, 0.25, 0.50, 1.0], path

    commands = await _commands(worker, dep)
    ids = [c["command_id"] for c in commands]
    # Every step and the promotion exactly once, in order, although the worker was SIGKILLed at 50 %.
    expected = [step_command_id(dep, 1), step_command_id(dep, 2), step_command_id(dep, 3), promote_command_id(dep)]
    assert [i for i in ids if i.startswith("rollout-")] == expected, ids
    steps = [c for c in commands if c["type"] == "set_weight"]
    assert [c["weight"] for c in steps] == [0.25, 0.5, 1.0]
    assert all(c["issued_by"] == "slo-agent" and c["signature"] for c in steps)
    assert "passed 2 windows" in steps[0]["reason"]
    # Each cites the judged windows it counted, which the ledger checked against the step's timing.
    for c in [*steps, next(c for c in commands if c["type"] == "promote")]:
        windows = c["evidence"]["windows"]
        assert len(windows) == 2 and c["evidence"]["window_ms"] == 5000, c["evidence"]
        assert all(w.startswith(f"{dep}|{CANDIDATE}|candidate@") for w in windows)
    assert not any(c["type"] == "rollback" for c in commands)
    promote = next(c for c in commands if c["type"] == "promote")
    assert promote["issued_at_ms"] - commands[0]["issued_at_ms"] >= 30_000  # min_total_duration_s
    assert router.ledger.last_good is not None and router.ledger.last_good.name == CANDIDATE


async def test_a_candidate_that_breaks_at_50_percent_is_rolled_back_from_there(
    worker: WorkerProcess, base_settings: Settings, tmp_path: Path
) -> None:
    began_ms = time.time_ns() // 1_000_000
    dep, router, path = await _walk(worker, break_at_weight=0.5)
    final = router.ledger.deployments[dep]
    assert final.status == "rolled_back", (path, worker.log_tail())
    assert final.weight == 0.5 and [w for _, w in path][:3] == [0.10, 0.25, 0.50], path
    commands = await _commands(worker, dep)
    ids = [c["command_id"] for c in commands]
    assert step_command_id(dep, 3) not in ids and promote_command_id(dep) not in ids
    rollback = next(c for c in commands if c["type"] == "rollback")
    assert rollback["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"

    # The replay's decision loop is the live one: from the recorded outcomes and operator commands alone (the
    # live agent's own commands set aside), it issues the same steps and the rollback on the same windows.
    ended_ms = time.time_ns() // 1_000_000
    await asyncio.sleep((ended_ms // 5000 * 5000 + 5000 + 1000 + 1500 - time.time_ns() // 1_000_000) / 1000)
    settings = base_settings.with_overrides(bootstrap_servers=worker.bootstrap, topic_prefix=worker.topics.prefix)
    report = await asyncio.to_thread(
        replay_payload, settings, began_ms, ended_ms, deployment_id=dep, output=tmp_path / "replay"
    )
    [replayed] = report["deployments"]
    live_agent = [c for c in commands if c["issued_by"] == "slo-agent"]
    assert [(d["command_id"], d["triggering_window"]) for d in replayed["issued"]] == [
        (c["command_id"], c["evidence"]["triggering_window"]) for c in live_agent
    ], "\n".join(report["summary"])
    assert all(d["applied"] for d in replayed["issued"])
    assert [d for d in report["differences"] if d["kind"] == "decision"] == [], report["summary"]
