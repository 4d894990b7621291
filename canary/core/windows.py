"""Tumbling event-time windows: time math, per-producer watermarks and exactly-once finalization.

Nothing here reads a clock: every call takes ``now_ms`` (processing time), so live agents pass wall time,
replay passes the records' arrival times, and tests are deterministic.

**Watermarks.** Each producer (router) writes :class:`~canary.core.models.RouterWatermark` records into
every ``search_results`` partition: "every outcome I stamped up to ``watermark_ms`` — in my own clock —
is on this partition before this record". A partition's event-time watermark is the minimum over its
*live* producers (seen within ``router_timeout_ms`` of processing time, not stopped). Event time stays
each producer's own clock, so clock skew between routers costs only a delay, never data. Producers that
never send a watermark (third-party ones) are covered by the old heuristic — their highest event time
extrapolated by the processing time since they last delivered, minus ``grace_ms`` — and when no producer is
live at all the same extrapolation still closes the last windows (a processing-time bound).

**Bounded event time.** An outcome more than ``future_bound_ms`` ahead of its producer's watermark (or of
processing time, for a producer that sent none) is refused as ``future_ts`` and moves nothing.

**Late data is never excluded.** An outcome whose window was already emitted is aggregated into its key's
next unemitted window (and counted in that window's ``late_count``): its latency, error and recall still
count, one window later.

**One outcome per request.** Outcomes are deduplicated by ``(deployment_id, request_id)`` for
``dedup_retention_ms`` after their window: a request re-processed after a rebalance (another router, a
new ``event_id``) counts once; the first outcome seen in partition order wins.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec.structs
import numpy as np

from canary.core.aggregations import OutcomeColumns, WindowAggregate, WindowAggregator
from canary.core.columns import ColumnBatch
from canary.core.dedup import MemoryFactory, ReferenceRequestMemory
from canary.core.models import RouterWatermark, RuleVerdict, SearchOutcome, WindowKey, WindowResult
from canary.errors import SHAPE_ERRORS, InvalidEvent

Judge = Callable[[WindowResult], Sequence[RuleVerdict]]
"""Computes a finalized window's verdicts; the finalizer stores them in ``WindowResult.verdicts``."""
AggregatorSource = WindowAggregator | Callable[[WindowKey], WindowAggregator]
Item = SearchOutcome | RouterWatermark

_COUNTED_LABELS = 4096  # a batch's groups are counted by a bincount of at most this many labels, else sorted
_NEG = -(2**62)  # "no watermark yet", small enough for any epoch-ms arithmetic to stay in int64

WINDOW_MS = 5000  # the spec's 5-second buckets
GRACE_MS = 1000  # event-time grace after a window ends before it closes
IDLE_WINDOWS = 12  # empty windows in a row that end a key's series
DEFAULT_ROUTER_TIMEOUT_MS = 5000
DEFAULT_FUTURE_BOUND_MS = 10_000
DEFAULT_DEDUP_RETENTION_MS = 60_000
"""How long after its window a request is remembered: covers a router takeover (session timeout 10 s) and
its redelivered backlog with room to spare, while keeping checkpoints small."""


def window_bounds(ts_ms: int, size_ms: int = WINDOW_MS) -> tuple[int, int]:
    start = ts_ms - ts_ms % size_ms
    return start, start + size_ms


def request_key(deployment_id: str | None, request_id: str) -> int:
    """A request's identity within its deployment as a 64-bit number: bounded memory and small checkpoints.
    Two independent 32-bit checksums of ``<deployment or ->|<request id>`` (C speed; the hot path runs this
    per outcome) make an accidental collision among the ~10^5 requests remembered at once about 10^-9 likely."""
    return request_keys_of(deployment_id, (request_id,))[0]


def request_keys_of(deployment_id: str | None, request_ids: Sequence[str]) -> list[int]:
    """:func:`request_key` of many requests of one deployment: both checksums continue from the prefix's,
    so no per-request string is built."""
    crc32, adler32 = zlib.crc32, zlib.adler32
    prefix = f"{deployment_id or '-'}|".encode()
    crc0, adler0 = crc32(prefix), adler32(prefix)
    encoded = [r.encode() for r in request_ids]
    return [(crc32(b, crc0) << 32) | adler32(b, adler0) for b in encoded]


@dataclass(slots=True)
class _ProducerMark:
    watermark: int
    seen_at: int  # processing time of its last watermark record
    stopped: bool = False


