"""Result-diff metrics on the real broker (issue #23, item 2): the router searches a sampled share of the
candidate's requests again with last_good's config, off the hot path, and the outcome carries rank-biased
overlap, Jaccard@10 and first-result change against that answer; a rule on ``rbo_at_10`` rolls back a
candidate that reorders results while its latency and recall stay the same."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import (
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
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService, sampled_for_diff

pytestmark = pytest.mark.kafka

RBO_RULE = {"name": "same-ranking", "metric": "rbo_at_10", "operator": "ge", "threshold": 0.9}


async def _wait_live(router: RouterService, dep: str) -> None:
    deadline = time.monotonic() + 20
    while router.ledger.current is None or router.ledger.current.deployment_id != dep:
        assert time.monotonic() < deadline, "the start never reached the router"
        await asyncio.sleep(0.05)


async def test_diff_is_measured_off_the_hot_path_and_is_one_for_the_same_ranking(
    settings: Settings, topics: Topics
) -> None:
    """An unchanged ranking scores 1.0 everywhere; last_good's outcomes never carry the metrics; the served
    answer does not wait for the second search (last_good made slow: 300 ms)."""
    backend = make_backend({"last_good": Fault(added_latency_ms=300)})
    router = RouterService(
        settings.effective_bootstrap,
        topics,
        backend,
        preset_ref("last_good"),
        consume_requests=False,
        diff_sample_rate=1.0,
        max_diff_in_flight=4,
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=1.0)  # every request on the candidate
    try:
        await send_command(settings.effective_bootstrap, topics, cmd)
        await _wait_live(router, cmd.deployment_id)
        served_ms = []
        for i in range(12):
            started = time.perf_counter()
            await router.execute_search(f"q{i}", "documents", request_id=f"diff-{i}")
            served_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.gather(*router.searcher.exact_tasks)
    finally:
        await router.stop()
    assert max(served_ms) < 250, served_ms  # the 300 ms last_good search is not on the candidate's path
    outcomes = [
        o
        for o in await read_outcomes(settings.effective_bootstrap, topics.search_results)
        if o["router_id"] == router.router_id
    ]
    assert len(outcomes) == 12 and all(o["arm"] == "candidate" for o in outcomes)
    measured = [o for o in outcomes if "rbo_at_10" in (o.get("metrics") or {})]
    busy = router.stats.diff_samples.get("busy", 0)
    assert len(measured) == router.stats.diff_samples["measured"] == 12 - busy
    assert busy < 12  # at most 4 in flight: a burst may drop some, counted, never queued
    for o in measured:
        assert o["metrics"]["rbo_at_10"] == 1.0
        assert o["metrics"]["jaccard_at_10"] == 1.0
        assert o["metrics"]["top1_changed"] == 0.0


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "diffrb", tmp_path_factory.mktemp("diff-worker")) as w:
        yield w


async def test_a_candidate_that_reorders_results_is_rolled_back_by_an_rbo_rule(worker: WorkerProcess) -> None:
    """Same documents in the top 10 (recall@10 unchanged), same latency, reversed order: only RBO sees it."""
    backend = make_backend({"candidate_high_recall": Fault(reorder_top10=True)})
    router = RouterService(
        worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False
    )  # the default diff sample rate (10 %)
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.5, slo={"rules": [RBO_RULE]})
    dep = cmd.deployment_id
    rolled_back_after: float | None = None
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        await _wait_live(router, dep)
        started = time.monotonic()
        load = LoadGenerator(router, qps=100, labeled=True)
        task = asyncio.create_task(load.run(90))
        while not task.done():
            await asyncio.sleep(0.1)
            if router.ledger.deployments[dep].status == "rolled_back":
                rolled_back_after = time.monotonic() - started
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
        if router.ledger.deployments[dep].live:
            await send_command(worker.bootstrap, worker.topics, end_command(dep))
        await asyncio.sleep(2.5)
    finally:
        await router.stop()
    control = await read_all(worker.bootstrap, worker.topics.control)
    rollbacks = [c for c in control if c["deployment_id"] == dep and c["type"] == "rollback"]
    print(f"reordering candidate rolled back after {rolled_back_after} s; diff samples {router.stats.diff_samples}")
    assert len(rollbacks) == 1, worker.log_tail()
    assert rollbacks[0]["reason"] == "SLO violation: same-ranking failed for 2 consecutive buckets"
    outcomes: list[dict[str, Any]] = [
        o
        for o in await read_outcomes(worker.bootstrap, worker.topics.search_results)
        if o["deployment_id"] == dep and o["router_id"] == router.router_id
    ]
    candidate = [o for o in outcomes if o["arm"] == "candidate"]
    diffed = [o for o in candidate if "rbo_at_10" in (o.get("metrics") or {})]
    assert diffed and all(sampled_for_diff(o["request_id"], 0.10) for o in diffed)
    assert all(o["metrics"]["rbo_at_10"] < 0.9 for o in diffed if o["result_count"] >= 2)
    assert all(o["metrics"]["jaccard_at_10"] == 1.0 for o in diffed)  # the same documents
    assert not any("rbo_at_10" in (o.get("metrics") or {}) for o in outcomes if o["arm"] == "last_good")
    # What the other rules see is unchanged: recall@10 (same top-10 set) and latency alike on both arms.
    recall = {
        arm: statistics.mean(o["recall_at_10"] for o in outcomes if o["arm"] == arm)
        for arm in ("candidate", "last_good")
    }
    assert recall["candidate"] == pytest.approx(recall["last_good"], abs=0.02)
    windows = await read_judged(worker.bootstrap, worker.topics, dep)
    failing = [w for w in windows if any(v["rule"] == "same-ranking" and v["outcome"] == "fail" for v in w["verdicts"])]
    assert failing, windows
    others = [(w["window_start"], v) for w in windows for v in w["verdicts"] if v["rule"] != "same-ranking"]
    assert not [v for v in others if v[1]["outcome"] == "fail"], others
    assert any("rbo_at_10" in w["stats"].get("custom", {}) for w in failing)
    assert rolled_back_after is not None and rolled_back_after < 60
