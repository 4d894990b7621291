"""Source records and the replay's outcome decoder (the hot path of a replay).

A replay decodes every record of ``search_results`` in the span, so decoding dominates its cost. The
decoder decodes a record's JSON straight into the one :class:`~canary.core.models.SearchOutcome` struct
(msgspec checks the types and bounds the struct declares, ``__post_init__`` the rest), and stores the
interned ``window_key`` and the record's ``offset`` on it. A watermark record (``kind``) and anything the
struct refuses take the reference path (``wire.decode_object`` + ``from_dict``), so error messages and
edge cases (parsers' quirks, NaN literals) are the contract's own. ``tests/replay/test_decode.py`` checks
both paths against each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from canary.core import wire
from canary.core.models import RouterWatermark, SearchOutcome, WindowKey, check_name
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
        self._keys: dict[tuple[str | None, str, str], WindowKey] = {}

    def key(self, deployment_id: str | None, config_name: str, arm: str) -> WindowKey:
        t = (deployment_id, config_name, arm)
        k = self._keys.get(t)
        if k is None:
            # Validated once per key: a name outside the safe set is poison (it would break window ids).
            if deployment_id is not None:
                check_name("SearchOutcome deployment_id", deployment_id)
            check_name("SearchOutcome config_name", config_name)
            # A plain WindowKey: a subclass would never compare equal to the WindowKey instances that
            # restored finalizer state (WindowKey.parse) holds, because dataclass __eq__ requires the
            # exact class — a restarted worker would then track every key twice.
            k = WindowKey(deployment_id, config_name, arm)
            self._keys[t] = k
        return k

    def _reference(self, raw: bytes, offset: int) -> Decoded:
        """The contract's own decoding: what anything unusual falls back to."""
        d = wire.decode_object(raw, wire.OUTCOME)
        try:
            if "kind" in d:
                return RouterWatermark.from_dict(d)
            return self._keyed(SearchOutcome.from_dict(d), offset)
        except Exception as exc:  # the contract's refusal, or anything a hostile value made a check raise
            raise wire.rejection_of(exc) from None

    def decode(self, raw: bytes | None, offset: int = -1) -> Decoded:
        """Decode one value — an outcome or a producer's watermark record. Raises only
        :class:`~canary.core.wire.Rejected`, with its code (``no_value``, ``too_large``, ``too_deep``,
        ``not_json``, ``not_object``, ``invalid`` …), whatever the bytes are."""
        if raw is None:
            raise wire.Rejected("no_value", "search_results record has no value (a tombstone)")
        # Bounded before any parser sees it: msgspec and json both recurse per nesting level.
        wire.check_bounds(raw, wire.OUTCOME)
        if self.strict:
            return self._reference(raw, offset)
        # A watermark record is told from an outcome by its ``kind`` (which an outcome ignores as unknown):
        # those, and anything the struct refuses, take the reference path, which says why.
        if b'"kind"' in raw:
            return self._reference(raw, offset)
        try:
            o = _decode_outcome(raw)
        except Exception:  # not an outcome of exact JSON types: the reference decides, and says why
            return self._reference(raw, offset)
        return self._keyed(o, offset)

    def _keyed(self, o: SearchOutcome, offset: int) -> SearchOutcome:
        """``o`` with its interned window key and its offset (instance dict, not on the wire)."""
        t = (o.deployment_id, o.config_name, o.arm)
        key = self._keys.get(t)
        if key is None:
            key = self.key(*t)
        slots = o.__dict__
        slots["window_key"] = key
        slots["offset"] = offset
        return o


def control_payload(raw: bytes | None) -> Mapping[str, Any] | None:
    """A control record's JSON object, or None if it is not one (the ledger skips those too)."""
    try:
        return wire.decode_object(raw, wire.CONTROL)
    except wire.Rejected:
        return None