@dataclass(slots=True)
class PartitionClock:
    """Event-time progress of one source partition (see the module docstring)."""

    router_timeout_ms: int = DEFAULT_ROUTER_TIMEOUT_MS
    future_bound_ms: int = DEFAULT_FUTURE_BOUND_MS
    grace_ms: int = GRACE_MS
    producers: dict[str, _ProducerMark] = field(default_factory=dict)
    legacy_max_ts: int | None = None  # outcomes of producers that never sent a watermark
    legacy_seen_at: int | None = None
    max_ts: int | None = None  # every accepted outcome, for the processing-time bound
    last_arrival: int | None = None
    departed: int = 0  # producers that left the live set by timing out
    idle_since: int | None = None  # the consumer found this partition empty (caught up, nothing ever seen)

    def on_watermark(self, mark: RouterWatermark, now_ms: int) -> None:
        prev = self.producers.get(mark.router_id)
        if prev is not None and not prev.stopped and now_ms - prev.seen_at > self.router_timeout_ms:
            self.departed += 1  # it had timed out and comes back
        wm = mark.watermark_ms if prev is None else max(prev.watermark, mark.watermark_ms)
        self.producers[mark.router_id] = _ProducerMark(wm, now_ms, mark.status == "stop")

    def accepts(self, router_id: str, ts: int, now_ms: int) -> bool:
        """False when ``ts`` is beyond the event-time bound (``future_ts``)."""
        p = self.producers.get(router_id)
        limit = (p.watermark if p is not None else now_ms) + self.future_bound_ms
        return ts <= limit

    def on_outcome(self, router_id: str, ts: int, now_ms: int) -> None:
        if router_id not in self.producers:
            self.legacy_max_ts = ts if self.legacy_max_ts is None else max(self.legacy_max_ts, ts)
            self.legacy_seen_at = now_ms if self.legacy_seen_at is None else max(self.legacy_seen_at, now_ms)
        self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
        self.last_arrival = now_ms if self.last_arrival is None else max(self.last_arrival, now_ms)

    def live_producers(self, now_ms: int) -> list[str]:
        return sorted(
            r for r, p in self.producers.items() if not p.stopped and now_ms - p.seen_at <= self.router_timeout_ms
        )

    def watermark(self, now_ms: int) -> int | None:
        marks = [self.producers[r].watermark for r in self.live_producers(now_ms)]
        legacy_live = self.legacy_seen_at is not None and now_ms - self.legacy_seen_at <= self.router_timeout_ms
        if self.legacy_max_ts is not None and self.legacy_seen_at is not None and (legacy_live or not marks):
            marks.append(self.legacy_max_ts + max(0, now_ms - self.legacy_seen_at) - self.grace_ms)
        if marks:
            return min(marks)
        # Nobody live: the processing-time bound closes the last windows once traffic has stopped.
        if self.max_ts is None or self.last_arrival is None:
            if self.idle_since is not None and not self.producers:
                # An empty partition holds nothing back: its event time is processing time. A later
                # outcome for a window this passed counts in the next window (it is never dropped).
                return now_ms - self.grace_ms
            return None
        top = max([self.max_ts, *(p.watermark for p in self.producers.values())])
        return top + max(0, now_ms - self.last_arrival) - self.grace_ms

    def reseed(self, now_ms: int) -> None:
        """After a restore: processing-time stamps restart now (extrapolating over the downtime would
        declare the whole backlog late)."""
        for p in self.producers.values():
            p.seen_at = now_ms
        if self.legacy_seen_at is not None:
            self.legacy_seen_at = now_ms
        if self.last_arrival is not None:
            self.last_arrival = now_ms

    def copy(self) -> PartitionClock:
        """A clock to try watermark records on (a producer's mark is replaced whole, never changed in place);
        written out rather than ``dataclasses.replace``, five times slower on every live batch."""
        return PartitionClock(
            self.router_timeout_ms,
            self.future_bound_ms,
            self.grace_ms,
            dict(self.producers),
            self.legacy_max_ts,
            self.legacy_seen_at,
            self.max_ts,
            self.last_arrival,
            self.departed,
            self.idle_since,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "producers": {
                r: {"watermark": p.watermark, "stopped": p.stopped} for r, p in sorted(self.producers.items())
            },
            "legacy_max_ts": self.legacy_max_ts,
            "max_ts": self.max_ts,
            "departed": self.departed,
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], now_ms: int, *, router_timeout_ms: int, future_bound_ms: int, grace_ms: int
    ) -> PartitionClock:
        clock = cls(router_timeout_ms, future_bound_ms, grace_ms)
        clock.producers = {
            str(r): _ProducerMark(int(p["watermark"]), now_ms, bool(p["stopped"])) for r, p in d["producers"].items()
        }
        clock.legacy_max_ts = None if d["legacy_max_ts"] is None else int(d["legacy_max_ts"])
        clock.legacy_seen_at = None if clock.legacy_max_ts is None else now_ms
        clock.max_ts = None if d["max_ts"] is None else int(d["max_ts"])
        clock.last_arrival = None if clock.max_ts is None else now_ms
        clock.departed = int(d.get("departed", 0))
        return clock


@dataclass
class AddResult:
    """What one ``add`` refused or moved, for dead-lettering and stats."""

    late: list[SearchOutcome] = field(default_factory=list)  # aggregated into a later window
    future: list[SearchOutcome] = field(default_factory=list)  # refused: beyond the event-time bound
    duplicates: int = 0  # dropped: the request was already counted
    watermarks: int = 0

    def merge(self, other: AddResult) -> None:
        """Add ``other``'s counts and lists to these (results of several ``add`` calls as one)."""
        self.late.extend(other.late)
        self.future.extend(other.future)
        self.duplicates += other.duplicates
        self.watermarks += other.watermarks


@dataclass(slots=True)
class _Batch:
    """What one ``add`` call works with: the partition's clock, processing time, the other partitions'
    watermark floor, the finalizer's watermark, the live producers (they change at watermark records) and the
    outcomes it groups per (key, window) for aggregation."""

    clock: PartitionClock
    now_ms: int
    floor: int | None
    high: int  # the finalizer's watermark when the batch began (the mark never falls below it)
    result: AddResult
    live: set[str]
    groups: dict[tuple[WindowKey, int], list[SearchOutcome]] = field(default_factory=dict)
    late_groups: dict[tuple[WindowKey, int], list[SearchOutcome]] = field(default_factory=dict)
    chunks: list[tuple[WindowKey, int, bool, _ColumnChunk]] = field(default_factory=list)  # column rows' groups

    def current_mark(self, clock: PartitionClock | None = None) -> int:
        """The watermark as it stands at this point of the partition's sequence (of ``clock``, a copy of the
        partition's trying records ahead): lateness depends only on the records before an outcome, never on how
        they were cut into batches or when due() ran."""
        m = (self.clock if clock is None else clock).watermark(self.now_ms)
        if m is not None and self.floor is not None:
            m = min(m, self.floor)
        return self.high if m is None else max(m, self.high)


@dataclass(frozen=True, slots=True, eq=False)
class _ColumnChunk:
    """Rows of a :class:`ColumnBatch` waiting in one window (``_pending``): their columns, and where to find them
    as objects should the aggregator ever raise on them."""

    columns: OutcomeColumns
    batch: ColumnBatch
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)

    def objects(self) -> list[SearchOutcome]:
        return self.batch.objects(self.rows)


Chunk = list[SearchOutcome] | _ColumnChunk
_Label = tuple[WindowKey, int, bool]  # a group of a batch: its window key, window start, and whether it is late


