"""Source records and the replay's outcome decoder (the hot path of a replay).

A replay decodes every record of ``search_results`` in the span, so decoding dominates its cost. The
decoder decodes a record's JSON straight into the one :class:`~canary.core.models.SearchOutcome` struct
(msgspec checks the types and bounds the struct declares, ``__post_init__`` the rest) and adds nothing to
it: the window key is derived (one shared object per key), and a caller that needs a record's offset keeps
the offsets beside the outcomes (the windows stage and the recomputation pass them to ``add`` already).
A watermark record (``kind``) and anything the
struct refuses take the reference path (``wire.decode_object`` + ``from_dict``), so error messages and
edge cases (parsers' quirks, NaN literals) are the contract's own. ``tests/replay/test_decode.py`` checks
both paths against each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from canary.core import wire
from canary.core.columns import SKIPPED, ColumnBatch
from canary.core.models import MAX_EPOCH_MS, RouterWatermark, SearchOutcome, window_key_of
from canary.core.rings import ring_arm
from canary.core.split import USER_GROUPS
from canary.errors import CanaryError, ConfigError
from canary.pipeline.native import NATIVE
from canary.pipeline.runs import SpanValues
from canary.settings import NativeMode

log = logging.getLogger(__name__)


class SourceRecord(NamedTuple):
    """One record of ``search_results`` as read from Kafka (a plain 4-tuple works as well)."""

    partition: int
    offset: int
    timestamp_ms: int | None  # the Kafka record timestamp; None or negative: use the outcome's ts
    value: bytes | None


Decoded = SearchOutcome | RouterWatermark


def as_core_outcomes(outcomes: Sequence[Decoded]) -> Sequence[SearchOutcome | RouterWatermark]:
    """The decoded items as the core's signatures ask for them (kept for callers; now the same type)."""
    return outcomes


_decode_outcome = msgspec.json.Decoder(SearchOutcome).decode


Columns = tuple[ColumnBatch | None, list[tuple[int, Exception]]]
"""What :meth:`OutcomeDecoder.decode_columns` returns: the batch as columns (None: decode it record by record) and the
rows refused."""

AHEAD_ROWS = getattr(NATIVE, "RELEASE_ROWS", 512)
"""From this many rows the native decoder releases the GIL (native/src/lib.rs): a batch that large decodes on another
core while the caller works on (the windows stage's next partition, replay's next chunk)."""


DECODE_ERRORS = (CanaryError, ValueError, TypeError)
"""What a caller may catch around :meth:`OutcomeDecoder.decode`, which raises only
:class:`~canary.core.wire.Rejected` (a CanaryError); kept for callers that catch the wider set."""


ROW = np.dtype(
    {
        "names": [
            "ts",
            "latency",
            "recall",
            "request",
            "user_group",
            "key",
            "router",
            "status",
            "errored",
            "exact_sample",
        ],
        "formats": ["<i8", "<f8", "<f8", "<u8", "<i8", "<i4", "<i4", "u1", "?", "?"],
        "offsets": [0, 8, 16, 24, 32, 40, 44, 48, 49, 50],
        "itemsize": 56,
    }
)
"""A row of the native decoder's buffer (``Row`` in native/src/lib.rs): the columns are views of its fields."""


