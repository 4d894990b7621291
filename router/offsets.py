"""Commit only what is finished: requests run concurrently, offsets complete out of order."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionProgress:
    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest dispatched offset

    def committable(self) -> int | None:
        """Offset to commit: everything before it is done (Kafka commits 'next offset to read')."""
        if self.in_flight:
            return min(self.in_flight)
        return self.next_offset


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionProgress] = {}

    def started(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.setdefault((topic, partition), PartitionProgress())
        part.in_flight.add(offset)
        part.next_offset = max(part.next_offset or 0, offset + 1)

    def finished(self, topic: str, partition: int, offset: int) -> None:
        """The outcome of ``offset`` is on the broker. A partition forgotten meanwhile (revoked in a
        rebalance) is left alone: its new owner resumes from the committed offset."""
        part = self._parts.get((topic, partition))
        if part is not None:
            part.in_flight.discard(offset)

    def committable(self) -> dict[tuple[str, int], int]:
        out = {}
        for tp, part in self._parts.items():
            offset = part.committable()
            if offset is not None:
                out[tp] = offset
        return out

    def forget(self, topic: str, partition: int) -> None:
        self._parts.pop((topic, partition), None)