class _ObjectSegment:
    """A segment of outcome objects, as the columnar path reads it."""

    def __init__(self, outcomes: list[SearchOutcome]) -> None:
        self.outcomes = outcomes
        self.n = len(outcomes)

    @cached_property
    def ts(self) -> np.ndarray:
        return np.fromiter([o.ts for o in self.outcomes], dtype=np.int64, count=self.n)

    @cached_property
    def _key_codes(self) -> tuple[list[WindowKey], list[int]]:
        # Window keys by object identity within the segment: the decoder hands out one object per key, and
        # equal keys under two identities merely aggregate into the same window in two steps.
        key_objects = [o.window_key for o in self.outcomes]
        identities = list(map(id, key_objects))
        key_codes = {i: c for c, i in enumerate(dict.fromkeys(identities))}
        keys = list({id(k): k for k in key_objects}.values())
        return keys, [0] * self.n if len(keys) == 1 else list(map(key_codes.__getitem__, identities))

    @property
    def keys(self) -> list[WindowKey]:
        return self._key_codes[0]

    @property
    def codes(self) -> list[int]:
        return self._key_codes[1]

    def loop_rows(self) -> tuple[list[int], list[str], list[WindowKey], list[int]]:
        """Event times, router ids, window keys and request keys, outcome by outcome (the one-by-one path)."""
        outcomes = self.outcomes
        window_keys = [o.window_key for o in outcomes]
        requests = [request_key(k.deployment_id, o.request_id) for o, k in zip(outcomes, window_keys, strict=True)]
        return [o.ts for o in outcomes], [o.router_id for o in outcomes], window_keys, requests

    def limits(self, limit_of: Mapping[str, int]) -> np.ndarray:
        return np.fromiter([limit_of[o.router_id] for o in self.outcomes], dtype=np.int64, count=self.n)

    def request_keys(self, candidates: np.ndarray) -> np.ndarray:
        return np.fromiter(self._request_keys(candidates.tolist()), dtype=np.uint64, count=len(candidates))

    def _request_keys(self, candidates: list[int]) -> list[int]:
        outcomes, keys, codes = self.outcomes, self.keys, self.codes
        if len(keys) == 1:
            return request_keys_of(keys[0].deployment_id, [outcomes[i].request_id for i in candidates])
        by_deployment: dict[str | None, list[int]] = {}
        for i in candidates:
            by_deployment.setdefault(keys[codes[i]].deployment_id, []).append(i)
        found: dict[int, int] = {}
        for dep, positions in by_deployment.items():
            ids = [outcomes[i].request_id for i in positions]
            found.update(zip(positions, request_keys_of(dep, ids), strict=True))
        return [found[i] for i in candidates]

    def objects(self, positions: np.ndarray) -> list[SearchOutcome]:
        outcomes = self.outcomes
        return [outcomes[i] for i in positions.tolist()]

    def group(self, batch: _Batch, key: WindowKey, slot: int, late: bool, positions: np.ndarray) -> None:
        chosen = self.outcomes if len(positions) == self.n else self.objects(positions)
        (batch.late_groups if late else batch.groups).setdefault((key, slot), []).extend(chosen)

    def group_sorted(self, batch: _Batch, labels: list[_Label], positions: np.ndarray, ends: list[int]) -> None:
        lo = 0
        for (key, slot, late), hi in zip(labels, ends, strict=True):
            self.group(batch, key, slot, late, positions[lo:hi])
            lo = hi


