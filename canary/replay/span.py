"""What a replay reads from Kafka, as plain data (the recomputation and the report need no Kafka)."""

from __future__ import annotations

from dataclasses import dataclass, field

from canary.core.models import ControlCommand, JSONDict, WindowResult

RecordTuple = tuple[int, int, int | None, bytes | None]
"""``(partition, offset, kafka_timestamp_ms, raw_value)`` of one ``search_results`` record."""


@dataclass
class SpanData:
    """What a replay reads: raw outcome records, control commands, and the live results to compare with."""

    from_ms: int
    to_ms: int
    read_from_ms: int
    read_to_ms: int
    horizon_ms: int
    # Out of repr: asyncio.run formats the main task (and so its result) when it restores the SIGINT
    # handler, and a repr of every record of a large span took longer than reading it.
    records: list[RecordTuple] = field(repr=False)
    commands: list[ControlCommand] = field(repr=False)
    live_windows: list[WindowResult] = field(repr=False)
    live_late: list[JSONDict] = field(default_factory=list, repr=False)
    invalid_commands: int = 0
    invalid_windows: int = 0
    read_seconds: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    command_times: list[int | None] = field(default_factory=list, repr=False)  # each command's append time

    def to_dict(self) -> JSONDict:
        return {
            "read_from_ms": self.read_from_ms,
            "read_to_ms": self.read_to_ms,
            "horizon_ms": self.horizon_ms,
            "records": len(self.records),
            "control_commands": len(self.commands),
            "invalid_control_commands": self.invalid_commands,
            "live_windows_read": len(self.live_windows),
            "invalid_live_windows": self.invalid_windows,
            "live_late_dead_letters": len(self.live_late),
            "offsets": {t: {str(p): list(r) for p, r in parts.items()} for t, parts in self.offsets.items()},
            "read_seconds": {k: round(v, 3) for k, v in self.read_seconds.items()},
        }
