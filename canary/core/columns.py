"""A batch of ``search_results`` records as columns: what the native decoder hands the window core.

One object per batch instead of one per record (issue #24, docs/adr/0006-native-batch-core.md). Rows keep the
batch's order; a row is an outcome, a producer's watermark record, or skipped (a record the reference decoder
refused, dead-lettered by the caller). The core makes an outcome object only for the rare paths that keep one
(late, future, one by one): :meth:`ColumnBatch.objects` decodes those rows' raw values with the reference decoder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from canary.core.aggregations import OutcomeColumns
from canary.core.models import RouterWatermark, SearchOutcome, WindowKey

T = TypeVar("T", WindowKey, str)

OUTCOME, WATERMARK, SKIPPED = 0, 1, 2
"""Row kinds (``ColumnBatch.status``); the native decoder's codes."""


def _joined(first: list[T], second: list[T]) -> tuple[list[T], np.ndarray]:
    """One code table for two: ``first``'s, then what only ``second`` has; and ``second``'s codes renumbered into it
    (indexed by code; code -1, a row that is not an outcome, maps to -1 again)."""
    joined = list(first)
    code = {item: i for i, item in enumerate(joined)}
    for item in second:
        if item not in code:
            code[item] = len(joined)
            joined.append(item)
    return joined, np.asarray([code[item] for item in second] + [-1], dtype=np.int32)


def _shifted(offset_at: Callable[[int], int], lo: int, row: int) -> int:
    return offset_at(row + lo)


@dataclass(eq=False, slots=True)
class ColumnBatch:
    status: np.ndarray  # uint8 per row: OUTCOME, WATERMARK or SKIPPED
    ts: np.ndarray  # int64 event time
    latency: np.ndarray  # float64
    recall: np.ndarray  # float64, NaN: no label
    errored: np.ndarray  # bool
    exact_sample: np.ndarray  # bool
    user_group: np.ndarray  # int64, -1: none
    key: np.ndarray  # int32 code into ``keys``
    router: np.ndarray  # int32 code into ``routers``
    request: np.ndarray  # uint64: canary.core.windows.request_key of the outcome
    keys: list[WindowKey]
    routers: list[str]
    watermarks: dict[int, RouterWatermark]  # row -> its watermark record
    values: Sequence[bytes | None]  # the raw values, for :meth:`objects`
    decode: Callable[[bytes | None], SearchOutcome | RouterWatermark]
    offset_at: Callable[[int], int] | None = None  # row -> its record's offset, where the caller knows it
    row_of: dict[int, int] = field(default_factory=dict)  # id(materialized outcome) -> its row

    def __len__(self) -> int:
        return int(self.status.size)

    def slice(self, lo: int, hi: int) -> ColumnBatch:
        """Rows ``lo`` to ``hi`` as a batch of their own (views; its ``row_of`` counts from ``lo``)."""
        return ColumnBatch(
            self.status[lo:hi],
            self.ts[lo:hi],
            self.latency[lo:hi],
            self.recall[lo:hi],
            self.errored[lo:hi],
            self.exact_sample[lo:hi],
            self.user_group[lo:hi],
            self.key[lo:hi],
            self.router[lo:hi],
            self.request[lo:hi],
            self.keys,
            self.routers,
            {row - lo: mark for row, mark in self.watermarks.items() if lo <= row < hi},
            self.values[lo:hi],
            self.decode,
            None if self.offset_at is None else functools.partial(_shifted, self.offset_at, lo),
        )

    def take(self, rows: Sequence[int]) -> ColumnBatch:
        """These rows, in this order, as a batch of their own (copies; no ``offset_at``: the caller sets one)."""
        at = np.asarray(rows, dtype=np.int64)
        marks = self.watermarks
        return ColumnBatch(
            self.status[at],
            self.ts[at],
            self.latency[at],
            self.recall[at],
            self.errored[at],
            self.exact_sample[at],
            self.user_group[at],
            self.key[at],
            self.router[at],
            self.request[at],
            self.keys,
            self.routers,
            {i: marks[row] for i, row in enumerate(at.tolist()) if row in marks} if marks else {},
            [self.values[row] for row in at.tolist()],
            self.decode,
        )

    @staticmethod
    def concat(
        first: ColumnBatch,
        second: ColumnBatch,
        values: Sequence[bytes | None],
        offset_at: Callable[[int], int] | None,
    ) -> ColumnBatch:
        """``second``'s rows after ``first``'s (decoded apart: its key and router codes are renumbered into one
        table); ``values`` and ``offset_at`` describe the joined rows."""
        keys, key_map = _joined(first.keys, second.keys)
        routers, router_map = _joined(first.routers, second.routers)
        shift = len(first)
        return ColumnBatch(
            np.concatenate((first.status, second.status)),
            np.concatenate((first.ts, second.ts)),
            np.concatenate((first.latency, second.latency)),
            np.concatenate((first.recall, second.recall)),
            np.concatenate((first.errored, second.errored)),
            np.concatenate((first.exact_sample, second.exact_sample)),
            np.concatenate((first.user_group, second.user_group)),
            np.concatenate((first.key, key_map[second.key])),
            np.concatenate((first.router, router_map[second.router])),
            np.concatenate((first.request, second.request)),
            keys,
            routers,
            {**first.watermarks, **{row + shift: mark for row, mark in second.watermarks.items()}},
            values,
            first.decode,
            offset_at,
        )

    def offset_of(self, outcome: SearchOutcome) -> int | None:
        """The offset of the record an outcome of :meth:`objects` came from (None: not one of them, or unknown)."""
        row = self.row_of.get(id(outcome))
        return None if row is None or self.offset_at is None else self.offset_at(row)

    def outcome_rows(self, lo: int, hi: int) -> np.ndarray:
        return lo + np.flatnonzero(self.status[lo:hi] == OUTCOME)

    def columns(self, rows: np.ndarray) -> OutcomeColumns:
        return OutcomeColumns(
            self.latency[rows], self.errored[rows], self.recall[rows], self.exact_sample[rows], self.user_group[rows]
        )

    def objects(self, rows: Sequence[int] | np.ndarray) -> list[SearchOutcome]:
        """The outcomes of these rows as objects (decoded by the reference; remembered in ``row_of``)."""
        out: list[SearchOutcome] = []
        for row in np.asarray(rows, dtype=np.int64).tolist():
            item = self.decode(self.values[row])
            assert isinstance(item, SearchOutcome)  # the native decoder accepted it as one
            self.row_of[id(item)] = row
            out.append(item)
        return out
