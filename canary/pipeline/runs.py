"""A partition's fetched records as one run: the fetch response's bytes and a table of where each record is.

aiokafka hands a consumer one Python ``ConsumerRecord`` per record; building them was a fifth of a backlog
windows worker (docs/adr/0006-native-batch-core.md). The windows stage's consumer
(:mod:`canary.kafka.runs`) instead keeps each partition's fetched bytes and the native reader's entries —
offset, timestamp and where the value lies, 32 bytes a record — and the native decoder reads the values
where they lie (:meth:`canary.pipeline.decode.OutcomeDecoder.decode_columns`). A record becomes an object
only when something asks for it (a dead letter, the one-by-one path). Kafka-free: the consumer lives above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, overload

import numpy as np

from canary.pipeline.native import NATIVE

# canary_native's entry (native/src/records.rs ``Entry``): native-endian int64s.
ENTRY = np.dtype([("offset", "=i8"), ("timestamp", "=i8"), ("value_at", "=i8"), ("value_len", "=i8")])


class RunRecord(NamedTuple):
    """One record of a run, as a consumer record would show it (keys and headers are not kept)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None


class SpanValues(Sequence[bytes | None]):
    """The values of rows ``lo``..``hi`` of a run, sliced out of its buffer only when asked for."""

    __slots__ = ("buffer", "entries", "hi", "lo", "table")

    def __init__(self, buffer: bytes, entries: bytes, table: np.ndarray, lo: int, hi: int) -> None:
        self.buffer = buffer
        self.entries = entries  # the native reader's bytes, handed back to the native decoder as they are
        self.table = table
        self.lo = lo
        self.hi = hi

    def __len__(self) -> int:
        return self.hi - self.lo

    @overload
    def __getitem__(self, i: int) -> bytes | None: ...
    @overload
    def __getitem__(self, i: slice) -> SpanValues: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("SpanValues: only contiguous slices")
            return SpanValues(self.buffer, self.entries, self.table, self.lo + lo, self.lo + max(lo, hi))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return _value(self.buffer, self.table[self.lo + (i % n)])


def _table(entries: bytes) -> np.ndarray:
    return np.frombuffer(entries, dtype=ENTRY)


def _value(buffer: bytes, entry: Any) -> bytes | None:
    """An entry's value sliced out of the buffer (None: a null value)."""
    length = int(entry["value_len"])
    if length < 0:
        return None
    at = int(entry["value_at"])
    return buffer[at : at + length]


class RecordRun(Sequence[Any]):
    """One partition's records from one fetch, in offset order (never empty).

    Native: ``buffer`` (the fetch's record bytes) and ``entries`` (the native reader's table). Objects: the
    records aiokafka built, where it had to read the bytes itself (compressed batches, an older format …)."""

    __slots__ = ("buffer", "entries", "partition", "records", "table", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        buffer: bytes | None = None,
        entries: bytes | None = None,
        records: list[Any] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.buffer = buffer
        self.entries = entries
        self.table = _table(entries) if entries is not None else None
        self.records = records
        if (self.table is None) == (records is None):
            raise ValueError("RecordRun: either buffer and entries, or records")

    @property
    def native(self) -> bool:
        return self.table is not None

    def __len__(self) -> int:
        return len(self.table) if self.table is not None else len(self.records or ())

    def __getitem__(self, i: Any) -> Any:
        if self.records is not None:
            return self.records[i]
        if isinstance(i, slice):
            raise TypeError("RecordRun: index by row")
        assert self.table is not None and self.buffer is not None and self.entries is not None
        n = len(self.table)
        if not -n <= i < n:
            raise IndexError(i)
        e = self.table[i % n]
        return RunRecord(self.topic, self.partition, int(e["offset"]), int(e["timestamp"]), _value(self.buffer, e))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.records) if self.records is not None else (self[i] for i in range(len(self)))

    @property
    def first_offset(self) -> int:
        return int(self[0].offset) if self.table is None else int(self.table["offset"][0])

    @property
    def last_offset(self) -> int:
        return int(self[-1].offset) if self.table is None else int(self.table["offset"][-1])

    def values(self) -> Sequence[bytes | None]:
        """The records' values: views into the buffer (native), or the records' own."""
        if self.table is None:
            return [r.value for r in self.records or ()]
        assert self.buffer is not None and self.entries is not None
        return SpanValues(self.buffer, self.entries, self.table, 0, len(self.table))

    def tuples(self) -> list[tuple[int, int, int | None, bytes | None]]:
        """The records as ``(partition, offset, timestamp, value)``, what a replay keeps of each."""
        if self.table is None:
            return [(r.partition, r.offset, r.timestamp, r.value) for r in self.records or ()]
        assert NATIVE is not None and self.buffer is not None and self.entries is not None
        out: list[tuple[int, int, int | None, bytes | None]]
        out = NATIVE.run_tuples(self.partition, self.buffer, self.entries)
        return out

    def offset_at(self, row: int) -> int:
        return int(self.table["offset"][row]) if self.table is not None else int(self[row].offset)


def values_of(records: Sequence[Any]) -> Sequence[bytes | None]:
    """The values of a partition's records, whether a :class:`RecordRun` or a list of consumer records."""
    return records.values() if isinstance(records, RecordRun) else [r.value for r in records]


def offset_reader(records: Sequence[Any]) -> Callable[[int], int]:
    """Row -> its record's offset, whether a :class:`RecordRun` or a list of consumer records."""
    if isinstance(records, RecordRun):
        return records.offset_at
    return lambda row: int(records[row].offset)
