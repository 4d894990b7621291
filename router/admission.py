"""Admission: a bounded lane of search slots per arm, so overload is an outcome, not a collapse.

Without it every request taken from Kafka started its search at once; past what the cores can compute, each
search waited behind all the others, every one hit the search timeout and both arms failed together (79 % of
requests errored at 60 queries/s with the real model, issue #25). Here each arm has its own lane:

* at most ``limit`` searches of the arm run at once; a search holds its slot until its work has really ended
  (a timed-out search's thread keeps computing, so its slot stays taken until then: the lane bounds CPU, not
  only waiting);
* up to ``max_queued`` more wait, first come first served, at most ``max_wait_s``;
* a request beyond that is **shed**: its outcome is an error ``overloaded`` (docs/contracts.md) after the time
  it waited, counted in ``canary_router_shed_requests_total{arm}``.

Threads, not priorities: last_good's searches run on the event loop's default executor, every candidate's
(and the work off the serving path: mirrored and result-diff searches) on threads of their own
(:mod:`router.backends.threads` carries the choice to the backend), so a candidate's stuck work never
takes the threads last_good's searches need. Both run at the **same scheduling priority**: a canary compares
the arms under the same conditions. An earlier version niced the candidates' threads (+10) so last_good
kept the cores; with the GIL that inverts priorities — a niced thread that holds the GIL while the kernel
has descheduled it stalls the event loop and every last_good search behind it. Measured in the demo
(candidate_slow at 10 % on 2 busy cores): with the nice, last_good's p95 went past 10 s and it shed
requests, and a healthy candidate at 25 % was starved into a rollback on a busier machine (CI); without
it last_good's p95 stayed at 0.4-0.6 s while candidate_slow was rolled back at its 2nd bucket. What bounds
a costly candidate is its lane, below.

The slots follow the traffic: with ``concurrency`` slots, each running candidate (a lane per deployment) has
``ceil(concurrency · w)`` for its weight ``w`` and last_good ``ceil(concurrency · (1 − Σw))`` (each at least
one). A candidate that costs far more than last_good fills its own lane, is shed and timed out, and its
errors and latency roll it back, while last_good keeps its share of the machine (otherwise both arms slow
down together and the judge must treat it as a shared shock). When a candidate's deployment ends (rolled back,
promoted) the requests still queued in its lane are shed at once instead of starting work nobody will use;
its searches already computing end on their own. A *paused* candidate's queued requests still run: a pause
(the judge's shared-shock pause among them) is not a verdict, and shedding them would add errors to the
candidate's record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from router.backends.threads import CPU_POOL

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_WAIT_MS",
    "Admission",
    "Lane",
    "Overloaded",
    "share_slots",
]

T = TypeVar("T")

LAST_GOOD: Final = "last_good"
DEFAULT_MAX_QUEUED: Final = 64  # requests waiting per arm; more are shed at once
DEFAULT_MAX_WAIT_MS: Final = 2_000  # a request that waited this long is shed (its answer would be too late)


class Overloaded(Exception):
    """The arm's lane is full, or the request waited its longest: shed (error code ``overloaded``)."""


def share_slots(concurrency: int, share: float) -> int:
    """Slots for a lane that carries ``share`` of the traffic out of ``concurrency``: rounded up, at least one."""
    return max(1, math.ceil(max(1, concurrency) * min(1.0, max(0.0, share)) - 1e-9))


