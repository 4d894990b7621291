"""Streaming core end to end on the real broker: windows → SLO agent → rollback → router → audit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings
from devtools.harness import (
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
from router.service import RouterService

pytestmark = pytest.mark.kafka
GRACE_MS = 1000


@pytest.fixture(scope="module")
def pipeline(
    base_settings: Settings, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker shared by the scenarios of this module (each runs its own deployment)."""
    import uuid

    topics = Topics(f"e2e{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka_bootstrap, topics)
    tmp = tmp_path_factory.mktemp("pipeline")
    worker = WorkerProcess(
        kafka_bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log", grace_ms=GRACE_MS
    )
    worker.start()
    try:
        yield worker
    finally:
        code = worker.stop()
        print(worker.log_tail(40))
        assert code == 0, worker.log_tail()


async def _run_canary(
    worker: WorkerProcess,
    candidate: str,
    faults: dict[str, Fault],
    seconds: float,
    stop_on_rollback: bool = True,
    change_at_failures: tuple[int, dict[str, Fault]] | None = None,
    slo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    backend = make_backend(faults)
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command(candidate, weight=0.2, slo=slo)
    dep = cmd.deployment_id
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        deadline = time.monotonic() + 20
        while router.ledger.current is None or router.ledger.current.deployment_id != dep:
            assert time.monotonic() < deadline, f"start {dep} not applied (refused?): {router.stats.rejected_commands}"
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=50)
        load_task = asyncio.create_task(load.run(seconds))
        rolled_back_at: int | None = None
        while not load_task.done():
            await asyncio.sleep(0.1)
            current = router.ledger.deployments[dep]
            if change_at_failures is not None:
                failures = [w for w in await _candidate_windows(worker, dep) if _failed(w)]
                if len(failures) >= change_at_failures[0]:
                    backend.faults = change_at_failures[1]
                    change_at_failures = None
            if current.status == "rolled_back" and rolled_back_at is None:
                rolled_back_at = int(time.time() * 1000)
                if stop_on_rollback:
                    await asyncio.sleep(2.0)  # keep sending: the candidate must get nothing more
                    load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await load.drain()
        if router.ledger.deployments[dep].live:
            await send_command(worker.bootstrap, worker.topics, end_command(dep))
        await asyncio.sleep(GRACE_MS / 1000 + 1.5)  # let the last windows close
        return {
            "deployment_id": dep,
            "router": router,
            "last_candidate_dispatch_ms": router.stats.last_candidate_dispatch_ms,
            "candidate_requests": router.stats.by_arm["candidate"],
            "sent": load.sent,
        }
    finally:
        await router.stop()


async def _candidate_windows(worker: WorkerProcess, dep: str) -> list[dict[str, Any]]:
    return await read_judged(worker.bootstrap, worker.topics, dep)


def _failed(window: dict[str, Any]) -> bool:
    return any(v["outcome"] == "fail" for v in window["verdicts"])


async def _rollbacks(worker: WorkerProcess, dep: str) -> list[dict[str, Any]]:
    control = await read_all(worker.bootstrap, worker.topics.control)
    return [c for c in control if c["deployment_id"] == dep and c["type"] == "rollback"]


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_latency_breach_rolls_back_once_at_second_failing_window(pipeline: WorkerProcess) -> None:
    result = await _run_canary(pipeline, "candidate_slow", {"candidate_slow": Fault(added_latency_ms=1500)}, 40)
    dep = result["deployment_id"]
    rollbacks = await _rollbacks(pipeline, dep)
    assert len(rollbacks) == 1, pipeline.log_tail()
    rollback = rollbacks[0]
    assert rollback["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert rollback["issued_by"] == "slo-agent"
    evidence = rollback["evidence"]
    assert evidence["rule"] == "p95_ms" and evidence["threshold"] == 1200
    assert len(evidence["windows"]) == 2 and all(w["value"] > 1200 for w in evidence["windows"])
    assert all(w["outcome"] == "fail" and w["evidence"]["method"] == "sequential" for w in evidence["windows"])

    windows = await _candidate_windows(pipeline, dep)
    failing = [w for w in windows if _failed(w)]
    assert len(failing) >= 2
    assert evidence["triggering_window"] == failing[1]["window_id"]
    # Consecutive: no passing window between the two failing ones.
    between = [
        w for w in windows if failing[0]["window_start_ms"] < w["window_start_ms"] < failing[1]["window_start_ms"]
    ]
    assert all(not any(v["outcome"] == "pass" for v in w["verdicts"]) for w in between)

    deadline = failing[1]["window_end_ms"] + GRACE_MS + 1500
    print(
        f"rollback issued {rollback['issued_at_ms'] - failing[1]['window_end_ms'] - GRACE_MS} ms after end+grace; "
        f"last candidate dispatch {result['last_candidate_dispatch_ms'] - failing[1]['window_end_ms'] - GRACE_MS} ms"
    )
    assert result["last_candidate_dispatch_ms"] <= deadline, (
        f"last candidate request {result['last_candidate_dispatch_ms'] - deadline} ms past the deadline"
    )

    audit = [e for e in _audit_lines(pipeline.audit_log) if e["deployment_id"] == dep]
    types = [e["event_type"] for e in audit]
    assert "canary_start" in types and "canary_rollback" in types
    rollback_line = next(e for e in audit if e["event_type"] == "canary_rollback")
    assert rollback_line["details"]["reason"] == rollback["reason"]
    # The spec's details.action, written by the real worker: what was attempted, whoever decided it.
    assert (rollback_line["details"]["action"], rollback_line["user_id"]) == ("rollback_canary_deployment", "slo-agent")
    start_line = next(e for e in audit if e["event_type"] == "canary_start")
    assert start_line["details"]["action"] == "start_canary_deployment"
    for e in audit:
        assert set(e) >= {
            "event_id",
            "event_type",
            "timestamp",
            "deployment_id",
            "user_id",
            "config_name",
            "details",
            "success",
            "error_message",
        }


async def test_healthy_noisy_candidate_is_not_rolled_back(pipeline: WorkerProcess) -> None:
    noisy = {"candidate_high_recall": Fault(added_latency_ms=150, latency_jitter_ms=120)}
    result = await _run_canary(pipeline, "candidate_high_recall", noisy, 66)
    dep = result["deployment_id"]
    assert await _rollbacks(pipeline, dep) == []
    windows = await _candidate_windows(pipeline, dep)
    shown = [(w["window_start"], [v["outcome"] for v in w["verdicts"]]) for w in windows]
    assert len(windows) >= 12, shown
    assert not any(v["outcome"] == "fail" for w in windows for v in w["verdicts"]), shown
    # Latency and recall are proven to hold within a few windows (the error rate, ~650 requests, later).
    proven = [w for w in windows if all(v["outcome"] == "pass" for v in w["verdicts"] if v["rule"] != "error_rate")]
    assert len(proven) >= 8, shown
    assert all(w["recall_at_10"] >= 0.30 for w in proven)


async def test_recall_drop_rolls_back(pipeline: WorkerProcess) -> None:
    degraded = {"candidate_low_recall": Fault(keep_fraction=0.2)}
    result = await _run_canary(pipeline, "candidate_low_recall", degraded, 40)
    rollbacks = await _rollbacks(pipeline, result["deployment_id"])
    assert len(rollbacks) == 1, pipeline.log_tail()
    assert rollbacks[0]["reason"] == "SLO violation: recall_at_10 failed for 2 consecutive buckets"
    assert all(w["value"] < 0.30 for w in rollbacks[0]["evidence"]["windows"])


async def test_one_failing_window_then_passing_windows_does_not_roll_back(pipeline: WorkerProcess) -> None:
    backend = make_backend()
    router = RouterService(
        pipeline.bootstrap, pipeline.topics, backend, preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.2)
    dep = cmd.deployment_id
    try:
        await send_command(pipeline.bootstrap, pipeline.topics, cmd)
        load = LoadGenerator(router, qps=50)
        load_task = asyncio.create_task(load.run(32))
        # Fault for 3.5 s from a window boundary: slow requests (1.5 s) all finish inside that one window.
        now = time.time() * 1000
        boundary = (now // 5000 + 2) * 5000
        await asyncio.sleep((boundary - now) / 1000)
        backend.faults = {"candidate_high_recall": Fault(added_latency_ms=1500)}
        await asyncio.sleep(3.5)
        backend.faults = {}
        await load_task
        await load.drain()
        await asyncio.sleep(GRACE_MS / 1000 + 1.5)
        assert router.ledger.deployments[dep].status == "running"
        await send_command(pipeline.bootstrap, pipeline.topics, end_command(dep))
    finally:
        await router.stop()
    assert await _rollbacks(pipeline, dep) == []
    windows = await _candidate_windows(pipeline, dep)
    outcomes = [tuple(v["outcome"] for v in w["verdicts"]) for w in windows]
    failing = [i for i, w in enumerate(windows) if _failed(w)]
    assert len(failing) == 1, outcomes
    assert windows[failing[0]]["window_start_ms"] == boundary
    # The windows after it are healthy: none fails (the pooled latency evidence from the burst keeps p95
    # from *passing* for a while, which is honest; recall keeps passing).
    later = outcomes[failing[0] + 1 :]
    assert later and all("fail" not in out for out in later), outcomes
    assert any(out[1] == "pass" for out in later), outcomes


async def test_a_candidate_that_fails_every_request_fast_is_rolled_back(pipeline: WorkerProcess) -> None:
    # Every request errors in a few ms: fast "answers" must not pass the latency rule, and the error rule
    # (default error_rate <= 0.01) must fire.
    broken = {"candidate_high_recall": Fault(error_rate=1.0)}
    result = await _run_canary(pipeline, "candidate_high_recall", broken, 30)
    rollbacks = await _rollbacks(pipeline, result["deployment_id"])
    assert len(rollbacks) == 1, pipeline.log_tail()
    assert rollbacks[0]["reason"] == "SLO violation: error_rate failed for 2 consecutive buckets"
    windows = await _candidate_windows(pipeline, result["deployment_id"])
    first_data = next(i for i, w in enumerate(windows) if w["response_count"] > 0)
    # At the 2nd window with traffic (the first may be a partial window right after the start).
    assert rollbacks[0]["evidence"]["triggering_window"] in {
        w["window_id"] for w in windows[first_data : first_data + 3]
    }
    assert all(w["p95_ms"] >= 10_000 for w in windows if w["response_count"])  # errors count as the timeout


async def test_a_starved_healthy_canary_is_paused_for_insufficient_data(pipeline: WorkerProcess) -> None:
    backend = make_backend({})
    router = RouterService(
        pipeline.bootstrap, pipeline.topics, backend, preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.2)
    dep = cmd.deployment_id
    try:
        await send_command(pipeline.bootstrap, pipeline.topics, cmd)
        load = LoadGenerator(router, qps=10)  # 2 candidate requests/s: 10 per window, below min_samples 20
        load_task = asyncio.create_task(load.run(90))
        deadline = time.monotonic() + 90
        while router.ledger.deployments.get(dep) is None or router.ledger.deployments[dep].status == "running":
            assert time.monotonic() < deadline, pipeline.log_tail()
            await asyncio.sleep(0.2)
        load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await load.drain()
        status = router.ledger.deployments[dep].status
        if router.ledger.deployments[dep].live:
            await send_command(pipeline.bootstrap, pipeline.topics, end_command(dep))
    finally:
        await router.stop()
    assert status == "paused"
    control = [c for c in await read_all(pipeline.bootstrap, pipeline.topics.control) if c["deployment_id"] == dep]
    (pause,) = [c for c in control if c["type"] == "pause"]
    assert pause["issued_by"] == "slo-agent" and pause["command_id"].startswith(f"pause-insufficient-{dep}-")
    assert pause["reason"].startswith("insufficient data: 12 windows, ")
    assert not [c for c in control if c["type"] == "rollback"]
    await asyncio.sleep(2.5)  # the audit agent writes the pause
    audit = [e for e in _audit_lines(pipeline.audit_log) if e["deployment_id"] == dep]
    assert any(e["event_type"] == "canary_pause" and e["details"].get("reason") == pause["reason"] for e in audit)


async def test_a_custom_metric_rule_rolls_back_a_candidate_that_degrades_it(pipeline: WorkerProcess) -> None:
    """Issue #12: a preset declares ndcg@10 (which the router measures on labeled requests) and a rule on its
    mean; the candidate loses its best results, and that rule — not recall, whose floor is 0 here — rolls
    it back, judged with the same evidence machinery as the built-in rules."""
    slo = {
        "recall_at_10": 0.0,
        "metrics": [{"name": "ndcg_at_10", "aggregation": "mean", "description": "binary-relevance nDCG@10"}],
        "rules": [{"name": "ndcg", "metric": "ndcg_at_10", "operator": "ge", "threshold": 0.8}],
    }
    faults = {"candidate_high_recall": Fault(keep_fraction=0.4)}
    result = await _run_canary(pipeline, "candidate_high_recall", faults, 40, slo=slo)
    dep = result["deployment_id"]
    rollbacks = await _rollbacks(pipeline, dep)
    assert len(rollbacks) == 1, pipeline.log_tail()
    evidence = rollbacks[0]["evidence"]
    assert rollbacks[0]["reason"] == "SLO violation: ndcg failed for 2 consecutive buckets"
    assert evidence["metric"] == "ndcg_at_10" and evidence["threshold"] == 0.8
    windows = await _candidate_windows(pipeline, dep)
    failing = [w for w in windows if _failed(w)]
    verdict = next(v for v in failing[-1]["verdicts"] if v["rule"] == "ndcg")
    assert verdict["outcome"] == "fail" and verdict["evidence"]["custom_metric"] == "ndcg_at_10"
    assert 0.4 < verdict["value"] < 0.7  # the window's mean nDCG@10 with the best 60 % of results lost
    assert failing[-1]["stats"]["custom"]["ndcg_at_10"]["n"] > 0
    assert all(v["outcome"] != "fail" for v in failing[-1]["verdicts"] if v["rule"] == "recall_at_10")
