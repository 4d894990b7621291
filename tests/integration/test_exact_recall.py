"""Recall without labels on the real broker (issue #14, part 3): the router samples unlabeled requests for an
exact search off the hot path; windows carry that recall with its source, and the SLO agent rolls back a
low-recall candidate on it — measured against the same rollback with labels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from canary.core.split import user_group
from canary.kafka.topics import Topics
from canary.ops.load import produce_load
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
from router.backends.fault import Fault, FaultInjectingBackend
from router.backends.memory import KeywordBackend, numbered_corpus, relevant_for
from router.service import DEFAULT_RECALL_SAMPLE_RATE, RouterService, sampled_for_exact

pytestmark = pytest.mark.kafka


class SlowExact:
    """A real keyword engine whose exact search takes ``exact_ms`` (or fails)."""

    def __init__(self, exact_ms: float, fail: bool = False) -> None:
        self.inner = KeywordBackend(numbered_corpus())
        self.exact_ms = exact_ms
        self.fail = fail

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        return await self.inner.search(query, collection, params)

    async def exact_search(self, query: str, collection: str, k: int) -> Sequence[str]:
        await asyncio.sleep(self.exact_ms / 1000)
        if self.fail:
            raise RuntimeError("exact index unavailable")
        return await self.inner.exact_search(query, collection, k)


async def _outcomes_for(settings: Settings, router: RouterService, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        outcomes = [
            o
            for o in await read_outcomes(settings.effective_bootstrap, router.topics.search_results)
            if o["router_id"] == router.router_id
        ]
        if len(outcomes) >= n or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(0.3)


async def test_sampled_exact_search_stays_off_the_hot_path(settings: Settings, topics: Topics) -> None:
    router = RouterService(
        settings.effective_bootstrap,
        topics,
        SlowExact(exact_ms=400),
        preset_ref("last_good"),
        consume_requests=False,
        recall_sample_rate=1.0,
        max_exact_in_flight=2,
    )
    await router.start()
    try:
        started = time.perf_counter()
        await router.execute_search("q7", "documents", request_id="one")
        answered_ms = (time.perf_counter() - started) * 1000
        # three more at once while the first one's exact search still runs: one finds the second slot, two are
        # dropped (busy) and go out without recall at once
        await asyncio.gather(*(router.execute_search("q8", "documents", request_id=f"b{i}") for i in range(3)))
        # labels win: a (deliberately wrong) label gives recall 0 where the exact truth would give 1
        labeled = await router.execute_search(
            "q9", "documents", user_id="user-7", relevant_ids=["not-a-doc"], request_id="lab"
        )
        outcomes = {o["request_id"]: o for o in await _outcomes_for(settings, router, 5)}
    finally:
        await router.stop()
    assert answered_ms < 300, answered_ms  # the answer did not wait for the 400 ms exact search
    one = outcomes["one"]
    assert one["recall_source"] == "exact_sample" and one["recall_at_10"] == 1.0
    assert one["latency_ms"] < 300  # the served search's latency only
    sources = sorted(str(outcomes[f"b{i}"]["recall_source"]) for i in range(3))
    assert sources == ["None", "None", "exact_sample"], sources
    assert outcomes["lab"]["recall_source"] == "labels" and outcomes["lab"]["recall_at_10"] == 0.0
    assert labeled[0][:1] == ["q9-0"]
    # every outcome carries its user's group: the user id's when given, else the request id's (the split's key)
    assert outcomes["lab"]["user_group"] == user_group("user-7")
    assert [outcomes[k]["user_group"] for k in ("one", "b0")] == [user_group("one"), user_group("b0")]
    assert router.stats.exact_samples == {"measured": 2, "busy": 2}


async def test_a_slow_or_failing_exact_search_is_dropped_and_counted(settings: Settings, topics: Topics) -> None:
    results = {}
    for name, backend in (("timeout", SlowExact(exact_ms=5000)), ("error", SlowExact(exact_ms=1, fail=True))):
        router = RouterService(
            settings.effective_bootstrap,
            topics,
            backend,
            preset_ref("last_good"),
            consume_requests=False,
            recall_sample_rate=1.0,
            exact_timeout_ms=300,
        )
        await router.start()
        try:
            await router.execute_search("q1", "documents", request_id=f"{name}-1")
            (outcome,) = await _outcomes_for(settings, router, 1)
        finally:
            await router.stop()
        assert outcome["recall_at_10"] is None and outcome["recall_source"] is None and outcome["error"] is None
        results[name] = router.stats.exact_samples
    assert results == {"timeout": {"timeout": 1}, "error": {"error": 1}}


async def test_unlabeled_load_through_kafka_intake_gets_sampled_recall_once_per_request(
    settings: Settings, topics: Topics
) -> None:
    """What `canary load --unlabeled` sends (produce_load(labeled=False)), consumed by a router from
    search_requests: one outcome per request, the stable sample of them with exact recall, offsets committed
    only after the sampled outcomes are acknowledged (a second router finds nothing left to consume)."""
    bootstrap = settings.effective_bootstrap
    queries = (lambda i: (f"q{i}", tuple(relevant_for(i))), 200)
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), recall_sample_rate=0.1)
    await router.start()
    try:
        report = await produce_load(bootstrap, topics, qps=150, duration=3, queries=queries, labeled=False)
        outcomes = await _outcomes_for(settings, router, report.sent)
        await asyncio.sleep(1.5)  # one commit period
    finally:
        await router.stop()
    assert report.labeled == 0 and len(outcomes) == report.sent > 300
    assert len({o["request_id"] for o in outcomes}) == report.sent
    sampled = {o["request_id"] for o in outcomes if o["recall_source"] == "exact_sample"}
    in_sample = {o["request_id"] for o in outcomes if sampled_for_exact(o["request_id"], 0.1)}
    # A burst (the backlog consumed at the group join) can find all 16 exact slots taken: those samples are
    # dropped, counted as busy, and go out without recall — never queued, never blocking the intake.
    busy = router.stats.exact_samples.get("busy", 0)
    assert sampled <= in_sample and len(in_sample - sampled) == busy < len(in_sample) // 2
    assert router.stats.exact_samples == {"measured": len(sampled), **({"busy": busy} if busy else {})}
    assert 0.05 < len(in_sample) / report.sent < 0.15
    assert all(o["recall_at_10"] == 1.0 for o in outcomes if o["request_id"] in sampled)
    assert all(o["recall_at_10"] is None for o in outcomes if o["request_id"] not in sampled)
    again = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"))
    await again.start()
    try:
        await asyncio.sleep(3)
    finally:
        await again.stop()
    assert again.stats.requests == 0  # every offset was committed, the sampled ones included


# -- rollback on sampled recall, against the same rollback with labels --------------------------------------


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "exactrb", tmp_path_factory.mktemp("exact-worker")) as w:
        yield w


async def _rollback_run(worker: WorkerProcess, labeled: bool, qps: float, seconds: float) -> dict[str, Any]:
    backend: FaultInjectingBackend = make_backend({"candidate_low_recall": Fault(keep_fraction=0.2)})
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    cmd = start_command("candidate_low_recall", weight=0.2)
    dep = cmd.deployment_id
    rolled_back_after: float | None = None
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        while router.ledger.current is None or router.ledger.current.deployment_id != dep:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        load = LoadGenerator(router, qps=qps, labeled=labeled)
        task = asyncio.create_task(load.run(seconds))
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
    return {
        "dep": dep,
        "after_s": rolled_back_after,
        "rollbacks": rollbacks,
        "windows": await read_judged(worker.bootstrap, worker.topics, dep),
        "exact": dict(router.stats.exact_samples),
    }


async def test_unlabeled_load_rolls_back_the_low_recall_candidate_on_sampled_exact_recall(
    worker: WorkerProcess,
) -> None:
    qps = 100.0  # 20 candidate requests/s at weight 0.2: 2 exact samples/s at the default rate
    unlabeled = await _rollback_run(worker, labeled=False, qps=qps, seconds=150)
    labeled = await _rollback_run(worker, labeled=True, qps=qps, seconds=60)
    print(
        f"rollback of candidate_low_recall at {qps:.0f} qps, weight 0.2: labeled {labeled['after_s']:.1f} s, "
        f"unlabeled (exact samples at {DEFAULT_RECALL_SAMPLE_RATE:.0%}) {unlabeled['after_s']:.1f} s; "
        f"exact samples {unlabeled['exact']}"
    )
    for run in (unlabeled, labeled):
        assert len(run["rollbacks"]) == 1, worker.log_tail()
        assert run["rollbacks"][0]["reason"] == "SLO violation: recall_at_10 failed for 2 consecutive buckets"
    evidence = unlabeled["rollbacks"][0]["evidence"]["windows"]
    assert all(w["value"] < 0.30 and set(w["recall_source"]) == {"exact_sample"} for w in evidence)
    # judged on exact samples alone, at least the rule's min_samples (20) of them pooled in each failing window
    assert all(w["evidence"]["recall_source"]["exact_sample"] >= 20 for w in evidence)
    windows = [w for w in unlabeled["windows"] if w["response_count"]]
    sampled = [w for w in windows if w["recall_samples"]]
    assert sampled and all(w["stats"]["recall_source"] == {"exact_sample": w["recall_samples"]} for w in sampled)
    assert all(w["recall_samples"] < w["response_count"] for w in windows)  # a sample, not every request
    assert all(set(w["stats"]["recall_source"]) == {"labels"} for w in labeled["windows"] if w["recall_samples"])
    assert labeled["after_s"] < unlabeled["after_s"] < 120
