"""Source records and the replay's outcome decoder (the hot path of a replay).

A replay decodes every record of ``search_results`` in the span, so decoding dominates its cost. The
decoder accepts and rejects exactly what :meth:`SearchOutcome.from_dict` accepts and rejects (poison
records are skipped, as the live worker dead-letters them), but for well-formed records it skips the
generic field-by-field validator and the frozen dataclass: it builds a :class:`ReplayOutcome` holding
only what the window core reads (``ts``, ``window_key``, ``latency_ms``, ``error``, ``recall_at_10``,
``recall_source``) plus ``event_id`` for the report. Anything unusual (a missing field, an int where a
float is expected, NaN, a wrong type) falls back to ``from_dict`` itself, so error messages and edge cases are the
contract's own. ``tests/replay/test_decode.py`` checks both paths against each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple, cast

import msgspec

from canary.core import wire
from canary.core.models import (
    MAX_EPOCH_MS,
    MAX_OUTCOME_METRICS,
    SAFE_NAME,
    RouterWatermark,
    SearchOutcome,
    WindowKey,
    check_name,
)
from canary.errors import CanaryError


class SourceRecord(NamedTuple):
    """One record of ``search_results`` as read from Kafka (a plain 4-tuple works as well)."""

    partition: int
    offset: int
    timestamp_ms: int | None  # the Kafka record timestamp; None or negative: use the outcome's ts
    value: bytes | None


_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # beyond 64 bits the reference parser sees a float
_EpochMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
_Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class ReplayOutcome(msgspec.Struct, gc=False):
    """An outcome as the window core reads it, decoded straight from the record's JSON.

    Duck-type compatible with ``SearchOutcome`` for :class:`~canary.core.windows.WindowFinalizer` and
    :class:`~canary.core.aggregations.WindowAggregator` (they read ``ts``, ``window_key``,
    ``latency_ms``, ``error``, ``recall_at_10``, ``recall_source``, ``request_id`` and ``router_id``); ``event_id`` and
    ``offset`` serve the report. The decoder always sets ``window_key`` and ``offset`` itself, whatever
    a record says. ``kind`` only tells a producer's watermark record from an outcome.
    """

    # The constraints only make the struct stricter than SearchOutcome.from_dict: whatever they refuse
    # is decoded again by the reference path, which accepts or rejects it with the contract's message.
    event_id: _NonEmpty
    request_id: _NonEmpty
    ts: _EpochMs
    config_name: _NonEmpty
    config_version: str
    config_hash: str
    arm: Literal["last_good", "candidate"]
    latency_ms: _NonNegative
    result_count: _Count
    router_id: str
    deployment_id: _NonEmpty | None = None
    recall_at_10: _Fraction | None = None
    error: str | None = None
    metrics: dict[str, float] | None = None
    recall_source: Literal["labels", "exact_sample"] | None = None
    kind: Any = msgspec.UNSET
    window_key: Any = None
    offset: int = -1

    def __repr__(self) -> str:
        key = self.window_key.as_str() if isinstance(self.window_key, WindowKey) else None
        return f"ReplayOutcome({self.event_id!r}, ts={self.ts}, key={key!r})"


def as_core_outcomes(outcomes: Sequence[ReplayOutcome | RouterWatermark]) -> Sequence[SearchOutcome | RouterWatermark]:
    """The static view the core's signatures ask for (see :class:`ReplayOutcome`)."""
    return cast("Sequence[SearchOutcome | RouterWatermark]", outcomes)


Decoded = ReplayOutcome | RouterWatermark


_INF = math.inf
_decode_outcome = msgspec.json.Decoder(ReplayOutcome).decode


DECODE_ERRORS = (CanaryError, ValueError, TypeError)
"""What a caller may catch around :meth:`OutcomeDecoder.decode`, which raises only
:class:`~canary.core.wire.Rejected` (a CanaryError); kept for callers that catch the wider set."""


