"""The request consumer's membership without Kafka: the commit gate and epochs around a rebalance, offsets of
revoked partitions, the stall a long join is, readiness, and the exit when fresh members do not help.
(On the real broker: tests/integration/test_group_membership.py and test_router_crash.py.)"""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from canary.kafka.topics import Topics
from devtools.harness import make_backend, preset_ref
from router.membership import RequestGroup, RequestIntakeFailed
from router.offsets import OffsetTracker
from router.service import RouterService

P0 = TopicPartition("t.search_requests", 0)
P1 = TopicPartition("t.search_requests", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_offset_finished_after_its_partition_was_revoked_is_ignored() -> None:
    tracker = OffsetTracker()
    tracker.started(P0.topic, 0, 10)
    tracker.forget(P0.topic, 0)
    tracker.finished(P0.topic, 0, 10)  # an outcome acknowledged after the rebalance: no KeyError
    assert tracker.committable() == {}
    tracker.started(P0.topic, 0, 7)  # the partition is back, resumed from its committed offset
    assert tracker.committable() == {(P0.topic, 0): 7}
    tracker.finished(P0.topic, 0, 7)
    assert tracker.committable() == {(P0.topic, 0): 8}


async def test_a_rebalance_closes_the_commit_gate_and_bumps_the_epoch() -> None:
    clock = Clock()
    tracker = OffsetTracker()
    group = RequestGroup(tracker, stall_after_s=10, clock=clock)
    assert group.rebalancing_since == clock.now  # joining until the first assignment
    group.assigned([P0, P1])
    epoch = group.epoch
    assert group.owned == {P0, P1} and group.rebalancing_since is None
    group.taken(P0, 41)
    tracker.started(P0.topic, 0, 41)
    await group.revoked([P0, P1])
    assert group.epoch == epoch + 1  # a batch fetched before this is not started any more
    assert group.owned == frozenset()  # nothing is committed until the next assignment
    assert tracker.committable() == {}  # the next owner resumes from the committed offset
    await group.commit()  # a no-op while rebalancing (and without a consumer)
    group.assigned([P1])
    assert group.epoch == epoch + 2 and group.owned == {P1}


async def test_a_join_that_does_not_complete_is_a_stall() -> None:
    clock = Clock()
    group = RequestGroup(OffsetTracker(), stall_after_s=10, clock=clock)
    group.assigned([P0])
    await group.revoked([P0])
    clock.now += 9
    assert await group.check(slots_free=True) is None  # a rebalance waiting for a killed peer's session
    clock.now += 3
    stall = await group.check(slots_free=True)
    assert stall is not None and stall.kind == "joining"
    assert stall.reason == "joining the consumer group for 12 s"
    assert stall.lasted(clock.now) == 12
    group.assigned([P0])
    assert await group.check(slots_free=True) is None


async def test_readiness_says_whether_the_router_takes_requests() -> None:
    router = RouterService("unused:9092", Topics("t."), make_backend(), preset_ref("last_good"))
    clock = Clock()
    router.intake.group = RequestGroup(router.intake.offsets, stall_after_s=10, clock=clock)
    router.intake.group.assigned([P0])
    assert router.readiness()["consuming"] == (True, "taking requests")
    assert router.readiness()["assigned"] == (True, "t.search_requests partitions [0]")
    await router.intake.group.revoked([P0])
    clock.now += 15
    await router.intake.group.check(slots_free=True)
    ok, detail = router.readiness()["consuming"]
    assert not ok and detail == "joining the consumer group for 15 s"
    state = router.control.current_state(None, heartbeat=True)
    assert state.requests_stalled == "joining the consumer group for 15 s"
    assert state.request_partitions == ()


async def test_a_router_whose_fresh_members_do_not_help_exits_with_the_reason() -> None:
    router = RouterService("unused:9092", Topics("t."), make_backend(), preset_ref("last_good"))
    clock = Clock()
    router.intake.group = RequestGroup(router.intake.offsets, stall_after_s=10, clock=clock)
    router.intake.renewals = router.intake.max_renewals  # three fresh members already joined and stalled again
    clock.now += router.intake.renew_after_s  # joining since the start, for renew_after_s
    with pytest.raises(RequestIntakeFailed, match=r"still takes no requests after 3 fresh group member\(s\)"):
        await router.intake.check()
