"""The router's admission lanes (router/admission.py): bounded concurrency per arm and per candidate, a bounded
wait, shedding."""

from __future__ import annotations

import asyncio

import pytest

from router.admission import Admission, Overloaded, share_slots


@pytest.mark.parametrize(
    ("concurrency", "share", "slots"),
    [(2, 0.0, 1), (2, 0.1, 1), (2, 0.5, 1), (2, 0.9, 2), (2, 1.0, 2), (8, 0.25, 2), (8, 0.3, 3), (0, 0.5, 1)],
)
def test_a_lane_gets_its_share_of_the_slots_rounded_up_and_at_least_one(
    concurrency: int, share: float, slots: int
) -> None:
    assert share_slots(concurrency, share) == slots


def test_lanes_follow_the_split() -> None:
    admission = Admission(8)
    assert admission.lanes["last_good"].limit == 8
    admission.follow({"d1": 0.25, "d2": 0.1})
    assert (admission.lanes["last_good"].limit, admission.lane("candidate", "d1").limit) == (6, 2)
    assert admission.lane("candidate", "d2").limit == 1
    assert admission.lane("last_good", "d1") is admission.lanes["last_good"]
    admission.follow({"d2": 0.1})  # d1 rolled back: its idle lane goes
    assert "candidate:d1" not in admission.lanes and admission.lanes["last_good"].limit == 8


async def test_no_more_than_the_limit_run_at_once_and_waiters_go_in_order() -> None:
    admission = Admission(4, max_queued=10, max_wait_ms=5_000)
    admission.follow({"d": 0.5})  # the candidate's lane: 2 slots
    running, peak, order = 0, 0, []

    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        order.append(i)
        await asyncio.sleep(0.02)
        running -= 1
        return i

    results = await asyncio.gather(*(admission.run("candidate", "d", lambda i=i: work(i), 5.0) for i in range(8)))
    assert results == list(range(8))
    assert peak == 2
    assert order == list(range(8))
    lane = admission.lane("candidate", "d")
    assert (lane.running, lane.queued, lane.shed) == (0, 0, 0)


async def test_a_full_queue_sheds_at_once_and_counts() -> None:
    shed: list[str] = []
    admission = Admission(2, max_queued=1, max_wait_ms=5_000, on_shed=shed.append)
    admission.follow({"d": 0.1})  # candidate: 1 slot
    gate = asyncio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(admission.run("candidate", "d", blocked, 5.0))
    second = asyncio.create_task(admission.run("candidate", "d", blocked, 5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="1 searches running and 1 waiting"):
        await admission.run("candidate", "d", blocked, 5.0)
    assert shed == ["candidate"]
    # last_good has its own lane: the candidate's backlog never delays it
    assert await admission.run("last_good", "d", lambda: asyncio.sleep(0, "lg"), 1.0) == "lg"
    gate.set()
    assert await first == "done" and await second == "done"


async def test_a_new_candidate_never_waits_behind_a_rolled_back_ones_work() -> None:
    admission = Admission(2, max_queued=5, max_wait_ms=100)
    admission.follow({"slow": 0.1})
    gate = asyncio.Event()
    stuck = asyncio.create_task(admission.run("candidate", "slow", gate.wait, 5.0))
    await asyncio.sleep(0.01)
    admission.follow({"next": 0.1})  # "slow" rolled back; its search still computes
    assert "candidate:slow" in admission.lanes  # kept while busy
    assert await admission.run("candidate", "next", lambda: asyncio.sleep(0, "served"), 1.0) == "served"
    gate.set()
    await stuck
    assert "candidate:slow" not in admission.lanes  # gone once idle


async def test_a_request_that_waits_too_long_is_shed_and_leaves_the_queue() -> None:
    admission = Admission(2, max_queued=5, max_wait_ms=50)
    admission.follow({"d": 0.1})
    gate = asyncio.Event()
    holder = asyncio.create_task(admission.run("candidate", "d", gate.wait, 5.0))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded, match="waited 50 ms"):
        await admission.run("candidate", "d", gate.wait, 5.0)
    assert 0.04 <= loop.time() - started < 1.0
    lane = admission.lane("candidate", "d")
    assert (lane.running, lane.queued, lane.shed) == (1, 0, 1)
    gate.set()
    await holder
    assert lane.running == 0