class OutcomeDecoder:
    """Raw ``search_results`` value → :class:`ReplayOutcome`; raises like the live worker's decode.

    ``strict=True`` always goes through ``SearchOutcome.from_dict`` (slower; the reference behaviour).
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._keys: dict[tuple[str | None, str, str], WindowKey] = {}
        self._router_ids: set[str] = set()  # router ids already matched against SAFE_NAME (a handful)
        self._metric_names: set[str] = set()  # custom metric names already matched against SAFE_NAME

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

    def _plain_metrics(self, metrics: Any) -> bool:
        """What SearchOutcome.from_dict accepts, on exact JSON types (anything else: the reference path)."""
        if type(metrics) is not dict or len(metrics) > MAX_OUTCOME_METRICS:
            return False
        for name, value in metrics.items():
            if type(value) is not float or not -_INF < value < _INF:
                return False
            if name not in self._metric_names:
                if type(name) is not str or SAFE_NAME.fullmatch(name) is None:
                    return False
                if len(self._metric_names) < 10_000:
                    self._metric_names.add(name)
        return True

    def _safe_router_id(self, router_id: str) -> bool:
        if SAFE_NAME.fullmatch(router_id) is None:
            return False
        if len(self._router_ids) < 10_000:  # bounded: a flood of made-up ids must not grow memory
            self._router_ids.add(router_id)
        return True

    def _from_outcome(self, o: SearchOutcome, offset: int) -> ReplayOutcome:
        return ReplayOutcome(
            event_id=o.event_id,
            request_id=o.request_id,
            ts=o.ts,
            config_name=o.config_name,
            config_version=o.config_version,
            config_hash=o.config_hash,
            arm=o.arm,
            latency_ms=o.latency_ms,
            result_count=o.result_count,
            router_id=o.router_id,
            deployment_id=o.deployment_id,
            recall_at_10=o.recall_at_10,
            error=o.error,
            metrics=None if o.metrics is None else dict(o.metrics),
            recall_source=o.recall_source,
            window_key=self.key(o.deployment_id, o.config_name, o.arm),
            offset=offset,
        )

    def _reference(self, raw: bytes, offset: int) -> Decoded:
        """The contract's own decoding: what anything unusual falls back to."""
        d = wire.decode_object(raw, wire.OUTCOME)
        try:
            if "kind" in d:
                return RouterWatermark.from_dict(d)
            return self._from_outcome(SearchOutcome.from_dict(d), offset)
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
        try:
            o = _decode_outcome(raw)
        except Exception:  # not an outcome of exact JSON types: the reference decides, and says why
            return self._reference(raw, offset)
        metrics = o.metrics
        # The rest of what from_dict checks (the struct's types and constraints did the others); JSON has
        # no infinity, and a number too large for a float already failed in the struct.
        if (
            o.kind is msgspec.UNSET
            and (o.router_id in self._router_ids or self._safe_router_id(o.router_id))
            and (metrics is None or self._plain_metrics(metrics))
            and (o.recall_source is None or o.recall_at_10 is not None)
        ):
            dep, config_name, arm = o.deployment_id, o.config_name, o.arm
            key = self._keys.get((dep, config_name, arm))
            if key is None:
                try:
                    key = self.key(dep, config_name, arm)
                except Exception as exc:  # a name outside the safe set: the contract's refusal
                    raise wire.rejection_of(exc) from None
            o.window_key = key
            o.offset = offset
            if o.recall_source is None and o.recall_at_10 is not None:
                o.recall_source = "labels"  # an older router's record: recall only ever came from labels
            return o
        return self._reference(raw, offset)


def control_payload(raw: bytes | None) -> Mapping[str, Any] | None:
    """A control record's JSON object, or None if it is not one (the ledger skips those too)."""
    try:
        return wire.decode_object(raw, wire.CONTROL)
    except wire.Rejected:
        return None