class OutcomeDecoder:
    """Raw ``search_results`` value → :class:`SearchOutcome`; raises like the live worker's decode.

    ``strict=True`` always goes through ``SearchOutcome.from_dict`` (slower; the reference behaviour).
    """

    def __init__(self, strict: bool = False, native: NativeMode = "off") -> None:
        self.strict = strict
        if native == "on" and NATIVE is None:
            raise ConfigError(
                "CANARY_NATIVE=on: the native decoder (canary_native) is not installed; `make install` builds it "
                "where cargo is, or set CANARY_NATIVE=auto to use the Python path without it"
            )
        self.native = NATIVE if native != "off" and not strict else None
        if self.native is not None and ROW.itemsize != self.native.ROW_BYTES:  # an extension of another build
            raise ConfigError(
                f"canary_native rows are {self.native.ROW_BYTES} bytes, this canary reads {ROW.itemsize}: "
                "reinstall it (`make install`) or set CANARY_NATIVE=off"
            )

    def decode_columns(self, values: Sequence[bytes | None], offset_at: Callable[[int], int] | None = None) -> Columns:
        """A batch of raw values as columns (the native decoder), and the rows it refused ``(row, Rejected)``
        — refused by the reference, which decides every row the native decoder does not take as certain.
        ``(None, [])`` when there is no native decoder, or a row the reference accepts is one the columns cannot
        hold (an outcome with metrics, say): the caller decodes the batch one record at a time, as before.
        ``offset_at``: row → its record's offset, for :meth:`ColumnBatch.offset_of`."""
        native = self.native
        if native is None or not values:
            return None, []
        limits = {"max_bytes": wire.OUTCOME.max_bytes, "max_epoch_ms": MAX_EPOCH_MS, "user_groups": USER_GROUPS}
        try:
            if isinstance(values, SpanValues):  # where they lie in the fetch's bytes: no object per value
                packed, raw_keys, routers, raw_marks = native.decode_spans(
                    values.buffer, values.entries, values.lo, values.hi, **limits
                )
            else:
                values = values if isinstance(values, list) else list(values)
                packed, raw_keys, routers, raw_marks = native.decode_batch(values, **limits)
        except Exception:  # a bug in the extension (a Rust panic arrives as an exception): the reference decides
            log.exception(
                "the native decoder failed on a batch of %d records; decoding it record by record", len(values)
            )
            return None, []
        rows = np.frombuffer(packed, dtype=ROW)
        status = rows["status"].copy()
        refused: list[tuple[int, Exception]] = []
        for row in np.flatnonzero(status == native.FALLBACK).tolist():
            try:
                self.decode(values[row])
            except Exception as exc:  # the decoder raises only Rejected
                refused.append((row, exc))
            else:
                return None, []
            status[row] = SKIPPED
        batch = ColumnBatch(
            status=status,
            ts=rows["ts"],
            latency=rows["latency"],
            recall=rows["recall"],
            errored=rows["errored"],
            exact_sample=rows["exact_sample"],
            user_group=rows["user_group"],
            key=rows["key"],
            router=rows["router"],
            request=rows["request"],
            keys=[window_key_of(d, c, ring_arm(a, r)) for d, c, a, r in raw_keys],
            routers=routers,
            watermarks={
                row: RouterWatermark(routers[code], mark, state, seq) for row, code, mark, state, seq in raw_marks
            },
            values=values,
            decode=self.decode,
            offset_at=offset_at,
        )
        return batch, refused

    @staticmethod
    def _reference(raw: bytes) -> Decoded:
        """The contract's own decoding: what anything unusual falls back to."""
        d = wire.decode_object(raw, wire.OUTCOME)
        try:
            if "kind" in d:
                return RouterWatermark.from_dict(d)
            return SearchOutcome.from_dict(d)
        except Exception as exc:  # the contract's refusal, or anything a hostile value made a check raise
            raise wire.rejection_of(exc) from None

    def decode(self, raw: bytes | None) -> Decoded:
        """Decode one value — an outcome or a producer's watermark record. Raises only
        :class:`~canary.core.wire.Rejected`, with its code (``no_value``, ``too_large``, ``too_deep``,
        ``not_json``, ``not_object``, ``invalid`` …), whatever the bytes are."""
        if raw is None:
            raise wire.Rejected("no_value", "search_results record has no value (a tombstone)")
        # Bounded before any parser sees it: msgspec and json both recurse per nesting level.
        wire.check_bounds(raw, wire.OUTCOME)
        if self.strict:
            return self._reference(raw)
        try:
            return _decode_outcome(raw)
        except Exception:
            # A watermark record (its ``kind`` fails the struct, see SearchOutcome.kind), or not an outcome
            # of exact JSON types: the reference decides, and says why.
            return self._reference(raw)


def control_payload(raw: bytes | None) -> Mapping[str, Any] | None:
    """A control record's JSON object, or None if it is not one (the ledger skips those too)."""
    try:
        return wire.decode_object(raw, wire.CONTROL)
    except wire.Rejected:
        return None