async def test_a_timed_out_search_keeps_its_slot_until_its_work_ends() -> None:
    """The lane bounds the work, not only the waiting: a search past its timeout is not cancelled (a worker
    thread could not be stopped anyway) and its slot frees only when it ends."""
    admission = Admission(2, max_queued=5, max_wait_ms=5_000)
    admission.follow({"d": 0.1})
    gate = asyncio.Event()
    finished: list[bool] = []

    async def slow() -> None:
        await gate.wait()
        finished.append(True)

    with pytest.raises(TimeoutError):
        await admission.run("candidate", "d", slow, 0.02)
    lane = admission.lane("candidate", "d")
    assert lane.running == 1  # still computing
    waiter = asyncio.create_task(admission.run("candidate", "d", lambda: asyncio.sleep(0, "next"), 5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done() and lane.queued == 1
    gate.set()
    assert await waiter == "next"
    assert finished == [True] and lane.running == 0


async def test_a_growing_share_hands_slots_to_waiters_and_a_shrinking_one_takes_them_back() -> None:
    admission = Admission(4, max_queued=10, max_wait_ms=5_000)
    admission.follow({"d": 0.25})  # 1 slot
    gate = asyncio.Event()
    tasks = [asyncio.create_task(admission.run("candidate", "d", gate.wait, 5.0)) for _ in range(3)]
    await asyncio.sleep(0.01)
    lane = admission.lane("candidate", "d")
    assert (lane.running, lane.queued) == (1, 2)
    admission.follow({"d": 0.5})  # 2 slots: one waiter starts at once
    assert (lane.running, lane.queued) == (2, 1)
    admission.follow({"d": 0.25})  # back to 1: running searches finish, no new one starts
    assert lane.limit == 1 and lane.running == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert (lane.running, lane.queued) == (0, 0)


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    admission = Admission(2, max_queued=5, max_wait_ms=5_000)
    admission.follow({"d": 0.1})
    gate = asyncio.Event()
    holder = asyncio.create_task(admission.run("candidate", "d", gate.wait, 5.0))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(admission.run("candidate", "d", gate.wait, 5.0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    lane = admission.lane("candidate", "d")
    assert (lane.running, lane.queued) == (1, 0)
    gate.set()
    await holder
    assert lane.running == 0


async def test_a_candidates_cpu_work_runs_on_its_own_threads_at_last_goods_priority() -> None:
    """The backend's CPU work goes to the executor the lane chose (router/backends/threads.py): the candidates'
    threads, not last_good's, but at the same scheduling priority (a niced thread holding the GIL stalls
    everyone: router/admission.py)."""
    import os
    import threading

    from router.backends.threads import run_cpu

    admission = Admission(2)
    admission.follow({"d": 0.1})

    def where() -> tuple[str, int]:
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, 0)
    name, nice = await admission.run("candidate", "d", lambda: run_cpu(where), 5.0)
    assert name.startswith("canary-candidate") and nice == base
    name, nice = await admission.run("last_good", None, lambda: run_cpu(where), 5.0)
    assert not name.startswith("canary-candidate") and nice == base
    # work off the serving path (mirrored and result-diff searches) uses the candidates' threads
    name, nice = await asyncio.get_running_loop().run_in_executor(admission.background_pool(), where)
    assert name.startswith("canary-candidate") and nice == base
    admission.close()


async def test_the_queue_of_a_candidate_whose_deployment_ends_is_shed_at_once() -> None:
    """Rolled back (or promoted): its queued requests do not start work nobody will use; the search already
    computing ends on its own and keeps its slot until then."""
    shed: list[str] = []
    admission = Admission(2, max_queued=5, max_wait_ms=10_000, on_shed=shed.append)
    admission.follow({"slow": 0.1})
    gate = asyncio.Event()
    started: list[int] = []

    async def work(i: int) -> int:
        started.append(i)
        await gate.wait()
        return i

    running = asyncio.create_task(admission.run("candidate", "slow", lambda: work(0), 30.0))
    queued = [asyncio.create_task(admission.run("candidate", "slow", lambda i=i: work(i), 30.0)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    lane = admission.lane("candidate", "slow")
    assert (lane.running, lane.queued) == (1, 2)
    admission.follow({})  # rolled back
    for task in queued:
        with pytest.raises(Overloaded, match="deployment has ended"):
            await asyncio.wait_for(task, 1.0)  # at once, not after max_wait_ms
    assert shed == ["candidate", "candidate"] and lane.shed == 2 and lane.running == 1
    gate.set()
    assert await running == 0 and started == [0]
    assert "candidate:slow" not in admission.lanes


async def test_a_paused_candidates_queued_requests_still_run() -> None:
    """A pause (the judge's shared-shock pause among them) is not a verdict: shedding its queue would add errors
    to the candidate's record."""
    shed: list[str] = []
    admission = Admission(2, max_queued=5, max_wait_ms=10_000, on_shed=shed.append)
    admission.follow({"d": 0.1}, {"d"})
    gate = asyncio.Event()

    async def work(i: int) -> int:
        await gate.wait()
        return i

    tasks = [asyncio.create_task(admission.run("candidate", "d", lambda i=i: work(i), 30.0)) for i in range(3)]
    await asyncio.sleep(0.01)
    admission.follow({}, {"d"})  # paused: no traffic share, still live
    gate.set()
    assert [await t for t in tasks] == [0, 1, 2] and shed == []
