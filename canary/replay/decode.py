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

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from canary.core.jsonio import loads
from canary.core.models import MAX_OUTCOME_METRICS, SAFE_NAME, RouterWatermark, SearchOutcome, WindowKey, check_name
from canary.errors import CanaryError, InvalidEvent


class SourceRecord(NamedTuple):
    """One record of ``search_results`` as read from Kafka (a plain 4-tuple works as well)."""

    partition: int
    offset: int
    timestamp_ms: int | None  # the Kafka record timestamp; None or negative: use the outcome's ts
    value: bytes | None


class ReplayOutcome:
    """The fields of a :class:`SearchOutcome` that windowing and aggregation read.

    Duck-type compatible with ``SearchOutcome`` for :class:`~canary.core.windows.WindowFinalizer` and
    :class:`~canary.core.aggregations.WindowAggregator` (they read ``ts``, ``window_key``,
    ``latency_ms``, ``error`` and ``recall_at_10``); ``event_id`` and ``offset`` serve the report.
    """

    __slots__ = (
        "error",
        "event_id",
        "latency_ms",
        "metrics",
        "offset",
        "recall_at_10",
        "recall_source",
        "request_id",
        "router_id",
        "ts",
        "window_key",
    )

    def __init__(
        self,
        event_id: str,
        ts: int,
        window_key: WindowKey,
        latency_ms: float,
        recall_at_10: float | None,
        error: str | None,
        offset: int = -1,
        request_id: str = "",
        router_id: str = "",
        metrics: Mapping[str, float] | None = None,
        recall_source: str | None = None,
    ) -> None:
        self.event_id = event_id
        self.ts = ts
        self.window_key = window_key
        self.latency_ms = latency_ms
        self.recall_at_10 = recall_at_10
        self.error = error
        self.offset = offset
        self.request_id = request_id or event_id
        self.router_id = router_id
        self.metrics = metrics
        self.recall_source = recall_source if recall_source is not None or recall_at_10 is None else "labels"

    def __repr__(self) -> str:
        return f"ReplayOutcome({self.event_id!r}, ts={self.ts}, key={self.window_key.as_str()!r})"


def as_core_outcomes(outcomes: Sequence[ReplayOutcome | RouterWatermark]) -> Sequence[SearchOutcome | RouterWatermark]:
    """The static view the core's signatures ask for (see :class:`ReplayOutcome`)."""
    return cast("Sequence[SearchOutcome | RouterWatermark]", outcomes)


Decoded = ReplayOutcome | RouterWatermark


_INF = math.inf


DECODE_ERRORS = (CanaryError, ValueError, TypeError)
"""What the live worker catches around decoding an outcome (and dead-letters as invalid)."""


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
            o.event_id,
            o.ts,
            self.key(o.deployment_id, o.config_name, o.arm),
            o.latency_ms,
            o.recall_at_10,
            o.error,
            offset,
            o.request_id,
            o.router_id,
            o.metrics,
            o.recall_source,
        )

    def decode(self, raw: bytes | None, offset: int = -1) -> Decoded:
        """Decode one value — an outcome or a producer's watermark record; raises ``InvalidEvent`` /
        ``ValueError`` / ``TypeError`` (see DECODE_ERRORS)."""
        if raw is None:
            raise InvalidEvent("SearchOutcome: record has no value (tombstone)")
        d = json.loads(raw) if self.strict else loads(raw)
        if type(d) is dict and "kind" in d:
            return RouterWatermark.from_dict(d)
        if self.strict or type(d) is not dict:
            return self._from_outcome(SearchOutcome.from_dict(d), offset)
        try:
            event_id = d["event_id"]
            ts = d["ts"]
            config_name = d["config_name"]
            arm = d["arm"]
            latency = d["latency_ms"]
            request_id = d["request_id"]
            config_version = d["config_version"]
            config_hash = d["config_hash"]
            result_count = d["result_count"]
            router_id = d["router_id"]
        except KeyError:
            return self._from_outcome(SearchOutcome.from_dict(d), offset)
        dep = d.get("deployment_id")
        recall = d.get("recall_at_10")
        error = d.get("error")
        metrics = d.get("metrics")
        source = d.get("recall_source")
        if metrics is not None and not self._plain_metrics(metrics):
            return self._from_outcome(SearchOutcome.from_dict(d), offset)
        # Exactly the conditions from_dict checks, on exact JSON types; ints for the float fields (and
        # anything else unusual) take the reference path so conversion and overflow behave the same.
        if (
            type(event_id) is str
            and event_id
            and type(ts) is int
            and ts >= 0
            and type(config_name) is str
            and config_name
            and (arm == "last_good" or arm == "candidate")
            and type(latency) is float
            and 0.0 <= latency < _INF
            and (dep is None or (type(dep) is str and dep))
            and (recall is None or (type(recall) is float and 0.0 <= recall <= 1.0))
            and (source is None or ((source == "exact_sample" or source == "labels") and recall is not None))
            and (error is None or type(error) is str)
            and type(request_id) is str
            and request_id
            and type(config_version) is str
            and type(config_hash) is str
            and type(result_count) is int
            and result_count >= 0
            and type(router_id) is str
            and (router_id in self._router_ids or self._safe_router_id(router_id))
        ):
            key = self._keys.get((dep, config_name, arm)) or self.key(dep, config_name, arm)
            return ReplayOutcome(
                event_id, ts, key, latency, recall, error, offset, request_id, router_id, metrics, source
            )
        return self._from_outcome(SearchOutcome.from_dict(d), offset)


def control_payload(raw: bytes | None) -> Mapping[str, Any] | None:
    """A control record's JSON, or None if it is not JSON (the ledger skips those too)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
