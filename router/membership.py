"""A router's membership in the ``search_requests`` consumer group: commits that never restart a rebalance,
rebalances that lose nothing, and a true answer to "is this router taking requests?".

Why commits wait for the rebalance (docs/adr/0003-request-group-membership.md): a commit sent while this
member's own JoinGroup is pending reaches the coordinator after that join completes, still carrying the old
generation: ``ILLEGAL_GENERATION``, and aiokafka 0.14 rejoins. When that member leads the group its rejoin
starts the next rebalance, the other routers take up to a heartbeat interval to follow, the next commit
(one per second) lands in that window again — and the group rebalances for ever while the leader's
partitions are never read: the "zombie router" of issue #19. So no commit is sent between
``on_partitions_revoked`` and ``on_partitions_assigned``; the revocation callback makes the last commit
before the JoinGroup leaves, while the generation is still valid.

Nothing is lost across a rebalance: only offsets whose outcomes the broker acknowledged are committed
(:class:`router.offsets.OffsetTracker`), a partition's progress starts afresh at every assignment (aiokafka
resumes it from the committed offset), and records fetched before a rebalance began are not started after
it (they are read again by whoever owns their partition now; a request served twice is counted once by
the windows stage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from canary.errors import KafkaError
from router.offsets import OffsetTracker

# Why a consumer is not taking requests. joining: a rebalance does not complete; no_records: partitions
# with requests waiting, free slots, and nothing arrives; busy: every in-flight slot is held (slow
# searches or outcomes awaiting acknowledgement); broker: the broker does not answer, so nothing can be
# confirmed. Only the first two are the consumer's own fault, and only they are healed by renewing it.
StallKind = Literal["joining", "no_records", "busy", "broker"]
RENEWABLE: Final[frozenset[StallKind]] = frozenset({"joining", "no_records"})

DEFAULT_STALL_AFTER_S: Final = 10.0  # a rebalance waiting for a killed peer's 10 s session is the slow normal case
DEFAULT_RENEW_AFTER_S: Final = 30.0  # aiokafka's rebalance timeout: no join legitimately takes longer
COMMIT_TIMEOUT_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 2.0


class RequestIntakeFailed(KafkaError):
    """The request consumer takes no requests and fresh group members did not help: the router exits."""


@dataclass(frozen=True, slots=True)
class Stall:
    kind: StallKind
    reason: str
    since: float  # monotonic seconds

    def lasted(self, now: float) -> float:
        return now - self.since


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: RequestGroup) -> None:
        self.group = group

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.group.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.group.assigned(assigned)


class RequestGroup:
    """Commit gate, rebalance epochs and stall detection for one request consumer (which the router may
    replace: :attr:`consumer` is the current one)."""

    def __init__(
        self,
        tracker: OffsetTracker,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.consumer: AIOKafkaConsumer | None = None
        # Bumped when a rebalance begins and when it ends: a batch fetched in an older epoch is not started.
        self.epoch = 0
        self.owned: frozenset[TopicPartition] = frozenset()
        self.rebalancing_since: float | None = clock()  # joining until the first assignment
        self.commit_error: str | None = None
        self.commits_failed = 0  # in a row
        self.proven = False  # took a request, or read every owned partition to its end, since it joined
        self._taken_at: dict[TopicPartition, float] = {}
        self._next: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._stall: Stall | None = None

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    # -- rebalances ---------------------------------------------------------------------------------------
    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self.epoch += 1
        self.rebalancing_since = self.clock()
        owned, self.owned = self.owned, frozenset()  # the gate: no commit until the next assignment
        try:
            # Waits for a commit in flight, so none reaches the coordinator behind our JoinGroup; then the
            # last commit of this generation (a rejoin after a lost membership fails it, harmlessly).
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                async with self._lock:
                    await self._commit(owned)
        except TimeoutError:
            pass
        for tp in partitions:
            self.tracker.forget(tp.topic, tp.partition)
            self._taken_at.pop(tp, None)
            self._next.pop(tp, None)

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self.epoch += 1
        now = self.clock()
        self.owned = frozenset(partitions)
        self.rebalancing_since = None
        for tp in self.owned:
            # aiokafka resumes every assigned partition from its committed offset: progress starts afresh.
            self.tracker.forget(tp.topic, tp.partition)
        self._taken_at = dict.fromkeys(self.owned, now)
        self._next = {}

    def renewed(self, consumer: AIOKafkaConsumer) -> None:
        """A fresh consumer replaces the current one (it joins as a new member)."""
        self.consumer = consumer
        self.epoch += 1
        self.owned = frozenset()
        self.rebalancing_since = self.clock()
        self.proven = False
        self._stall = None

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self._taken_at[tp] = self.clock()
        self._next[tp] = offset + 1
        self.proven = True

    # -- commits ------------------------------------------------------------------------------------------
    async def commit(self) -> None:
        """Commit every owned partition's acknowledged prefix; nothing while a rebalance runs."""
        if not self.owned:
            return
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                async with self._lock:
                    await self._commit(self.owned)  # read after the lock: a revocation may have emptied it
        except TimeoutError:
            self._commit_failed(f"no answer within {COMMIT_TIMEOUT_S:.0f} s")

    async def _commit(self, owned: frozenset[TopicPartition]) -> None:
        consumer = self.consumer
        if consumer is None or not owned:
            return
        offsets = {
            tp: offset
            for (topic, partition), offset in self.tracker.committable().items()
            if (tp := TopicPartition(topic, partition)) in owned
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # aiokafka has already asked for a rejoin where one helps
            self._commit_failed(f"{type(exc.__cause__ or exc).__name__}: {exc}")
        else:
            self.commits_failed = 0
            self.commit_error = None

    def _commit_failed(self, error: str) -> None:
        self.commits_failed += 1
        self.commit_error = error

    # -- is it consuming? ---------------------------------------------------------------------------------
    @property
    def stall(self) -> Stall | None:
        """The last :meth:`check`'s answer: why requests are not being taken, or None."""
        return self._stall

    async def check(self, slots_free: bool) -> Stall | None:
        """Is the consumer taking requests? Cheap when it is (no broker request while every owned partition
        was read from within ``stall_after_s``); otherwise asks the broker whether requests are waiting."""
        self._stall = await self._evaluate(slots_free)
        return self._stall

    async def _evaluate(self, slots_free: bool) -> Stall | None:
        now = self.clock()
        if self.rebalancing_since is not None:
            waited = now - self.rebalancing_since
            if waited < self.stall_after_s:
                return None
            what = f"joining the consumer group for {waited:.0f} s"
            if not slots_free:
                # aiokafka does not rejoin for a consumer that is not polled (max_poll_interval_ms): the
                # slots are the cause, and a fresh member would not be polled either.
                return Stall("busy", f"{what}: every in-flight slot is held, so nothing polls", self.rebalancing_since)
            if self.consumer is not None:
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        await self.consumer.topics()
                except Exception as exc:  # nobody can join a group the broker does not serve: wait for it
                    return Stall(
                        "broker",
                        f"{what}: the broker does not answer ({type(exc).__name__}: {exc})",
                        self.rebalancing_since,
                    )
            return Stall("joining", what, self.rebalancing_since)
        quiet = sorted(
            (tp for tp in self.owned if now - self._taken_at.get(tp, now) >= self.stall_after_s),
            key=lambda tp: tp.partition,
        )
        consumer = self.consumer
        if not quiet or consumer is None:
            return None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                ends = await consumer.end_offsets(quiet)
                waiting: dict[TopicPartition, int] = {}
                for tp in quiet:
                    start = self._next.get(tp)
                    if start is None:
                        start = await consumer.committed(tp) or 0
                    if ends[tp] > start:
                        waiting[tp] = ends[tp] - start
                    else:
                        self._taken_at[tp] = now  # read to its end: idle, not stalled
                        self.proven = True
        except Exception as exc:
            previous = self._stall
            since = previous.since if previous is not None and previous.kind == "broker" else now
            return Stall("broker", f"the broker does not answer ({type(exc).__name__}: {exc})", since)
        if not waiting:
            return None
        since = min(self._taken_at[tp] for tp in waiting)
        what = (
            f"partitions {sorted(tp.partition for tp in waiting)} hold {sum(waiting.values())} request(s) and "
            f"none was taken for {now - since:.0f} s"
        )
        if not slots_free:
            return Stall(
                "busy", f"{what}: every in-flight slot is held (slow searches or outcomes not acknowledged)", since
            )
        return Stall("no_records", f"{what}, although slots are free", since)
