"""Shadow traffic on the real broker (issue #23, item 1): a deployment at weight 0 serves every user with
last_good while a share of their requests is mirrored to the candidate off the serving path; the mirrored
outcomes are judged with the same rules. A slow candidate is rolled back with no user ever served by it; a
healthy one's plan leaves its shadow step for its first step with users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec.structs
import pytest

from canary.core.deployment import snapshot_hash
from canary.core.rollout import step_command_id
from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    read_outcomes,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import SHADOW_SUFFIX, RouterService

pytestmark = pytest.mark.kafka


@pytest.fixture
def worker(base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "shadow", tmp_path) as proc:
        yield proc


def _shadow_start(candidate: str, mirror: float, plan: dict[str, Any] | None = None) -> Any:
    cmd = start_command(candidate, weight=0.0)
    snapshot = dict(cmd.candidate_config)
    if plan is not None:
        snapshot["rollout"] = plan
    return msgspec.structs.replace(
        cmd, candidate_config=snapshot, candidate_config_hash=snapshot_hash(snapshot), mirror=mirror
    )


async def _run(
    worker: WorkerProcess, cmd: Any, faults: dict[str, Fault], seconds: float, until: str
) -> tuple[RouterService, list[dict[str, Any]], list[str]]:
    """Load through a router until the deployment reaches ``until`` (a status, or a command id applied)."""
    router = RouterService(
        worker.bootstrap, worker.topics, make_backend(faults), preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    dep = cmd.deployment_id
    served_arms: list[str] = []
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        deadline = time.monotonic() + 20
        while dep not in router.ledger.deployments:
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=60)
        original = router.execute_search

        async def served(*args: Any, **kwargs: Any) -> Any:
            results, used = await original(*args, **kwargs)
            served_arms.append(used["arm"])
            return results, used

        router.execute_search = served  # type: ignore[method-assign]
        task = asyncio.create_task(load.run(seconds))
        while not task.done():
            await asyncio.sleep(0.1)
            d = router.ledger.deployments[dep]
            if d.status == until or until in router.ledger.applied_ids:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
        await asyncio.gather(*router.searcher.exact_tasks)
        if router.ledger.deployments[dep].live:
            await send_command(worker.bootstrap, worker.topics, end_command(dep))
        await asyncio.sleep(2)
    finally:
        await router.stop()
    control = [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["deployment_id"] == dep]
    return router, control, served_arms


SHADOW_PLAN: dict[str, Any] = {
    "steps": [{"weight": 0.0, "mirror": 0.5, "min_windows": 2}, {"weight": 0.2, "min_windows": 2}],
    "min_total_duration_s": 0.0,
    "auto_promote": False,
}


async def test_a_shadow_step_catches_the_slow_candidate_before_any_user_is_served(worker: WorkerProcess) -> None:
    cmd = _shadow_start("candidate_slow", mirror=0.5, plan=SHADOW_PLAN)
    router, control, served = await _run(
        worker, cmd, {"candidate_slow": Fault(added_latency_ms=1500)}, seconds=60, until="rolled_back"
    )
    rollbacks = [c for c in control if c["type"] == "rollback"]
    assert len(rollbacks) == 1, worker.log_tail()
    assert not [c for c in control if c["type"] == "set_weight"]  # rolled back in its shadow step
    assert rollbacks[0]["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert served and set(served) == {"last_good"}  # every user was answered by last_good
    assert router.stats.by_arm["candidate"] == 0
    assert router.stats.mirrored.get("measured", 0) > 20
    outcomes = [
        o
        for o in await read_outcomes(worker.bootstrap, worker.topics.search_results)
        if o["deployment_id"] == cmd.deployment_id
    ]
    mirrored = [o for o in outcomes if o["arm"] == "candidate"]
    assert mirrored and all(o["request_id"].endswith(SHADOW_SUFFIX) for o in mirrored)
    assert all(o["latency_ms"] >= 1400 for o in mirrored if not o["error"])
    originals = {o["request_id"] for o in outcomes if o["arm"] == "last_good"}
    assert {o["request_id"].removesuffix(SHADOW_SUFFIX) for o in mirrored} <= originals  # each one a served request


async def test_a_healthy_shadow_step_advances_to_the_first_step_with_users(worker: WorkerProcess) -> None:
    cmd = _shadow_start("candidate_high_recall", mirror=0.5, plan=SHADOW_PLAN)
    step = step_command_id(cmd.deployment_id, 1)
    router, control, _ = await _run(worker, cmd, {}, seconds=90, until=step)
    assert [c["command_id"] for c in control if c["type"] == "set_weight"] == [step], worker.log_tail()
    assert not [c for c in control if c["type"] == "rollback"]
    advance = next(c for c in control if c["command_id"] == step)
    assert advance["weight"] == 0.2
    assert router.stats.mirrored.get("measured", 0) > 0
