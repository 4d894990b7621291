"""Partition-parallel windows: partial windows per source partition, merged into one window per key.

Outcomes are spread over every ``search_results`` partition (keyed by request id), so each partition's
finalizer sees only part of a (deployment, config, arm) window. It emits that part as a
:class:`PartialWindow` — the mergeable aggregate, not a result — and, as its watermark advances, a
:class:`Progress` mark: "partition p has emitted every partial for windows ending at or before t".

:class:`WindowMerger` holds partials until every source partition's progress has passed a window's end,
then merges them (sketches and sums merge exactly, in any order) into exactly one
:class:`~canary.core.models.WindowResult` for the key. Per key, windows are emitted in order; a partial
for a window already merged (a redelivery, a re-emission after a restart — always identical) is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec

from canary.core import wire
from canary.core.aggregations import GroupCounts, WindowAggregate, WindowAggregator, WindowStats, threshold_key
from canary.core.evidence import RECALL_BINS
from canary.core.models import RECALL_SOURCES, JSONDict, WindowKey, WindowResult
from canary.core.sketch import QuantileSketch
from canary.core.split import USER_GROUPS
from canary.errors import SHAPE_ERRORS, InvalidEvent

_NEG = -(2**62)
_RESULT = WindowAggregator()  # result() reads only the state; thresholds do not matter here


@dataclass(frozen=True, slots=True)
class PartialWindow:
    source_partition: int
    key: WindowKey
    window_start_ms: int
    window_end_ms: int
    aggregate: WindowAggregate

    @property
    def partial_id(self) -> str:
        return f"{self.key.as_str()}@{self.window_start_ms}#{self.source_partition}"

    def to_dict(self) -> JSONDict:
        return self._dict(self.aggregate.to_dict())

    def json_dict(self) -> JSONDict:
        """:meth:`to_dict` for a JSON encoder (the record the windows stage writes): the same bytes, built without
        a list per pair (WindowAggregate.json_dict); not equal (``==``) to the parsed JSON."""
        return self._dict(self.aggregate.json_dict())

    def _dict(self, aggregate: JSONDict) -> JSONDict:
        return {
            "kind": "partial",
            "partial_id": self.partial_id,
            "source_partition": self.source_partition,
            "key": self.key.as_str(),
            "deployment_id": self.key.deployment_id,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "aggregate": aggregate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartialWindow:
        try:
            return cls(
                int(d["source_partition"]),
                WindowKey.parse(str(d["key"])),
                int(d["window_start_ms"]),
                int(d["window_end_ms"]),
                WindowAggregate.from_dict(d["aggregate"]),
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"PartialWindow: malformed ({exc!r}): {dict(d)!r:.200}") from None


@dataclass(frozen=True, slots=True)
class Progress:
    source_partition: int
    closed_until_ms: int

    def to_dict(self) -> JSONDict:
        return {"kind": "progress", "source_partition": self.source_partition, "closed_until_ms": self.closed_until_ms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Progress:
        try:
            return cls(int(d["source_partition"]), int(d["closed_until_ms"]))
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"Progress: malformed ({exc!r}): {dict(d)!r:.200}") from None


def parse_merge_record(d: Mapping[str, Any]) -> PartialWindow | Progress:
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if kind == "partial":
        return PartialWindow.from_dict(d)
    if kind == "progress":
        return Progress.from_dict(d)
    raise InvalidEvent(f"merge record: expected kind 'partial' or 'progress', got {kind!r:.50}")


class EncodedPartials:
    """The partials this process wrote, by their bytes: what :func:`decode_merge_record` would read from them.

    The windows stage and the merge step run in one worker, so most partials the merge step reads are bytes this
    process encoded moments before; decoding them again was the merge step's largest cost at 41 window keys (~80 µs
    a partial, six a window key and window). Reading is a pure function of the bytes, and the partials the windows
    stage writes read back as the very values it wrote (tests/core/test_partial_decode.py), so the value kept for
    equal bytes is the value decoding them gives. Only partials the typed pass reads are kept (no custom metrics),
    each taken once, the oldest dropped beyond ``capacity`` partials or ``capacity_bytes`` of them (partials another
    worker's merge step reads, a transaction aborted): the memory is bounded — a worker's own merge step reads what it
    wrote within about a second, ~1.5 MB of partials at 41 window keys in backlog — and a miss is a decode as
    before."""

    def __init__(self, capacity: int = 1024, capacity_bytes: int = 4 << 20) -> None:
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self._by_bytes: dict[bytes, PartialWindow] = {}
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._by_bytes)

    @property
    def size_bytes(self) -> int:
        """The encoded size of the partials kept."""
        return self._bytes

    def remember(self, data: bytes, partial: PartialWindow) -> None:
        if partial.aggregate.custom or len(data) > self.capacity_bytes:  # the reference reads those: not kept
            return
        kept = self._by_bytes
        if data in kept:
            return
        kept[data] = partial
        self._bytes += len(data)
        while len(kept) > self.capacity or self._bytes > self.capacity_bytes:
            oldest = next(iter(kept))
            del kept[oldest]
            self._bytes -= len(oldest)

    def take(self, data: bytes) -> PartialWindow | None:
        partial = self._by_bytes.pop(data, None)
        if partial is not None:
            self._bytes -= len(data)
            self.hits += 1
        return partial


def decode_merge_record(raw: bytes | None, written: EncodedPartials | None = None) -> PartialWindow | Progress:
    """A ``canary_window_partials`` record's value, hostile until decoded: what
    ``parse_merge_record(wire.decode_object(raw, wire.PARTIAL))`` returns, or its rejection (wire.Rejected,
    InvalidEvent).

    Why a second path: the merge step parses every partial (six a window key and window), and the reference — JSON to
    Python lists and dictionaries, then each part checked and converted — cost ~3x the JSON parse itself (4-5 % of a
    41-key backlog worker). A well-formed partial is read here in one typed pass (msgspec, strict: exactly the values
    the reference takes, no conversion of a float or a string to an int), then checked by the same checks as the
    reference's (``WindowStats.problem``, ``GroupCounts.consistent``); anything the typed pass does not take — custom
    metrics, a number written as a float, a check that fails — goes to the reference, which decides and says why.
    tests/core/test_partial_decode.py: both paths on arbitrary and hostile records give the same result.

    ``written``: the partials this process encoded (:class:`EncodedPartials`); bytes equal to one of them are that
    partial, after the same bounds check."""
    if raw is not None:
        data = bytes(raw)
        wire.check_bounds(data, wire.PARTIAL)  # what the reference checks first, the same way
        if written is not None and (known := written.take(data)) is not None:
            return known
        fast = _typed(data)
        if fast is not None:
            return fast
    return parse_merge_record(wire.decode_object(raw, wire.PARTIAL))


# 64-bit integers only: beyond them orjson (the reference's parser) reads a float, which the reference then truncates
# to an int; such a record is the reference's to read (msgspec's bounds are int64's).
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_Int = Annotated[int, msgspec.Meta(ge=_I64_MIN, le=_I64_MAX)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_I64_MAX)]
_Positive = Annotated[int, msgspec.Meta(gt=0, le=_I64_MAX)]
_Row = Annotated[tuple[_Count, ...], msgspec.Meta(min_length=USER_GROUPS, max_length=USER_GROUPS)]


class _SketchRecord(msgspec.Struct, forbid_unknown_fields=True):
    relative_accuracy: float
    max_bins: _Int
    zero: _Count
    bins: list[tuple[_Int, _Positive]]


class _GroupsRecord(msgspec.Struct, forbid_unknown_fields=True):
    n: _Row
    errors: _Row
    recall_n: _Row
    recall_micros: _Row
    exceed: dict[str, _Row] = {}


class _AggregateRecord(msgspec.Struct, forbid_unknown_fields=True):
    count: _Count
    error_count: _Count
    sketch: _SketchRecord
    recall_sum_micros: _Int
    recall_samples: _Int
    slo_violations: _Int
    late_count: _Int
    max_source_offset: _Int
    exceed: dict[str, _Count] = {}
    recall_hist: list[tuple[Annotated[int, msgspec.Meta(ge=0, le=RECALL_BINS)], _Positive]] = []
    recall_source: dict[str, _Positive] | None = None
    groups: _GroupsRecord | None = None
    custom: msgspec.Raw | None = None  # custom metrics: the reference reads them


class _PartialRecord(msgspec.Struct, tag_field="kind", tag="partial", forbid_unknown_fields=True):
    source_partition: _Int
    key: str
    window_start_ms: _Int
    window_end_ms: _Int
    aggregate: _AggregateRecord
    partial_id: str = ""  # not read (the reference ignores it), but its string must be text as orjson checks it
    deployment_id: str | None = None


class _ProgressRecord(msgspec.Struct, tag_field="kind", tag="progress", forbid_unknown_fields=True):
    source_partition: _Int
    closed_until_ms: _Int


# Every field declared and unknown ones refused: msgspec skips an unknown field's value without checking its strings'
# UTF-8, which orjson (the reference) refuses anywhere in a record (tests/fuzz found it). A record with a field this
# does not know is the reference's to read.
_DECODER = msgspec.json.Decoder(_PartialRecord | _ProgressRecord)


def _by_threshold(kv: tuple[str, Any]) -> float:
    return float(kv[0])


def _typed(data: bytes) -> PartialWindow | Progress | None:
    """The record read by the typed pass; None: the reference decides."""
    try:
        record = _DECODER.decode(data)
    except msgspec.DecodeError:  # not this shape exactly (ValidationError is one)
        return None
    if isinstance(record, _ProgressRecord):
        return Progress(record.source_partition, record.closed_until_ms)
    a = record.aggregate
    if a.custom is not None or (a.recall_source is not None and not set(a.recall_source) <= set(RECALL_SOURCES)):
        return None
    try:
        key = WindowKey.parse(record.key)
        sk = a.sketch
        sketch = QuantileSketch.restored(sk.relative_accuracy, sk.max_bins, sk.zero, dict(sk.bins))
        exceed = tuple(sorted(a.exceed.items(), key=_by_threshold))
        groups = GroupCounts()
        if a.groups is not None:
            g = a.groups
            rows = [(threshold_key(float(t)), row) for t, row in g.exceed.items()]
            groups = GroupCounts(g.n, g.errors, tuple(sorted(rows, key=_by_threshold)), g.recall_n, g.recall_micros)
            if not groups.consistent():
                return None
    except (InvalidEvent, ValueError, OverflowError):
        return None
    sources = tuple(sorted(a.recall_source.items())) if a.recall_source else ()
    stats = WindowStats(a.count, a.error_count, sketch, exceed, tuple(sorted(a.recall_hist)), (), sources, groups)
    if stats.problem(hist_checked=True) is not None:
        return None
    aggregate = WindowAggregate.of(
        stats,
        recall_sum_micros=a.recall_sum_micros,
        recall_samples=a.recall_samples,
        slo_violations=a.slo_violations,
        late_count=a.late_count,
        max_source_offset=a.max_source_offset,
    )
    return PartialWindow(record.source_partition, key, record.window_start_ms, record.window_end_ms, aggregate)


class WindowSlot(Protocol):
    """What a partial needs of a closed window: a WindowResult or the finalizer's ClosedWindow."""

    @property
    def key(self) -> WindowKey: ...
    @property
    def window_start_ms(self) -> int: ...
    @property
    def window_end_ms(self) -> int: ...
    @property
    def emitted_at_ms(self) -> int: ...


def partial_of(result: WindowSlot, aggregate: WindowAggregate, source_partition: int) -> PartialWindow:
    return PartialWindow(source_partition, result.key, result.window_start_ms, result.window_end_ms, aggregate)


@dataclass
class _Pending:
    end: int
    parts: dict[int, WindowAggregate] = field(default_factory=dict)


@dataclass
class WindowMerger:
    """Merges partial windows of ``sources`` source partitions (see the module docstring)."""

    sources: int
    pending: dict[WindowKey, dict[int, _Pending]] = field(default_factory=dict)
    progress: dict[int, int] = field(default_factory=dict)
    emitted_end: dict[WindowKey, int] = field(default_factory=dict)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.sources < 1:
            raise ValueError(f"sources must be >= 1, got {self.sources}")

    def _check(self, source: int, what: str) -> None:
        if not 0 <= source < self.sources:
            raise InvalidEvent(f"{what}: source partition {source} not in 0..{self.sources - 1}")

    def add(self, record: PartialWindow | Progress) -> None:
        if isinstance(record, Progress):
            self._check(record.source_partition, "Progress")
            prev = self.progress.get(record.source_partition, _NEG)
            self.progress[record.source_partition] = max(prev, record.closed_until_ms)
            return
        p = record
        self._check(p.source_partition, "PartialWindow")
        if p.window_start_ms < self.emitted_end.get(p.key, _NEG):
            self.dropped += 1  # that window is merged and out; a re-emission is identical
            return
        slot = self.pending.setdefault(p.key, {}).setdefault(p.window_start_ms, _Pending(p.window_end_ms))
        slot.parts[p.source_partition] = p.aggregate

    @property
    def closed_until(self) -> int | None:
        """The event time every source partition has passed (None until each has reported)."""
        if len(self.progress) < self.sources:
            return None
        return min(self.progress.values())

    @property
    def pending_windows(self) -> int:
        return sum(len(w) for w in self.pending.values())

    def due(self, now_ms: int) -> list[WindowResult]:
        """Merged windows whose end every source partition has passed, ordered by (start, key)."""
        until = self.closed_until
        if until is None:
            return []
        out: list[WindowResult] = []
        for key in sorted(self.pending, key=WindowKey.as_str):
            windows = self.pending[key]
            for start in sorted(windows):
                slot = windows[start]
                if slot.end > until:
                    break
                merged: WindowAggregate | None = None
                for source in sorted(slot.parts):
                    merged = slot.parts[source] if merged is None else _RESULT.merge(merged, slot.parts[source])
                assert merged is not None
                out.append(_RESULT.result(merged, key, start, slot.end, (), now_ms))
                self.emitted_end[key] = slot.end
                del windows[start]
            if not windows:
                del self.pending[key]
        out.sort(key=lambda r: (r.window_start_ms, r.key.as_str()))
        return out

    def to_dict(self) -> JSONDict:
        def by_key(m: Mapping[WindowKey, Any]) -> list[WindowKey]:
            return sorted(m, key=WindowKey.as_str)

        return {
            "sources": self.sources,
            "progress": {str(p): t for p, t in sorted(self.progress.items())},
            "emitted_end": {k.as_str(): self.emitted_end[k] for k in by_key(self.emitted_end)},
            "pending": {
                k.as_str(): {
                    str(s): {"end": slot.end, "parts": {str(p): a.json_dict() for p, a in sorted(slot.parts.items())}}
                    for s, slot in sorted(self.pending[k].items())
                }
                for k in by_key(self.pending)
            },
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowMerger:
        try:
            out = cls(int(d["sources"]))
            out.progress = {int(p): int(t) for p, t in d["progress"].items()}
            out.emitted_end = {WindowKey.parse(k): int(v) for k, v in d["emitted_end"].items()}
            out.pending = {
                WindowKey.parse(k): {
                    int(s): _Pending(
                        int(slot["end"]), {int(p): WindowAggregate.from_dict(a) for p, a in slot["parts"].items()}
                    )
                    for s, slot in w.items()
                }
                for k, w in d["pending"].items()
            }
            out.dropped = int(d.get("dropped", 0))
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"WindowMerger: malformed state ({exc!r})") from None
        return out


def merge_all(partials: Iterable[tuple[int, WindowSlot, WindowAggregate]]) -> list[WindowResult]:
    """Every window of a finished input, each merged from all its partials — what the live merge step
    emits once every partition has passed the window (replay's shortcut; same figures by construction).
    ``emitted_at_ms`` is the latest of the partials'."""
    slots: dict[tuple[WindowKey, int], tuple[int, int, dict[int, WindowAggregate]]] = {}
    for source, result, aggregate in partials:
        k = (result.key, result.window_start_ms)
        end, emitted, parts = slots.get(k, (result.window_end_ms, result.emitted_at_ms, {}))
        parts[source] = aggregate
        slots[k] = (end, max(emitted, result.emitted_at_ms), parts)
    out: list[WindowResult] = []
    for (key, start), (end, emitted, parts) in slots.items():
        merged: WindowAggregate | None = None
        for source in sorted(parts):
            merged = parts[source] if merged is None else _RESULT.merge(merged, parts[source])
        assert merged is not None
        out.append(_RESULT.result(merged, key, start, end, (), emitted))
    out.sort(key=lambda r: (r.window_start_ms, r.key.as_str()))
    return out
