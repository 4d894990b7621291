"""Two candidates at once on the real broker (issue #12, A/B/n): the failing one is rolled back, the healthy
one goes on, and no user is ever served by both."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.requests import SearchRequest
from router.service import RouterService

pytestmark = pytest.mark.kafka


@pytest.fixture
def worker(base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "ab", tmp_path) as proc:
        yield proc


async def test_a_failing_and_a_healthy_candidate_side_by_side(worker: WorkerProcess) -> None:
    backend = make_backend({"candidate_slow": Fault(added_latency_ms=1500)})
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    slow, good = start_command("candidate_slow", weight=0.2), start_command("candidate_high_recall", weight=0.2)
    served: dict[str, set[str]] = defaultdict(set)  # user → candidate deployments that served them
    users = [f"user-{i}" for i in range(2000)]  # the load generator's users
    try:
        await send_command(worker.bootstrap, worker.topics, slow)
        await send_command(worker.bootstrap, worker.topics, good)
        while len(router.ledger.live) < 2:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=80)
        task = asyncio.create_task(load.run(75))
        rolled_back_for = 0.0
        while not task.done():
            await asyncio.sleep(0.25)
            for user in users:  # what the router would do for every user, right now
                _, used = router.route(SearchRequest("probe", "q", "documents", user_id=user))
                if used.arm == "candidate":
                    assert used.deployment_id is not None
                    served[user].add(used.deployment_id)
            if router.ledger.deployments[slow.deployment_id].status == "rolled_back":
                rolled_back_for += 0.25
                # The healthy one must go on well after the rollback: until 4 of its windows are judged.
                if (
                    rolled_back_for >= 6
                    and rolled_back_for % 2 == 0
                    and len(await read_judged(worker.bootstrap, worker.topics, good.deployment_id)) >= 4
                ):
                    task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
    finally:
        await router.stop()

    assert router.ledger.deployments[slow.deployment_id].status == "rolled_back", worker.log_tail()
    assert router.ledger.deployments[good.deployment_id].status == "running"
    assert all(len(deps) == 1 for deps in served.values()), [u for u, d in served.items() if len(d) > 1][:5]
    shares = {
        d: sum(1 for deps in served.values() if d in deps) / len(users)
        for d in (slow.deployment_id, good.deployment_id)
    }
    assert all(0.12 < share < 0.28 for share in shares.values()), shares

    control = [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["type"] == "rollback"]
    assert [c["deployment_id"] for c in control] == [slow.deployment_id]
    # Each is judged on its own, against its own share of the last_good baseline.
    good_windows = await read_judged(worker.bootstrap, worker.topics, good.deployment_id)
    assert len(good_windows) >= 4 and not any(v["outcome"] == "fail" for w in good_windows for v in w["verdicts"]), (
        good_windows[-1]
    )
