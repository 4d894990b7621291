"""Tumbling event-time windows: time math, watermarks and exactly-once finalization.

Nothing here reads a clock: every call takes ``now_ms``, so live agents pass wall time, replay passes
whatever it wants, and tests are deterministic.

Lateness is decided per outcome against the watermark *as it stood when that outcome arrived*: the
watermark before the batch, advanced by the outcomes of the same partition that precede it in the batch.
Where an outcome is late, its count goes to the first window of its key that was still open at that
moment. Both rules depend only on the arrival sequence, not on how it was cut into micro-batches or on
when ``due`` was called, which is what makes replay reproduce the live windows exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from canary.core.aggregations import WindowAggregate, WindowAggregator
from canary.core.models import RuleVerdict, SearchOutcome, WindowKey, WindowResult
from canary.errors import InvalidEvent

Judge = Callable[[WindowResult], Sequence[RuleVerdict]]
"""Computes a finalized window's verdicts; the finalizer stores them in ``WindowResult.verdicts``."""
AggregatorSource = WindowAggregator | Callable[[WindowKey], WindowAggregator]

_NEG = -(2**62)  # "no watermark yet", small enough for any epoch-ms arithmetic to stay in int64


def window_bounds(ts_ms: int, size_ms: int = 5000) -> tuple[int, int]:
    start = ts_ms - ts_ms % size_ms
    return start, start + size_ms


