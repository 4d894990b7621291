"""The decision pipeline's window and batching settings: one object, read by the live stages (defaults)
and by replay (how it cuts recorded input), so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from canary.core.models import JSONDict
from canary.core.windows import GRACE_MS, IDLE_WINDOWS, WINDOW_MS
from canary.settings import NativeMode


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Window and batching settings: the live worker's stages take their defaults from here, and replay cuts
    recorded input into the batches they would have seen."""

    window_ms: int = WINDOW_MS
    grace_ms: int = GRACE_MS
    idle_windows: int = IDLE_WINDOWS
    # Records per fetch of the live stages (max_records). The windows stage reading runs (canary.kafka.runs) takes a
    # partition's fetch whole (at most aiokafka's max_partition_fetch_bytes, 1 MiB), counted as one.
    batch_max: int = 5000
    # How long a live fetch waits for more (fetch_max_wait_ms), in Kafka time. 100 ms, not 50: at 8k outcomes/s the
    # 256 KiB below arrive in ~90 ms, so a 50 ms wait returned every fetch early and the stage paid a fetch's and a
    # batch's fixed costs twice as often (bench_live 8k/s, three interleaved pairs: 8.1 / 8.6 / 9.3 -> 6.8 / 7.6 /
    # 6.6 µs an outcome; windows out p50 177 / 99 / 172 -> 184 / 208 / 183 ms after their end). From ~16k/s the
    # bytes come first, so the wait only adds latency below that: at most 50 ms more, and only while traffic is slow.
    batch_span_ms: int = 100
    # What the windows stage's fetch waits for, up to batch_span_ms (fetch_min_bytes): with the default of 1 byte a
    # fetch returns as soon as anything arrived, and at 8k outcomes/s the stage got a few records per partition a
    # batch, paying the batch's fixed costs (the loop, the core's calls, numpy's) for each few (bench_live).
    batch_min_bytes: int = 256 << 10
    # The windows stage's decoder, live and in replay (Settings.native, CANARY_NATIVE; canary.pipeline.decode).
    native: NativeMode = "auto"

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.grace_ms < 0 or self.idle_windows < 1:
            raise ValueError(f"bad window settings: {self}")
        if self.batch_max < 1 or self.batch_span_ms < 0 or self.batch_min_bytes < 1:
            raise ValueError(f"bad batch settings: {self}")

    @property
    def lookback_ms(self) -> int:
        """Read this much before the first reported window so its watermark state is warm."""
        return self.window_ms + self.grace_ms

    @property
    def lookahead_ms(self) -> int:
        """Read this much after the last reported window so late-published outcomes are seen."""
        return self.window_ms + self.grace_ms

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d


DEFAULTS = PipelineSettings()
