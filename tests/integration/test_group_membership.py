"""Issue #19 (group membership that heals) on the real broker, with routers in this process.

* A rejoin of the group's leader — aiokafka does it by itself after a failed commit or heartbeat — used to
  start a rebalance that never ended: the leader's next commit (one per second) waited behind its own
  JoinGroup, came back ILLEGAL_GENERATION, made it rejoin again, and its partitions were never read.
* A request consumer that takes nothing although requests wait (here: its partitions paused) is reported
  by /readyz and on the state topic, and replaced by a fresh group member that serves them.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import make_backend, preset_ref, read_all
from router.service import RouterService, now_ms
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.kafka


def _generation(router: RouterService) -> int:
    assert router.intake.consumer is not None
    return int(router.intake.consumer._coordinator.generation)


async def test_a_leader_rejoin_ends_in_one_rebalance_and_every_partition_is_served(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.effective_bootstrap
    routers = [
        RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), router_id=f"member-{i}")
        for i in range(2)
    ]
    for router in routers:
        await router.start()
    try:
        async with Traffic(bootstrap, topics) as traffic:
            while {tp.partition for r in routers for tp in r.intake.group.owned} != {0, 1, 2}:
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)
            # The trigger aiokafka pulls by itself after a failed commit or heartbeat (fault injection: its
            # coordinator has no public API for it), on the member that leads the group: the one that
            # computed the assignment.
            leader = next(
                r for r in routers if r.intake.consumer and r.intake.consumer._coordinator._group_subscription
            )
            assert leader.intake.consumer is not None
            leader.intake.consumer._coordinator.request_rejoin()
            rejoined_at = time.monotonic()
            await asyncio.sleep(8)
            settled = {r.router_id: _generation(r) for r in routers}
            worst_wait = 0.0
            for _ in range(20):  # 10 s more: no further rebalance, and no partition left waiting
                await asyncio.sleep(0.5)
                for p in range(3):
                    since = traffic.waiting_since(p)
                    if since is not None:
                        worst_wait = max(worst_wait, time.monotonic() - since)
            generations = {r.router_id: _generation(r) for r in routers}
            traffic.stop_sending()
            assert await traffic.drained(15), f"{len(set(traffic.sent) - set(traffic.answered))} unanswered"
            failed_commits = [r.intake.group.commits_failed for r in routers]
    finally:
        for router in routers:
            await router.stop()
    assert generations == settled, f"the group kept rebalancing: {settled} -> {generations}"
    assert worst_wait < 5.0, f"a partition waited {worst_wait:.1f} s after the rebalance"
    assert failed_commits == [0, 0]
    assert time.monotonic() - rejoined_at < 60


async def test_a_consumer_that_takes_nothing_is_reported_and_replaced_by_a_fresh_member(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.effective_bootstrap
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), heartbeat_seconds=1.0)
    router.intake.group.stall_after_s = 2.0
    router.intake.renew_after_s = 6.0
    await router.start()
    try:
        async with Traffic(bootstrap, topics, qps=30) as traffic:
            await asyncio.sleep(2)
            assert router.readiness()["consuming"] == (True, "taking requests")
            stalled_consumer = router.intake.consumer
            assert stalled_consumer is not None
            stalled_consumer.pause(*stalled_consumer.assignment())  # fetches nothing any more
            paused_at = now_ms()
            reported: tuple[bool, str] | None = None
            deadline = time.monotonic() + 20
            while router.intake.consumer is stalled_consumer and time.monotonic() < deadline:
                ok, detail = router.readiness()["consuming"]
                if not ok:
                    reported = (ok, detail)
                await asyncio.sleep(0.2)
            assert router.intake.consumer is not stalled_consumer, "the stalled consumer was not replaced"
            assert reported is not None and "none was taken" in reported[1] and "slots are free" in reported[1]
            traffic.stop_sending()
            assert await traffic.drained(30), f"{len(set(traffic.sent) - set(traffic.answered))} unanswered"
            assert router.readiness()["consuming"] == (True, "taking requests")
            # ... and it says so on the state topic (canary status): the stall, then — once the fresh member
            # holds the partitions again (a rebalance: seconds on a loaded machine) — a state without it.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                states = [s for s in await read_all(bootstrap, topics.state) if s["router_id"] == router.router_id]
                stalled = [s for s in states if s["requests_stalled"] and s["applied_at_ms"] >= paused_at]
                healed = stalled and [
                    s
                    for s in states
                    if s["applied_at_ms"] > stalled[-1]["applied_at_ms"]
                    and s["requests_stalled"] is None
                    and s["request_partitions"] == [0, 1, 2]
                ]
                if healed:
                    break
                await asyncio.sleep(0.5)
            renewals = router.metrics.request_consumer_renewals._value.get()
    finally:
        await router.stop()
    assert renewals == 1
    assert stalled and "none was taken" in stalled[0]["requests_stalled"]
    assert stalled[0]["request_partitions"] == [0, 1, 2]
    later = [s for s in states if s["applied_at_ms"] > stalled[-1]["applied_at_ms"]]
    assert later and any(s["requests_stalled"] is None and s["request_partitions"] == [0, 1, 2] for s in later)
    assert all(s["requests_stalled"] is None for s in later)  # once healed, never reported stalled again