class WatermarkTracker:
    """Per source partition: the highest event time seen and when (processing time) it last delivered.

    A partition's watermark is its max event time extrapolated by the processing time since its last
    delivery. While a backlog drains, deliveries are continuous and the watermark follows event time;
    when traffic stops it follows the clock, so the last windows still close. The overall watermark is
    the minimum over partitions, so one lagging partition holds everything back.
    """

    def __init__(self) -> None:
        self._max_ts: dict[int, int] = {}
        self._arrival: dict[int, int] = {}

    @property
    def partitions(self) -> tuple[int, ...]:
        return tuple(sorted(self._max_ts))

    def observe(self, partition: int, max_ts_in_batch: int, now_ms: int) -> None:
        self._max_ts[partition] = max(self._max_ts.get(partition, max_ts_in_batch), max_ts_in_batch)
        self._arrival[partition] = max(self._arrival.get(partition, now_ms), now_ms)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition so it no longer holds the watermark back."""
        self._max_ts.pop(partition, None)
        self._arrival.pop(partition, None)

    def max_ts(self, partition: int) -> int | None:
        return self._max_ts.get(partition)

    def watermark(self, now_ms: int, *, exclude: int | None = None) -> int | None:
        marks = [ts + max(0, now_ms - self._arrival[p]) for p, ts in self._max_ts.items() if p != exclude]
        return min(marks) if marks else None


@dataclass(slots=True)
class _Series:
    """Emission cursor of one tracked key."""

    next_start: int  # first window not emitted yet
    idle: int = 0  # empty windows emitted in a row


class WindowFinalizer:
    """Assigns outcomes to windows and emits each window exactly once when the watermark passes it.

    Per key, every slot from the first window to the watermark is emitted, empty ones included, until
    ``idle_windows`` empty windows in a row end the series (a later outcome starts a new one). Verdicts
    come from the optional ``judge``, called once per emitted window.
    """

    def __init__(
        self,
        size_ms: int = 5000,
        grace_ms: int = 1000,
        idle_windows: int = 12,
        aggregator: AggregatorSource | None = None,
        judge: Judge | None = None,
    ) -> None:
        if size_ms <= 0 or grace_ms < 0 or idle_windows < 1:
            raise ValueError(f"bad window settings: size_ms={size_ms} grace_ms={grace_ms} idle={idle_windows}")
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.idle_windows = idle_windows
        self._aggregator_source: AggregatorSource = aggregator or WindowAggregator()
        self._aggregators: dict[WindowKey, WindowAggregator] = {}
        self.judge = judge
        self.tracker = WatermarkTracker()
        self._high = _NEG  # monotonic: an emitted window can never be reopened
        self._series: dict[WindowKey, _Series] = {}
        self._emitted_end: dict[WindowKey, int] = {}
        self._open: dict[WindowKey, dict[int, WindowAggregate]] = {}
        self._offsets: dict[int, int] = {}

    # -- inspection -------------------------------------------------------------------------------

    def applied_offset(self, partition: int) -> int | None:
        """Highest source offset of ``partition`` already added (what a checkpoint covers)."""
        return self._offsets.get(partition)

    @property
    def watermark(self) -> int | None:
        return None if self._high == _NEG else self._high

    @property
    def open_windows(self) -> int:
        return sum(len(w) for w in self._open.values())

    @property
    def tracked_keys(self) -> tuple[WindowKey, ...]:
        return tuple(sorted(self._series, key=WindowKey.as_str))

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        agg = self._aggregators.get(key)
        if agg is None:
            src = self._aggregator_source
            agg = src if isinstance(src, WindowAggregator) else src(key)
            self._aggregators[key] = agg
        return agg

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

    def _advance(self, now_ms: int) -> int:
        wm = self.tracker.watermark(now_ms)
        if wm is not None and wm > self._high:
            self._high = wm
        return self._high

    def add(
        self,
        partition: int,
        outcomes: Sequence[SearchOutcome],
        now_ms: int,
        offsets: Sequence[int] | None = None,
    ) -> list[SearchOutcome]:
        """Add one micro-batch from ``partition``; returns the outcomes that arrived too late.

        With ``offsets`` (source offset per outcome), outcomes at or below the highest offset already
        added from that partition are redeliveries and skipped. Late outcomes are not aggregated, but
        counted in ``late_count`` of their key's next emitted window and returned for dead-lettering.
        """
        if offsets is not None:
            if len(offsets) != len(outcomes):
                raise ValueError(f"{len(offsets)} offsets for {len(outcomes)} outcomes")
            seen = self._offsets.get(partition, -1)
            fresh = [i for i, off in enumerate(offsets) if off > seen]
            if fresh:
                self._offsets[partition] = max(seen, max(offsets))
            outcomes = [outcomes[i] for i in fresh]
            offsets = [offsets[i] for i in fresh]
        if not outcomes:
            return []

        high = self._advance(now_ms)
        ts = np.fromiter((o.ts for o in outcomes), dtype=np.int64, count=len(outcomes))
        prior = self.tracker.max_ts(partition)
        running = np.maximum.accumulate(ts)
        if prior is not None:
            running = np.maximum(running, prior)
        others = self.tracker.watermark(now_ms, exclude=partition)
        marks = running if others is None else np.minimum(running, others)
        marks = np.maximum(marks, high)
        starts = ts - ts % self.size_ms
        late_mask = starts + self.size_ms + self.grace_ms <= marks

        groups: dict[tuple[WindowKey, int], list[int]] = {}
        late_slots: dict[tuple[WindowKey, int], int] = {}
        late: list[SearchOutcome] = []
        for i, o in enumerate(outcomes):
            key = o.window_key
            start = int(starts[i])
            if late_mask[i] or start < self._emitted_end.get(key, _NEG):
                # The first window whose end + grace is still ahead of this outcome's watermark.
                mark = int(marks[i])
                slot = ((mark - self.grace_ms - self.size_ms) // self.size_ms + 1) * self.size_ms
                slot = max(slot, self._emitted_end.get(key, _NEG))
                late_slots[(key, slot)] = late_slots.get((key, slot), 0) + 1
                late.append(o)
            else:
                groups.setdefault((key, start), []).append(i)

        for (key, start), idx in groups.items():
            agg = self.aggregator_for(key)
            self._track(key, start)
            windows = self._open.setdefault(key, {})
            state = windows.get(start) or agg.initialize()
            top = None if offsets is None else max(offsets[i] for i in idx)
            windows[start] = agg.agg(state, [outcomes[i] for i in idx], top)
        for (key, slot), n in late_slots.items():
            self._track(key, slot)
            windows = self._open.setdefault(key, {})
            windows[slot] = (windows.get(slot) or self.aggregator_for(key).initialize()).with_late(n)

        self.tracker.observe(partition, int(ts.max()), now_ms)
        self._advance(now_ms)
        return late

    # -- output -----------------------------------------------------------------------------------

    def due(self, now_ms: int) -> list[WindowResult]:
        """Windows whose end + grace <= watermark, each exactly once, ordered by (start, key)."""
        wm = self._advance(now_ms)
        if wm == _NEG:
            return []
        out: list[WindowResult] = []
        for key in self.tracked_keys:
            out.extend(self._emit(key, wm - self.grace_ms, now_ms))
        out.sort(key=lambda r: (r.window_start_ms, r.key.as_str()))
        return out

    def flush_all(self, now_ms: int) -> list[WindowResult]:
        """Close everything up to each key's last open window (end of replay input); trailing empties
        are not invented."""
        out: list[WindowResult] = []
        for key in self.tracked_keys:
            windows = self._open.get(key)
            if windows:
                end = max(windows) + self.size_ms
                out.extend(self._emit(key, end, now_ms))
                self._high = max(self._high, end + self.grace_ms)
            self._series.pop(key, None)
        out.sort(key=lambda r: (r.window_start_ms, r.key.as_str()))
        return out

    def _emit(self, key: WindowKey, until_end: int, now_ms: int) -> list[WindowResult]:
        """Emit ``key``'s windows ending at or before ``until_end``."""
        series = self._series[key]
        windows = self._open.get(key, {})
        agg = self.aggregator_for(key)
        out: list[WindowResult] = []
        while series.next_start + self.size_ms <= until_end:
            start = series.next_start
            state = windows.pop(start, None) or agg.initialize()
            result = agg.result(state, key, start, start + self.size_ms, (), now_ms)
            if self.judge is not None:
                result = replace(result, verdicts=tuple(self.judge(result)))
            out.append(result)
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

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume without re-emitting or losing a window. Processing-time
        arrival stamps are left out on purpose: after a restart they would extrapolate over the
        downtime and declare the whole backlog late."""

        def keyed(m: Mapping[WindowKey, Any]) -> dict[str, Any]:
            return {k.as_str(): m[k] for k in sorted(m, key=WindowKey.as_str)}

        return {
            "size_ms": self.size_ms,
            "grace_ms": self.grace_ms,
            "idle_windows": self.idle_windows,
            "watermark": self.watermark,
            "partition_max_ts": {str(p): self.tracker.max_ts(p) for p in self.tracker.partitions},
            "offsets": {str(p): self._offsets[p] for p in sorted(self._offsets)},
            "series": keyed({k: {"next_start": s.next_start, "idle": s.idle} for k, s in self._series.items()}),
            "emitted_end": keyed(self._emitted_end),
            "open": keyed({k: {str(s): w[s].to_dict() for s in sorted(w)} for k, w in self._open.items() if w}),
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        now_ms: int | None = None,
        aggregator: AggregatorSource | None = None,
        judge: Judge | None = None,
    ) -> WindowFinalizer:
        """Restore a finalizer. With ``now_ms`` the partitions' event-time marks are re-seeded as if
        they had just delivered, so an idle pipeline still closes its windows after a restart."""
        try:
            out = cls(int(d["size_ms"]), int(d["grace_ms"]), int(d["idle_windows"]), aggregator, judge)
            wm = d["watermark"]
            out._high = _NEG if wm is None else int(wm)
            if now_ms is not None:
                for p, ts in d["partition_max_ts"].items():
                    out.tracker.observe(int(p), int(ts), now_ms)
            out._offsets = {int(p): int(o) for p, o in d["offsets"].items()}
            for k, s in d["series"].items():
                out._series[WindowKey.parse(k)] = _Series(int(s["next_start"]), int(s["idle"]))
            out._emitted_end = {WindowKey.parse(k): int(v) for k, v in d["emitted_end"].items()}
            for k, w in d["open"].items():
                out._open[WindowKey.parse(k)] = {int(s): WindowAggregate.from_dict(a) for s, a in w.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidEvent(f"WindowFinalizer: malformed state ({exc!r})") from None
        return out