@dataclass(slots=True)
class Lane:
    limit: int
    max_queued: int
    running: int = 0
    shed: int = 0
    _waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> bool:
        return self.running == 0 and not self._waiters

    async def acquire(self, max_wait_s: float) -> None:
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queued:
            self.shed += 1
            raise Overloaded(f"{self.running} searches running and {len(self._waiters)} waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait_s):
                await waiter  # release() hands its slot over: running stays counted
        except Overloaded:  # shed_queued(): the lane's candidate stopped running
            self.shed += 1
            raise
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # handed over just as the wait ended: give it back
                self.release()
            else:
                self._discard(waiter)
            self.shed += 1
            raise Overloaded(f"waited {max_wait_s * 1000:.0f} ms for a search slot") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                self._discard(waiter)
            raise

    def shed_queued(self, reason: str) -> None:
        """Shed every request still waiting (their :meth:`acquire` raises :class:`Overloaded`)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Overloaded(reason))

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already handed a slot and popped
            self._waiters.remove(waiter)

    def resize(self, limit: int) -> None:
        """A new number of slots; waiters get the slots a larger limit frees (running searches finish)."""
        self.limit = max(1, limit)
        while self.running < self.limit and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)

    def release(self) -> None:
        if self.running > self.limit:  # the lane shrank: this slot is not handed on
            self.running -= 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the first waiter
                return
        self.running -= 1


class Admission:
    """A :class:`Lane` for last_good and one per running candidate (see the module docstring): a candidate's
    work never holds the slots of the next candidate, e.g. a rolled-back candidate's searches still running."""

    def __init__(
        self,
        concurrency: int,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_wait_ms: int = DEFAULT_MAX_WAIT_MS,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.max_queued = max(0, max_queued)
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self._on_shed = on_shed
        self._shares: dict[str, float] = {}
        self._candidate_pool: ThreadPoolExecutor | None = None
        self.lanes: dict[str, Lane] = {LAST_GOOD: Lane(self.concurrency, self.max_queued)}

    def follow(self, shares: Mapping[str, float], live: Iterable[str] | None = None) -> None:
        """Size the lanes to the running candidates' traffic shares (deployment id → weight); cheap when they
        are unchanged. Lanes of candidates no longer running go once idle; the queue of one whose deployment is
        not ``live`` either (ended, not paused; ``None``: every deployment not in ``shares`` ended) is shed."""
        if shares == self._shares:
            return
        live_ids = None if live is None else set(live)  # read only when the shares changed (per request: lazy)
        for gone in self._shares.keys() - shares.keys():
            if live_ids is not None and gone in live_ids:
                continue  # paused: its queued requests still run
            lane = self.lanes.get(_candidate(gone))
            if lane is not None:
                lane.shed_queued("the candidate's deployment has ended")
        self._shares = dict(shares)
        self.lanes[LAST_GOOD].resize(share_slots(self.concurrency, 1.0 - sum(shares.values())))
        for deployment_id, weight in shares.items():
            key = _candidate(deployment_id)
            lane = self.lanes.get(key)
            if lane is None:
                self.lanes[key] = Lane(share_slots(self.concurrency, weight), self.max_queued)
            else:
                lane.resize(share_slots(self.concurrency, weight))
        self._drop_idle()

    def _drop_idle(self) -> None:
        live = {_candidate(d) for d in self._shares}
        for key in [k for k, lane in self.lanes.items() if k != LAST_GOOD and k not in live and lane.idle]:
            del self.lanes[key]

    def lane(self, arm: str, deployment_id: str | None) -> Lane:
        if arm != "candidate" or deployment_id is None:
            return self.lanes[LAST_GOOD]
        key = _candidate(deployment_id)
        lane = self.lanes.get(key)
        if lane is None:  # routed before follow() saw it (a ring, a stale share): one slot
            lane = self.lanes[key] = Lane(1, self.max_queued)
        return lane

    async def run(self, arm: str, deployment_id: str | None, work: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """``work()`` in the lane of ``arm`` (and the candidate's deployment): :class:`Overloaded` when shed,
        :class:`TimeoutError` when it takes longer than ``timeout_s`` (it then keeps its slot until it ends,
        never cancelled mid-computation)."""
        lane = self.lane(arm, deployment_id)
        try:
            await lane.acquire(self.max_wait_s)
        except Overloaded:
            if self._on_shed is not None:
                self._on_shed(arm)
            raise
        token = CPU_POOL.set(self._pool_for(arm))
        try:
            task = asyncio.ensure_future(work())  # the task copies the context: its CPU work uses that pool
        finally:
            CPU_POOL.reset(token)
        task.add_done_callback(lambda _: self._release(lane))
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.add_done_callback(_consume)
            raise TimeoutError
        return task.result()

    def _pool_for(self, arm: str) -> ThreadPoolExecutor | None:
        if arm != "candidate":
            return None
        if self._candidate_pool is None:
            # as many threads as the default executor has: the lanes, not the pool, bound the work
            self._candidate_pool = ThreadPoolExecutor(
                max_workers=self.concurrency + 4, thread_name_prefix="canary-candidate"
            )
        return self._candidate_pool

    def background_pool(self) -> ThreadPoolExecutor:
        """The candidates' threads, for work off the serving path (mirrored and result-diff searches)."""
        pool = self._pool_for("candidate")
        assert pool is not None
        return pool

    def close(self) -> None:
        if self._candidate_pool is not None:
            self._candidate_pool.shutdown(wait=False, cancel_futures=True)

    def _release(self, lane: Lane) -> None:
        lane.release()
        if lane.idle:
            self._drop_idle()


def _candidate(deployment_id: str) -> str:
    return f"candidate:{deployment_id}"


def _consume(task: asyncio.Future[Any]) -> None:
    """A search finished after its request timed out: its result or error is not anyone's any more."""
    if not task.cancelled():
        task.exception()
