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

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from canary.core import wire
from canary.core.models import RouterWatermark, SearchOutcome
from canary.errors import CanaryError


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


DECODE_ERRORS = (CanaryError, ValueError, TypeError)
"""What a caller may catch around :meth:`OutcomeDecoder.decode`, which raises only
:class:`~canary.core.wire.Rejected` (a CanaryError); kept for callers that catch the wider set."""


class OutcomeDecoder:
    """Raw ``search_results`` value → :class:`SearchOutcome`; raises like the live worker's decode.

    ``strict=True`` always goes through ``SearchOutcome.from_dict`` (slower; the reference behaviour).
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

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