class _RowSegment:
    """A segment of a :class:`ColumnBatch`'s outcome rows: no object per outcome."""

    def __init__(self, columns: ColumnBatch, rows: np.ndarray) -> None:
        self.batch = columns
        self.rows = rows
        self.n = int(rows.size)
        self.ts = columns.ts[rows]
        self.keys = columns.keys
        self.codes = columns.key[rows]

    def limits(self, limit_of: Mapping[str, int]) -> np.ndarray:
        by_code = np.asarray([limit_of.get(r, 0) for r in self.batch.routers], dtype=np.int64)
        limits: np.ndarray = by_code[self.batch.router[self.rows]]
        return limits

    def request_keys(self, candidates: np.ndarray) -> np.ndarray:
        requests: np.ndarray = self.batch.request[self.rows[candidates]]
        return requests

    def loop_rows(self) -> tuple[list[int], list[str], list[WindowKey], list[int]]:
        batch, rows = self.batch, self.rows
        routers, keys = batch.routers, batch.keys
        return (
            self.ts.tolist(),
            [routers[c] for c in batch.router[rows].tolist()],
            [keys[c] for c in self.codes.tolist()],
            batch.request[rows].tolist(),
        )

    def objects(self, positions: np.ndarray) -> list[SearchOutcome]:
        return self.batch.objects(self.rows[positions])

    def group(self, batch: _Batch, key: WindowKey, slot: int, late: bool, positions: np.ndarray) -> None:
        rows = self.rows if len(positions) == self.n else self.rows[positions]
        batch.chunks.append((key, slot, late, _ColumnChunk(self.batch.columns(rows), self.batch, rows)))

    def group_sorted(self, batch: _Batch, labels: list[_Label], positions: np.ndarray, ends: list[int]) -> None:
        """Several groups at once, ``positions`` ordered by group (group i ends at ``ends[i]``): the columns are
        gathered once in that order and each group's chunk is a slice of them (views). Gathered per group, the
        five columns' fancy indexing was most of the grouping's cost at 41 window keys (~60 groups a batch)."""
        rows = self.rows[positions]
        cols = self.batch.columns(rows)
        latency, errored, recall, exact, group = (
            cols.latency,
            cols.errored,
            cols.recall,
            cols.exact_sample,
            cols.user_group,
        )
        chunks, source = batch.chunks, self.batch
        lo = 0
        for (key, slot, late), hi in zip(labels, ends, strict=True):
            part = OutcomeColumns(latency[lo:hi], errored[lo:hi], recall[lo:hi], exact[lo:hi], group[lo:hi])
            chunks.append((key, slot, late, _ColumnChunk(part, source, rows[lo:hi])))
            lo = hi


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window the finalizer closed: its slot and aggregate (``result`` only when a judge ran)."""

    key: WindowKey
    window_start_ms: int
    window_end_ms: int
    emitted_at_ms: int
    aggregate: WindowAggregate
    result: WindowResult | None = None

    @property
    def deployment_id(self) -> str | None:
        return self.key.deployment_id


def _closed_order(c: ClosedWindow) -> tuple[int, str]:
    return c.window_start_ms, c.key.as_str()


@dataclass(slots=True)
class _Series:
    """Emission cursor of one tracked key."""

    next_start: int  # first window not emitted yet
    idle: int = 0  # empty windows emitted in a row


def _agg_chunks(agg: WindowAggregator, state: WindowAggregate, chunks: list[Chunk]) -> WindowAggregate:
    """One fold of a window's pending chunks: objects as before; with column rows among them, as columns (the
    aggregate is a function of the multiset of outcomes, so the order of the pieces does not matter)."""
    carriers = [o for c in chunks if isinstance(c, list) for o in c]
    if all(isinstance(c, list) for c in chunks):
        return agg.agg(state, carriers)
    parts = [c.columns if isinstance(c, _ColumnChunk) else OutcomeColumns.of(c) for c in chunks if len(c)]
    return agg.agg_parts(state, parts, carriers)


class WindowFinalizer:
    """Assigns outcomes to windows and emits each window exactly once when the watermark passes it.

    Per key, every slot from the first window to the watermark is emitted, empty ones included, until
    ``idle_windows`` empty windows in a row end the series (a later outcome starts a new one). Verdicts
    come from the optional ``judge``, called once per emitted window.
    """

    columnar_min = 32
    """Segments of at least this many outcomes take the columnar path (tests set it to compare paths). Where the two
    cross (in-process, 3 keys, native decoder; µs an outcome one by one / columnar): 24 rows 2.5 / 2.7, 32 rows
    2.2 / 2.1, 48 rows 1.9 / 1.6, 64 rows 1.8 / 1.2 — it was 64 while the columnar path made lists per group."""

    def __init__(
        self,
        size_ms: int = WINDOW_MS,
        grace_ms: int = GRACE_MS,
        idle_windows: int = IDLE_WINDOWS,
        aggregator: AggregatorSource | None = None,
        judge: Judge | None = None,
        *,
        router_timeout_ms: int = DEFAULT_ROUTER_TIMEOUT_MS,
        future_bound_ms: int = DEFAULT_FUTURE_BOUND_MS,
        dedup_retention_ms: int = DEFAULT_DEDUP_RETENTION_MS,
        memory: MemoryFactory | None = None,
    ) -> None:
        if size_ms <= 0 or grace_ms < 0 or idle_windows < 1:
            raise ValueError(f"bad window settings: size_ms={size_ms} grace_ms={grace_ms} idle={idle_windows}")
        if router_timeout_ms <= 0 or future_bound_ms <= 0 or dedup_retention_ms < 0:
            raise ValueError(
                f"bad watermark settings: router_timeout_ms={router_timeout_ms} "
                f"future_bound_ms={future_bound_ms} dedup_retention_ms={dedup_retention_ms}"
            )
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.idle_windows = idle_windows
        self.router_timeout_ms = router_timeout_ms
        self.future_bound_ms = future_bound_ms
        self.dedup_retention_ms = dedup_retention_ms
        self._aggregator_source: AggregatorSource = aggregator or WindowAggregator()
        self._aggregators: dict[WindowKey, WindowAggregator] = {}
        self.judge = judge
        self.clocks: dict[int, PartitionClock] = {}
        self._high = _NEG  # monotonic: an emitted window can never be reopened
        self._series: dict[WindowKey, _Series] = {}
        self._emitted_end: dict[WindowKey, int] = {}
        self._open: dict[WindowKey, dict[int, WindowAggregate]] = {}
        # Outcomes assigned to an open window but not folded into its aggregate yet: (outcomes, late) chunks per
        # key and window start. A fold costs ~100 µs whatever its size (it copies the window's histogram and
        # sketch), so live traffic's small batches made it most of the worker's CPU; windows are folded once
        # when they close or a checkpoint reads them instead. The algebra gives the same state for any split.
        self._pending: dict[WindowKey, dict[int, list[tuple[Chunk, bool]]]] = {}
        self.quarantined: list[tuple[SearchOutcome, str]] = []
        """Outcomes the aggregator raised on (never, for decoded outcomes): left out of their window, for the
        caller to dead-letter; the caller empties the list."""
        # Which requests were counted, by window start (canary.core.dedup): the Python reference, or the native
        # batch core's where the pipeline passes it.
        self._memory = (memory or ReferenceRequestMemory)()
        # window start -> (keys packed, their base64): a start's list only grows (and goes whole when pruned), so
        # a checkpoint re-encodes only the starts that took requests since the last one, not all 60 s of them.
        self._packed: dict[int, tuple[int, str]] = {}

    # -- inspection -------------------------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        return None if self._high == _NEG else self._high

    @property
    def open_windows(self) -> int:
        return sum(len(w) for w in self._open.values())

    @property
    def tracked_keys(self) -> tuple[WindowKey, ...]:
        return tuple(sorted(self._series, key=WindowKey.as_str))

    @property
    def remembered_requests(self) -> int:
        return len(self._memory)

    def live_producers(self, now_ms: int) -> list[str]:
        return sorted({r for c in self.clocks.values() for r in c.live_producers(now_ms)})

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        agg = self._aggregators.get(key)
        if agg is None:
            src = self._aggregator_source
            agg = src if isinstance(src, WindowAggregator) else src(key)
            self._aggregators[key] = agg
        return agg

    def clock(self, partition: int) -> PartitionClock:
        c = self.clocks.get(partition)
        if c is None:
            c = PartitionClock(self.router_timeout_ms, self.future_bound_ms, self.grace_ms)
            self.clocks[partition] = c
        return c

    def mark_idle(self, partition: int, now_ms: int) -> None:
        """The partition is empty (the consumer is at its end and it never delivered anything)."""
        clock = self.clock(partition)
        if clock.idle_since is None:
            clock.idle_since = now_ms

    def forget(self, partition: int) -> None:
        """Drop a revoked partition so it no longer holds the watermark back."""
        self.clocks.pop(partition, None)

    # -- input ------------------------------------------------------------------------------------

    def register_key(self, key: WindowKey, from_ms: int) -> None:
        """Declare a key so its windows are emitted (empty if need be) from ``from_ms`` on."""
        self._track(key, window_bounds(from_ms, self.size_ms)[0])

    def _track(self, key: WindowKey, start: int) -> None:
        start = max(start, self._emitted_end.get(key, _NEG))
        series = self._series.get(key)
        if series is None:
            self._series[key] = _Series(start)
        elif start < series.next_start:
            series.next_start = start

    def _watermark_now(self, now_ms: int) -> int:
        marks = [m for m in (c.watermark(now_ms) for c in self.clocks.values()) if m is not None]
        if marks and min(marks) > self._high:
            self._high = min(marks)
        return self._high

    def add(
        self,
        partition: int,
        items: Sequence[Item],
        now_ms: int,
    ) -> AddResult:
        """Add one micro-batch from ``partition``: outcomes and producer watermarks, in partition order."""
        result = AddResult()
        if not items:
            return result
        batch = self._begin(partition, now_ms, result)
        mark = batch.current_mark()
        segment: list[SearchOutcome] = []
        for item in items:
            if isinstance(item, RouterWatermark):
                if segment:
                    mark = self._add_segment(batch, segment, mark)
                    segment = []
                mark = self._on_watermark(batch, item)
            else:
                segment.append(item)
        if segment:
            self._add_segment(batch, segment, mark)
        self._finish(batch)
        return result

    def add_columns(self, partition: int, columns: ColumnBatch, now_ms: int) -> AddResult:
        """:meth:`add` of a batch decoded into columns (canary.pipeline.decode): the same rules and the same state,
        without an object per outcome. Outcome objects are made only for what keeps one (late and future outcomes in
        the result, segments that go one by one); their rows are in ``columns.row_of``."""
        result = AddResult()
        if not len(columns):
            return result
        batch = self._begin(partition, now_ms, result)
        if columns.watermarks and self._add_between_marks(batch, columns):
            self._finish(batch)
            return result
        mark = batch.current_mark()
        lo = 0
        for row in sorted(columns.watermarks):
            mark = self._add_rows(batch, columns, columns.outcome_rows(lo, row), mark)
            mark = self._on_watermark(batch, columns.watermarks[row])
            lo = row + 1
        self._add_rows(batch, columns, columns.outcome_rows(lo, len(columns)), mark)
        self._finish(batch)
        return result

    def _begin(self, partition: int, now_ms: int, result: AddResult) -> _Batch:
        clock = self.clock(partition)
        high = self._watermark_now(now_ms)
        others = [m for p, c in self.clocks.items() if p != partition for m in [c.watermark(now_ms)] if m is not None]
        floor = min(others) if others else None
        return _Batch(clock, now_ms, floor, high, result, set(clock.live_producers(now_ms)))

    def _on_watermark(self, batch: _Batch, mark: RouterWatermark) -> int:
        """A producer's watermark record in the partition's sequence; returns the mark after it."""
        batch.clock.on_watermark(mark, batch.now_ms)
        batch.result.watermarks += 1
        batch.live = set(batch.clock.live_producers(batch.now_ms))
        return batch.current_mark()

    def _finish(self, batch: _Batch) -> None:
        for (key, start), outcomes in batch.groups.items():
            self._aggregate(key, start, outcomes, late=False)
        for (key, start), outcomes in batch.late_groups.items():
            self._aggregate(key, start, outcomes, late=True)
        for key, start, late, chunk in batch.chunks:
            self._aggregate(key, start, chunk, late=late)

    def _add_between_marks(self, batch: _Batch, columns: ColumnBatch) -> bool:
        """A batch with watermark records among its outcomes in one columnar pass, when every outcome is a live
        watermarking producer's wherever it stands (True: added). A router sends a watermark to every partition
        every 50 ms, so a live fetch of ~100 ms holds two or three per partition; cut at each, a batch of ~120
        outcomes made three passes of a few dozen rows (or went one by one below ``columnar_min``), paying
        numpy's fixed costs each time — the largest part of the windows stage at 8k outcomes/s (bench_live).

        Why one pass gives what the cuts give: where every outcome's producer is live, outcomes move nothing
        the mark is made of (the columnar path only raises ``max_ts``/``last_arrival``, which the mark reads only
        when no producer is live — refused below), so the mark and the future bound in force at each outcome can
        be worked out first, on a copy of the clock taking the watermark records in order; dedup and grouping
        depend only on the order of the outcomes, which one pass keeps. Anything else (a producer not live at
        some outcome, no producer live after a record, fewer rows than ``columnar_min``) is added cut, as
        before. tests/core/test_native_decoder.py compares both with the object path on watermark-dense streams."""
        rows = columns.outcome_rows(0, len(columns))
        if rows.size < max(1, self.columnar_min):
            return False
        now_ms = batch.now_ms
        codes = columns.router[rows]
        used = np.flatnonzero(np.bincount(codes)).tolist()
        routers = {columns.routers[c] for c in used}
        trial = batch.clock.copy()
        live = batch.live
        mark = batch.current_mark()
        cuts = sorted(columns.watermarks)
        ends = np.searchsorted(rows, cuts).tolist()
        ends.append(int(rows.size))
        ts = columns.ts[rows]
        marks = np.empty(rows.size, dtype=np.int64)
        accepted = np.empty(rows.size, dtype=bool)
        bound = self.future_bound_ms
        lo = 0
        for i, hi in enumerate(ends):
            if hi > lo:
                if not routers <= live:
                    return False
                marks[lo:hi] = mark
                limit_of = np.zeros(len(columns.routers), dtype=np.int64)  # the future bound by router code
                for c in used:
                    limit_of[c] = trial.producers[columns.routers[c]].watermark + bound
                accepted[lo:hi] = ts[lo:hi] <= limit_of[codes[lo:hi]]
            lo = hi
            if i < len(cuts):
                trial.on_watermark(columns.watermarks[cuts[i]], now_ms)
                live = set(trial.live_producers(now_ms))
                if not live:
                    return False
                mark = batch.current_mark(trial)
        for row in cuts:
            self._on_watermark(batch, columns.watermarks[row])
        self._add_columnar(
            batch, _RowSegment(columns, rows), routers, mark, legacy=False, marks=marks, accepted=accepted
        )
        return True

    def _add_rows(self, batch: _Batch, columns: ColumnBatch, rows: np.ndarray, mark: int) -> int:
        """Outcome rows between two watermark records: as :meth:`_add_segment`, on rows instead of objects (numpy's
        fixed cost per call makes the columnar path dearer than a loop on a few dozen rows)."""
        if not rows.size:
            return mark
        segment = _RowSegment(columns, rows)
        if rows.size >= self.columnar_min:
            routers = {columns.routers[c] for c in np.unique(columns.router[rows]).tolist()}
            if routers <= batch.live:
                return self._add_columnar(batch, segment, routers, mark, legacy=False)
            if not batch.clock.producers:
                return self._add_columnar(batch, segment, routers, mark, legacy=True)
        return self._add_one_by_one(batch, segment, mark)

    def _add_segment(
        self,
        batch: _Batch,
        outcomes: list[SearchOutcome],
        mark: int,
    ) -> int:
        """Outcomes between two watermark records of ``clock``'s partition; returns the mark after them.

        The two common shapes take a columnar path (numpy over the segment, a few dict operations per
        outcome for dedup) that applies the rules of :meth:`_add_one_by_one` in bulk: every producer in
        the segment is live (the mark cannot move inside it), or the partition has no watermarking
        producer at all (the mark is a running maximum of event time). Anything else goes one by one.
        """
        if len(outcomes) >= self.columnar_min:
            routers = {o.router_id for o in outcomes}
            if routers <= batch.live:
                return self._add_columnar(batch, _ObjectSegment(outcomes), routers, mark, legacy=False)
            if not batch.clock.producers:
                return self._add_columnar(batch, _ObjectSegment(outcomes), routers, mark, legacy=True)
        return self._add_one_by_one(batch, _ObjectSegment(outcomes), mark)

    def _add_columnar(
        self,
        batch: _Batch,
        segment: _ObjectSegment | _RowSegment,
        routers: set[str],
        mark: int,
        *,
        legacy: bool,
        marks: np.ndarray | None = None,
        accepted: np.ndarray | None = None,
    ) -> int:
        """``legacy``: no producer on the partition sends watermarks, so the mark follows each accepted
        outcome's event time minus grace, capped by the other partitions' ``floor`` (otherwise it is fixed).
        ``marks``, ``accepted``: the mark and the future bound's verdict at each outcome, where watermark records
        stand among them (:meth:`_add_between_marks`; not legacy)."""
        clock, now_ms, floor, result = batch.clock, batch.now_ms, batch.floor, batch.result
        n = segment.n
        size = self.size_ms
        ts = segment.ts
        if accepted is None:
            producers = clock.producers
            bound = self.future_bound_ms
            limits = {r: (p.watermark if (p := producers.get(r)) is not None else now_ms) + bound for r in routers}
            accepted = ts <= (next(iter(limits.values())) if len(limits) == 1 else segment.limits(limits))
        keys, codes = segment.keys, segment.codes
        # Dedup before windowing: whether an outcome repeats a request depends only on what came before it.
        # Positions stay arrays from here to the groups: a list per group cost more than the grouping (py-spy, 41 keys).
        idx = np.arange(n) if accepted.all() else np.flatnonzero(accepted)
        if idx.size < n:
            result.future.extend(segment.objects(np.flatnonzero(~accepted)))
        request_keys = segment.request_keys(idx)
        repeats = self._memory.repeats(request_keys)
        if repeats is not None:  # the common case: nothing repeats
            result.duplicates += int(np.count_nonzero(repeats))
            idx = idx[~repeats]
            request_keys = request_keys[~repeats]
        if not idx.size:
            return mark
        kts = ts[idx]
        if legacy:
            # The mark before each outcome: the running maximum of the accepted event times before it
            # (an earlier maximum was already inside the mark the segment started with).
            prior = np.maximum.accumulate(kts) - self.grace_ms
            moved = np.concatenate(([mark], prior[:-1]))
            if floor is not None:
                moved = np.minimum(moved, floor)
            marks = np.maximum(moved, mark)
        else:
            marks = np.full(idx.size, mark, dtype=np.int64) if marks is None else marks[idx]
        starts = kts - kts % size
        kcodes = np.asarray(codes, dtype=np.int64)[idx]
        emitted = np.asarray([self._emitted_end.get(k, _NEG) for k in keys], dtype=np.int64)[kcodes]
        late = (starts < emitted) | (starts + size <= marks)
        slots = np.where(late, np.maximum(marks - marks % size, emitted), starts)
        # One group per (slot, key, late): a handful per segment.
        base = int(slots.min())
        combined = (((slots - base) // size) * len(keys) + kcodes) * 2 + late
        # The labels span a few windows of the keys: counted rather than sorted where that is small (np.unique sorted
        # every batch: 3 % of the worker at 8k outcomes/s live); a stable sort by label orders the rows by group.
        if int(combined.max()) < _COUNTED_LABELS:
            counts = np.bincount(combined)
            uniq = np.flatnonzero(counts)
            sizes = counts[uniq]
        else:
            uniq, sizes = np.unique(combined, return_counts=True)
        width = len(keys)
        labels = [(keys[(g >> 1) % width], base + (g >> 1) // width * size, bool(g & 1)) for g in uniq.tolist()]
        if len(labels) == 1:
            segment.group(batch, *labels[0], idx)
        else:
            order = np.argsort(combined, kind="stable")
            segment.group_sorted(batch, labels, idx[order], np.cumsum(sizes).tolist())
        # Remembered per window start in arrival order, as one by one: the checkpoint does not depend on the
        # path a batch took, nor on how its window keys grouped (one shared object per key, or one each).
        self._memory.remember(request_keys, slots)
        if late.any():
            result.late.extend(segment.objects(idx[late]))
        top = int(kts.max())
        if not legacy:
            clock.max_ts = top if clock.max_ts is None else max(clock.max_ts, top)
            clock.last_arrival = now_ms if clock.last_arrival is None else max(clock.last_arrival, now_ms)
            return mark
        clock.on_outcome(next(iter(routers)), top, now_ms)  # none is a producer: only the maxima matter
        moved_last = top - self.grace_ms if floor is None else min(top - self.grace_ms, floor)
        return max(mark, moved_last)

    def _add_one_by_one(self, batch: _Batch, segment: _ObjectSegment | _RowSegment, mark: int) -> int:
        clock, now_ms, floor, result = batch.clock, batch.now_ms, batch.floor, batch.result
        live, current_mark = batch.live, batch.current_mark
        size = self.size_ms
        times, routers, window_keys, keys = segment.loop_rows()
        # What was remembered before the segment, in one look-up; its own requests are remembered after it, in
        # arrival order (``fresh``, ``counted``).
        sealed = self._memory.remembered(np.fromiter(keys, dtype=np.uint64, count=len(keys))).tolist()
        fresh: set[int] = set()
        counted: list[int] = []
        counted_at: list[int] = []
        groups: dict[tuple[WindowKey, int, bool], list[int]] = {}
        late: list[int] = []
        future: list[int] = []
        for i, (ts, router, key, rk, old) in enumerate(zip(times, routers, window_keys, keys, sealed, strict=True)):
            if not clock.accepts(router, ts, now_ms):
                future.append(i)
                continue
            if old or rk in fresh:
                result.duplicates += 1
                continue
            fresh.add(rk)
            counted.append(rk)
            start = ts - ts % size
            emitted = self._emitted_end.get(key, _NEG)
            if start < emitted or start + size <= mark:
                # Its window is closed: it counts in the key's first window still open, never nowhere.
                slot = max(mark - mark % size, emitted)
                groups.setdefault((key, slot, True), []).append(i)
                late.append(i)
                counted_at.append(slot)
            else:
                groups.setdefault((key, start, False), []).append(i)
                counted_at.append(start)
            if router not in live and (clock.max_ts is None or ts > clock.max_ts):
                clock.on_outcome(router, ts, now_ms)
                # A heuristic (non-watermarking) producer's new maximum moves the mark.
                if clock.producers:
                    mark = current_mark()
                else:  # the common legacy case, inlined: its max event time minus grace (seen just now)
                    m = ts - self.grace_ms
                    if floor is not None and floor < m:
                        m = floor
                    if m > mark:
                        mark = m
            else:
                clock.on_outcome(router, ts, now_ms)
        self._memory.remember(np.asarray(counted, dtype=np.uint64), np.asarray(counted_at, dtype=np.int64))
        if future:
            result.future.extend(segment.objects(np.asarray(future, dtype=np.int64)))
        if late:
            result.late.extend(segment.objects(np.asarray(late, dtype=np.int64)))
        for (key, slot, is_late), positions in groups.items():
            segment.group(batch, key, slot, is_late, np.asarray(positions, dtype=np.int64))
        return mark

    def _aggregate(self, key: WindowKey, start: int, outcomes: Chunk, *, late: bool) -> None:
        self._track(key, start)
        windows = self._open.setdefault(key, {})
        if start not in windows:
            windows[start] = self.aggregator_for(key).initialize()
        self._pending.setdefault(key, {}).setdefault(start, []).append((outcomes, late))

    def _fold(self, key: WindowKey, start: int) -> None:
        """Fold the window's pending outcomes into its aggregate (see ``_pending``)."""
        by_start = self._pending.get(key)
        chunks = by_start.pop(start, None) if by_start else None
        if not chunks:
            return
        if not by_start:
            del self._pending[key]
        agg = self.aggregator_for(key)
        windows = self._open[key]
        state = windows[start]
        late = sum(len(chunk) for chunk, is_late in chunks if is_late)
        try:
            state = _agg_chunks(agg, state, [chunk for chunk, _ in chunks])
        except Exception:  # a bug, not an input the decoder lets through: find the outcome, keep the rest
            late = 0
            for chunk, is_late in chunks:
                for o in chunk.objects() if isinstance(chunk, _ColumnChunk) else chunk:
                    try:
                        state = agg.agg(state, [o])
                    except Exception as exc:
                        self.quarantined.append((o, f"the window aggregator raised {type(exc).__name__}: {exc}"))
                    else:
                        late += is_late
        windows[start] = state.with_late(late) if late else state

    def fold_pending(self) -> None:
        """Fold every window's pending outcomes now (``to_dict`` does; a caller may do it first to time them
        apart)."""
        for key, by_start in list(self._pending.items()):
            for start in list(by_start):
                self._fold(key, start)

    # -- output -----------------------------------------------------------------------------------

    def due(self, now_ms: int) -> list[WindowResult]:
        """Windows whose end <= watermark, each exactly once, ordered by (start, key)."""
        return [r for r, _ in self.due_with_state(now_ms)]

    def due_with_state(self, now_ms: int) -> list[tuple[WindowResult, WindowAggregate]]:
        """As :meth:`due`, with each window's aggregate."""
        return [(self.result_of(c), c.aggregate) for c in self.due_closed(now_ms)]

    def due_closed(self, now_ms: int) -> list[ClosedWindow]:
        """As :meth:`due`, without building results (what a partial window carries to the merge)."""
        wm = self._watermark_now(now_ms)
        if wm == _NEG:
            return []
        out: list[ClosedWindow] = []
        for key in self.tracked_keys:
            out.extend(self._emit(key, wm, now_ms))
        out.sort(key=_closed_order)
        self._prune(wm)
        return out

    def flush_all(self, now_ms: int) -> list[WindowResult]:
        """Close everything up to each key's last open window (end of replay input); trailing empties
        are not invented."""
        return [r for r, _ in self.flush_all_with_state(now_ms)]

    def flush_all_with_state(self, now_ms: int) -> list[tuple[WindowResult, WindowAggregate]]:
        return [(self.result_of(c), c.aggregate) for c in self.flush_all_closed(now_ms)]

    def flush_all_closed(self, now_ms: int) -> list[ClosedWindow]:
        out: list[ClosedWindow] = []
        for key in self.tracked_keys:
            windows = self._open.get(key)
            if windows:
                end = max(windows) + self.size_ms
                out.extend(self._emit(key, end, now_ms))
                self._high = max(self._high, end)
            self._series.pop(key, None)
        out.sort(key=_closed_order)
        return out

    def result_of(self, closed: ClosedWindow) -> WindowResult:
        """The window's result (judged, with a judge): built when asked, since building it renders the
        whole sketch and histogram, which a partial window never needs."""
        if closed.result is not None:
            return closed.result
        return self.aggregator_for(closed.key).result(
            closed.aggregate, closed.key, closed.window_start_ms, closed.window_end_ms, (), closed.emitted_at_ms
        )

    def _prune(self, watermark: int) -> None:
        self._memory.forget_before(watermark - self.size_ms - self.dedup_retention_ms)
        self._seal()

    def _seal(self) -> None:
        """Tell the memory which starts no request can be counted in any more: a request is counted in its own
        window while that is open (its start is past the watermark less one window) or, late, in a window at or
        after the watermark's, and the watermark only rises."""
        if self._high == _NEG:
            return
        self._memory.seal_before(self._high - self._high % self.size_ms - self.size_ms)

    def _emit(self, key: WindowKey, until_end: int, now_ms: int) -> list[ClosedWindow]:
        """Emit ``key``'s windows ending at or before ``until_end``."""
        series = self._series[key]
        windows = self._open.get(key, {})
        agg = self.aggregator_for(key)
        out: list[ClosedWindow] = []
        while series.next_start + self.size_ms <= until_end:
            start = series.next_start
            self._fold(key, start)
            state = windows.pop(start, None) or agg.initialize()
            result = None
            if self.judge is not None:  # judged as emitted, key by key (a judge may keep history)
                result = agg.result(state, key, start, start + self.size_ms, (), now_ms)
                result = msgspec.structs.replace(result, verdicts=tuple(self.judge(result)))
            out.append(ClosedWindow(key, start, start + self.size_ms, now_ms, state, result))
            self._emitted_end[key] = start + self.size_ms
            series.next_start = start + self.size_ms
            series.idle = series.idle + 1 if state.count == 0 else 0
            if series.idle >= self.idle_windows:
                if not windows:
                    del self._series[key]
                    break
                # The series ended; a later outcome already started the next one.
                series.next_start, series.idle = min(windows), 0
        if not windows:
            self._open.pop(key, None)
        return out

    # -- persistence ------------------------------------------------------------------------------

    def to_dict(self, *, seen: bool = True) -> dict[str, Any]:
        """Everything needed to resume without re-emitting or losing a window. Processing-time stamps
        are left out on purpose: after a restart they would extrapolate over the downtime. ``seen=False``: without
        the request memory (a caller that writes it its own way: :meth:`seen_starts`, :meth:`seen_keys`)."""

        def keyed(m: Mapping[WindowKey, Any]) -> dict[str, Any]:
            return {k.as_str(): m[k] for k in sorted(m, key=WindowKey.as_str)}

        self.fold_pending()
        out: dict[str, Any] = {
            "size_ms": self.size_ms,
            "grace_ms": self.grace_ms,
            "idle_windows": self.idle_windows,
            "router_timeout_ms": self.router_timeout_ms,
            "future_bound_ms": self.future_bound_ms,
            "dedup_retention_ms": self.dedup_retention_ms,
            "watermark": self.watermark,
            "clocks": {str(p): c.to_dict() for p, c in sorted(self.clocks.items())},
            "series": keyed({k: {"next_start": s.next_start, "idle": s.idle} for k, s in self._series.items()}),
            "emitted_end": keyed(self._emitted_end),
            "open": keyed({k: {str(s): w[s].json_dict() for s in sorted(w)} for k, w in self._open.items() if w}),
        }
        if seen:  # packed per window start (8 bytes a request, base64)
            out["seen"] = self._packed_seen()
        return out

    def seen_starts(self) -> list[tuple[int, int]]:
        """``(start, requests)`` of every window start the request memory holds, ascending. A start's requests only
        grow (in arrival order) until the start is forgotten."""
        return self._memory.starts()

    def seen_keys(self, start: int) -> bytes:
        """The request keys remembered at ``start`` in arrival order, little-endian ``uint64``."""
        return self._memory.keys_of(start)

    def _packed_seen(self) -> dict[str, str]:
        packed = self._packed
        memory = self._memory
        out: dict[str, str] = {}
        starts = memory.starts()
        for start, size in starts:
            cached = packed.get(start)
            if cached is None or cached[0] != size:
                cached = (size, base64.b64encode(memory.keys_of(start)).decode("ascii"))
                packed[start] = cached
            out[str(start)] = cached[1]
        if len(packed) > len(starts):
            held = {s for s, _ in starts}
            for start in [s for s in packed if s not in held]:
                del packed[start]
        return out

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        now_ms: int | None = None,
        aggregator: AggregatorSource | None = None,
        judge: Judge | None = None,
        memory: MemoryFactory | None = None,
    ) -> WindowFinalizer:
        """Restore a finalizer. With ``now_ms`` the partitions' clocks restart at that processing time,
        so an idle pipeline still closes its windows after a restart."""
        try:
            out = cls(
                int(d["size_ms"]),
                int(d["grace_ms"]),
                int(d["idle_windows"]),
                aggregator,
                judge,
                router_timeout_ms=int(d.get("router_timeout_ms", DEFAULT_ROUTER_TIMEOUT_MS)),
                future_bound_ms=int(d.get("future_bound_ms", DEFAULT_FUTURE_BOUND_MS)),
                dedup_retention_ms=int(d.get("dedup_retention_ms", DEFAULT_DEDUP_RETENTION_MS)),
                memory=memory,
            )
            wm = d["watermark"]
            out._high = _NEG if wm is None else int(wm)
            if now_ms is not None:
                out.clocks = {
                    int(p): PartitionClock.from_dict(
                        c,
                        now_ms,
                        router_timeout_ms=out.router_timeout_ms,
                        future_bound_ms=out.future_bound_ms,
                        grace_ms=out.grace_ms,
                    )
                    for p, c in d["clocks"].items()
                }
            for k, s in d["series"].items():
                out._series[WindowKey.parse(k)] = _Series(int(s["next_start"]), int(s["idle"]))
            out._emitted_end = {WindowKey.parse(k): int(v) for k, v in d["emitted_end"].items()}
            for k, w in d["open"].items():
                out._open[WindowKey.parse(k)] = {int(s): WindowAggregate.from_dict(a) for s, a in w.items()}
            seen = d.get("seen", {})
            if isinstance(seen, list):  # an older checkpoint: [key, start] pairs
                for k, start in seen:
                    out._memory.restore(np.asarray([int(k)], dtype=np.uint64), int(start))
            else:
                for start, packed in sorted(seen.items(), key=lambda item: int(item[0])):
                    keys = np.frombuffer(base64.b64decode(packed), dtype="<u8").astype(np.uint64)
                    out._memory.restore(keys, int(start))
            out._seal()
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"WindowFinalizer: malformed state ({exc!r})") from None
        return out
