"""Event contracts shared by the router, the stream processor, replay and reports.

Every message is declared once, as a frozen ``msgspec.Struct`` whose annotations are the contract (the JSON
Schema in docs/contracts.md is generated from them: ``python -m canary.core.schemas``). ``to_dict`` (JSON-ready)
and ``from_dict`` are thin wrappers over ``msgspec.to_builtins`` / ``msgspec.convert``. ``from_dict`` is the
gate for data read off a topic, so it raises :class:`InvalidEvent` naming the record, the field and the
offending value: a poison message must be diagnosable from the log line alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from canary.core import structs
from canary.core.rings import RING_SEPARATOR
from canary.core.split import USER_GROUPS
from canary.errors import InvalidEvent

JSONDict = dict[str, Any]

Arm = Literal["last_good", "candidate"]
ARMS: tuple[Arm, ...] = ("last_good", "candidate")
# ``shared``: the candidate breaks the rule in a window where last_good breaks it too (a shock both arms
# share: not proven the candidate's fault; canary.core.judge).
Outcome = Literal["pass", "fail", "inconclusive", "error", "shared"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "inconclusive", "error", "shared")
CommandType = Literal["start", "rollback", "promote", "pause", "resume", "set_weight", "abort"]
COMMAND_TYPES: tuple[CommandType, ...] = (
    "start",
    "rollback",
    "promote",
    "pause",
    "resume",
    "set_weight",
    "abort",
)
# ``details.action`` of an audit line (the spec's audit.log shows ``"action": "start_canary_deployment"``):
# what the event is an attempt to do; ``success`` and ``error_message`` say how it ended, ``user_id`` who.
AuditAction = Literal[
    "start_canary_deployment",
    "rollback_canary_deployment",
    "promote_canary_deployment",
    "pause_canary_deployment",
    "resume_canary_deployment",
    "set_canary_weight",
    "abort_canary_deployment",
    "reject_invalid_command",
    "apply_router_state",
    "deliver_alert",
]
COMMAND_ACTIONS: dict[CommandType, AuditAction] = {
    "start": "start_canary_deployment",
    "rollback": "rollback_canary_deployment",
    "promote": "promote_canary_deployment",
    "pause": "pause_canary_deployment",
    "resume": "resume_canary_deployment",
    "set_weight": "set_canary_weight",
    "abort": "abort_canary_deployment",
}
RouterStatus = Literal["idle", "running", "paused", "rolled_back", "promoted", "aborted"]
ROUTER_STATUSES: tuple[RouterStatus, ...] = (
    "idle",
    "running",
    "paused",
    "rolled_back",
    "promoted",
    "aborted",
)

RecallSource = Literal["labels", "exact_sample"]
RECALL_SOURCES: tuple[RecallSource, ...] = ("labels", "exact_sample")
"""Where an outcome's ``recall_at_10`` came from: the request's own labels, or the router's sampled exact
(brute-force) top-10 for an unlabeled request (docs/contracts.md, "Recall without labels")."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Deployment ids, config names and router ids: letters, digits, '_', '.', '-' (1-128, not starting with a
separator). Window keys join names with '|' and window ids append '@': neither may appear in a name."""
SAFE_NAME_HINT = "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a safe name, else :class:`InvalidEvent` naming the kind, the value and the rule."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise InvalidEvent(f"{kind} {value!r:.140}: {SAFE_NAME_HINT}")
    return value


MAX_OUTCOME_METRICS = 32  # a record may carry at most this many extra numbers (bounded state per window)

MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last instant ISO 8601 (and Python's datetime) can write. Every epoch-ms field
is checked against it (and 0) at the edge, so no hostile timestamp reaches a formatter that cannot take it."""


def iso_ms(ts_ms: int) -> str:
    """Epoch milliseconds → ``2024-01-02T03:04:05.678Z``."""
    # Integer timedelta arithmetic: fromtimestamp(ts / 1000) can round the milliseconds off by one.
    dt = _EPOCH + timedelta(milliseconds=ts_ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(value: str | int) -> int:
    """ISO 8601 (naive means UTC) or epoch milliseconds (int or digit string) → epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidEvent(f"time: expected ISO 8601 or epoch ms, got {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise InvalidEvent(f"time: expected ISO 8601 or epoch ms, got {value!r}")
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"time: not ISO 8601 or epoch ms: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- the one gate from a parsed mapping to a message ----------------------------------------------------------
#
# Each message below is a frozen msgspec.Struct: its annotations (types, Literal sets, Meta bounds) are the
# contract, checked by msgspec.convert (from_dict) and by msgspec.json decoding (canary.pipeline.decode), and
# the JSON Schema in docs/contracts.md is generated from them (canary.core.schemas). What an annotation
# cannot say (a safe name, a finite number, a pair of fields) is checked in __post_init__, which both paths
# run. Readers ignore unknown fields (a newer producer may add some): no message forbids them.

SAFE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

# A safe name, as the schema states it. The pattern is checked in __post_init__ (through a small cache of
# names already seen) rather than by msgspec, whose per-value regex would double the hot decode's cost.
Name = Annotated[str, Meta(min_length=1, max_length=128, extra_json_schema={"pattern": SAFE_NAME_PATTERN})]
NonEmpty = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # beyond 64 bits the JSON parsers disagree (float or int)
EpochMs = Annotated[int, Meta(ge=0, le=MAX_EPOCH_MS, description="epoch milliseconds, 1970 to 9999")]
NonNegative = Annotated[float, Meta(ge=0.0)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]

_M = TypeVar("_M", bound=msgspec.Struct)
_SAFE_SEEN: set[str] = set()  # names already matched against SAFE_NAME (bounded: hostile ids must not grow it)


def _safe(record: str, field: str, value: str | None) -> None:
    if value is None or value in _SAFE_SEEN:
        return
    if SAFE_NAME.fullmatch(value) is None:
        raise InvalidEvent(f"{record}.{field}: {SAFE_NAME_HINT}, got {value!r:.200}")
    if len(_SAFE_SEEN) < 10_000:
        _SAFE_SEEN.add(value)


def _convert(cls: type[_M], record: str, data: object, *finite: str) -> _M:
    """``data`` as ``cls`` through the one gate (:func:`canary.core.structs.convert`); a nullable field may be
    left out (an older or terser producer)."""
    return structs.convert(cls, data, record, finite_fields=finite, fill_nullable=True)


def _with_iso_times(record: str, data: object, *pairs: tuple[str, str]) -> object:
    """``data`` with each missing ``*_ms`` field filled from its ISO twin (hand-written input)."""
    if not isinstance(data, Mapping) or all(ms in data or iso not in data for ms, iso in pairs):
        return data
    out = dict(data)
    for ms, iso in pairs:
        if ms in out or iso not in out:
            continue
        try:
            value = parse_time(out[iso])
        except (InvalidEvent, ValueError, OverflowError):
            raise InvalidEvent(f"{record}.{iso}: expected ISO 8601 or epoch ms, got {out[iso]!r:.200}") from None
        if not 0 <= value <= MAX_EPOCH_MS:
            raise InvalidEvent(f"{record}.{iso}: must be between 1970 and 9999, got {out[iso]!r:.200}")
        out[ms] = value
    return out


@dataclass(frozen=True, slots=True)
class WindowKey:
    """What windows are grouped by: one window series per deployment, config and arm."""

    deployment_id: str | None
    config_name: str
    arm: str

    def as_str(self) -> str:
        return f"{self.deployment_id or '-'}|{self.config_name}|{self.arm}"

    @classmethod
    def parse(cls, text: str) -> WindowKey:
        parts = text.split("|")
        if len(parts) != 3 or not all(parts):
            raise InvalidEvent(f"WindowKey: expected '<deployment>|<config>|<arm>', got {text!r}")
        dep, config, arm = parts
        if dep != "-":
            check_name("WindowKey deployment id", dep)
        check_name("WindowKey config name", config)
        return cls(None if dep == "-" else dep, config, arm)

    def __str__(self) -> str:
        return self.as_str()


_KEYS: dict[tuple[str | None, str, str], WindowKey] = {}
_KEYS_KEPT = 10_000  # hostile (but valid) names must not grow the cache without bound


def window_key_of(deployment_id: str | None, config_name: str, arm: str) -> WindowKey:
    """The one shared :class:`WindowKey` object for these names (the window core groups by identity)."""
    t = (deployment_id, config_name, arm)
    key = _KEYS.get(t)
    if key is None:
        key = WindowKey(deployment_id, config_name, arm)
        if len(_KEYS) >= _KEYS_KEPT:
            _KEYS.clear()  # a fresh object for an old key only costs the core a second grouping step
        _KEYS[t] = key
    return key


_NO_KIND = "never on an outcome: a record with a kind is a producer's watermark record"


# gc=False: an outcome holds strings, numbers and a flat dict of floats, so it can be in no reference cycle;
# untracked, the decode of millions of them costs no collector passes (the replay's hot path).
class SearchOutcome(msgspec.Struct, frozen=True, gc=False):
    """One answered (or failed) search request, as published by the router.

    Its :attr:`window_key` is derived (one shared object per key), not on the wire; where it came from on
    the topic (the offset) travels beside it, in the batch's offsets list.
    """

    event_id: NonEmpty
    request_id: NonEmpty
    ts: EpochMs
    deployment_id: Name | None
    config_name: Name
    config_version: str
    config_hash: str
    arm: Arm
    latency_ms: NonNegative
    recall_at_10: Fraction | None
    result_count: Count
    error: str | None
    router_id: Name
    # Extra numbers per request (ndcg@10, mrr@10, a backend's cost …): presets declare aggregations and
    # rules on them (canary.core.custom). None: none measured. Names are safe names, values finite.
    metrics: Annotated[Mapping[str, float], Meta(max_length=MAX_OUTCOME_METRICS)] | None = None
    # "labels" | "exact_sample" whenever recall_at_10 is set, None when it is not. Records of routers from
    # before the field carry recall only from labels: a missing source with a recall reads as "labels".
    recall_source: RecallSource | None = None
    # The user's group (canary.core.split.user_group of the request's routing key): the judge estimates from it
    # how much requests cluster by user within a window. None: a router from before the field.
    user_group: Annotated[int, Meta(ge=0, lt=USER_GROUPS)] | None = None
    # The ring that routed this request (canary.core.rings); None: the sticky split did. Its windows are a
    # series of their own (arm "candidate@<ring>"), never judged with the random traffic.
    ring: Name | None = None
    # Never on an outcome: ``kind`` tells a producer's watermark record from one. Declared (always UNSET,
    # never encoded) so that decoding a record that carries it fails, and the decoder hands that record to
    # the path that reads it as a watermark record, exactly as the reference does (an escaped "\u006bind"
    # included), without scanning the bytes of every outcome for it.
    kind: Annotated[UnsetType, Meta(extra_json_schema={"not": {}, "description": _NO_KIND})] = UNSET

    def __post_init__(self) -> None:
        if self.recall_source is None:
            if self.recall_at_10 is not None:  # built without a source: labels, as before the field existed
                msgspec.structs.force_setattr(self, "recall_source", "labels")
        elif self.recall_at_10 is None:
            raise InvalidEvent(
                f"SearchOutcome(event_id={self.event_id!r}).recall_source: given without a recall_at_10"
                f" (one of {', '.join(RECALL_SOURCES)}, only with a recall), got {self.recall_source!r}"
            )
        router_id, config_name, deployment_id = self.router_id, self.config_name, self.deployment_id
        seen = _SAFE_SEEN
        if self.ring is not None:
            _safe(f"SearchOutcome(event_id={self.event_id!r})", "ring", self.ring)
            if RING_SEPARATOR in self.ring:
                raise InvalidEvent(
                    f"SearchOutcome(event_id={self.event_id!r}).ring: not a ring name: {self.ring!r:.100}"
                )
        if (
            router_id not in seen
            or config_name not in seen
            or (deployment_id is not None and deployment_id not in seen)
        ):
            record = f"SearchOutcome(event_id={self.event_id!r})"
            _safe(record, "router_id", router_id)
            _safe(record, "config_name", config_name)
            _safe(record, "deployment_id", deployment_id)
        if self.metrics is not None:
            record = f"SearchOutcome(event_id={self.event_id!r})"
            for name, value in self.metrics.items():
                if name not in seen and SAFE_NAME.fullmatch(name) is None:
                    raise InvalidEvent(
                        f"{record}.metrics: metric names must be letters, digits, '_', '.' or '-', got {name!r:.200}"
                    )
                if not math.isfinite(value):
                    raise InvalidEvent(f"{record}.metrics.{name}: expected a finite number, got {value!r}")

    @property
    def window_key(self) -> WindowKey:
        # Inlined cache hit (the window core asks once per outcome); a miss builds and caches the key.
        arm = self.arm if self.ring is None else f"{self.arm}{RING_SEPARATOR}{self.ring}"
        key = _KEYS.get((self.deployment_id, self.config_name, arm))
        return window_key_of(self.deployment_id, self.config_name, arm) if key is None else key

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        if not self.metrics:
            d.pop("metrics", None)
        if self.ring is None:  # absent without a ring: outcomes keep their exact JSON
            d.pop("ring", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchOutcome:
        event_id = d.get("event_id") if isinstance(d, Mapping) else None
        if isinstance(d, Mapping) and "kind" in d:  # as before: an unknown field to an outcome's reader
            d = {k: v for k, v in d.items() if k != "kind"}
        return _convert(cls, f"SearchOutcome(event_id={event_id!r:.200})", d, "latency_ms")


WatermarkStatus = Literal["start", "running", "stop"]
WATERMARK_STATUSES: tuple[WatermarkStatus, ...] = ("start", "running", "stop")


class RouterWatermark(msgspec.Struct, frozen=True):
    """A producer's promise on one ``search_results`` partition: every outcome it stamps with
    ``ts <= watermark_ms`` (in its own clock) is already on this partition, before this record.

    ``status`` ``start`` announces a producer, ``stop`` its clean exit (it leaves the live set at once);
    ``running`` records repeat every ``interval`` (default 50 ms). ``kind`` tells it from an outcome.
    """

    router_id: Name
    watermark_ms: EpochMs
    status: WatermarkStatus
    seq: Count
    kind: Literal["watermark"] = "watermark"

    def __post_init__(self) -> None:
        _safe("RouterWatermark", "router_id", self.router_id)

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterWatermark:
        if isinstance(d, Mapping) and d.get("kind") != "watermark":
            raise InvalidEvent(f"RouterWatermark.kind: expected 'watermark', got {d.get('kind')!r:.200}")
        return _convert(cls, "RouterWatermark", d)


class RuleVerdict(msgspec.Struct, frozen=True):
    """One SLO rule judged against one window."""

    rule: NonEmpty
    metric: NonEmpty
    operator: NonEmpty
    threshold: float
    value: float | None
    outcome: Outcome
    reason: str
    # The numbers the outcome was decided from: method, n, exceedances or mean, bound, confidence, e-value.
    evidence: JSONDict | None = None

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleVerdict:
        return _convert(cls, "RuleVerdict", d, "threshold", "value")


class WindowResult(msgspec.Struct, frozen=True):
    """A finalized tumbling window for one :class:`WindowKey` (the spec's "bucket").

    ``to_dict`` adds what readers want without arithmetic: ``timestamp`` = ``window_start``,
    ``window_end`` and ``emitted_at`` (ISO 8601 of the ``*_ms`` fields) and ``window_id``; ``from_dict``
    takes the ISO fields where a hand-written record lacks the ``*_ms`` ones.
    """

    deployment_id: NonEmpty | None
    config_name: NonEmpty
    arm: NonEmpty
    window_start_ms: EpochMs
    window_end_ms: EpochMs
    duration_sec: Count
    response_count: Count
    error_count: Count
    p95_ms: NonNegative | None
    recall_at_10: Fraction | None
    recall_samples: Count
    slo_violations: Count
    verdicts: tuple[RuleVerdict, ...]
    late_count: Count
    emitted_at_ms: EpochMs
    # Mergeable sufficient statistics (latency sketch, exceedance counts, recall histogram) from which the
    # judge pools evidence over windows; see canary.core.aggregations.WindowStats.
    stats: JSONDict | None = None

    @property
    def key(self) -> WindowKey:
        return WindowKey(self.deployment_id, self.config_name, self.arm)

    @property
    def window_id(self) -> str:
        return f"{self.key.as_str()}@{self.window_start_ms}"

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        start = iso_ms(self.window_start_ms)
        d.update(
            timestamp=start,
            window_start=start,
            window_end=iso_ms(self.window_end_ms),
            emitted_at=iso_ms(self.emitted_at_ms),
            window_id=self.window_id,
            verdicts=list(d["verdicts"]),
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowResult:
        data = _with_iso_times(
            "WindowResult",
            d,
            ("window_start_ms", "window_start"),
            ("window_end_ms", "window_end"),
            ("emitted_at_ms", "emitted_at"),
        )
        if isinstance(data, Mapping):
            verdicts = data.get("verdicts", [])
            if not isinstance(verdicts, list | tuple):
                raise InvalidEvent(f"WindowResult.verdicts: expected a list, got {verdicts!r:.200}")
            # Each verdict through its own gate, so a refusal names RuleVerdict and its field.
            data = {"late_count": 0, **data, "verdicts": tuple(RuleVerdict.from_dict(v) for v in verdicts)}
            if data["late_count"] is None:
                data["late_count"] = 0
        return _convert(cls, "WindowResult", data, "p95_ms")


class ControlCommand(msgspec.Struct, frozen=True):
    """An instruction to the routers (start, rollback, promote, ...). ``to_dict`` adds ``issued_at`` (ISO
    8601 of ``issued_at_ms``), which ``from_dict`` takes where ``issued_at_ms`` is missing."""

    command_id: NonEmpty
    type: CommandType
    deployment_id: Name
    candidate_config: JSONDict | None
    candidate_config_hash: NonEmpty | None
    last_good_config: JSONDict | None
    weight: Fraction | None
    reason: str | None
    evidence: JSONDict | None
    issued_by: NonEmpty
    issued_at_ms: EpochMs
    # A start's shadow share (docs/contracts.md, "Shadow traffic"): while the deployment's weight is 0, this
    # share of the requests served by its last_good is mirrored to the candidate, whose answers no user
    # sees. None (and on every other command): no mirroring.
    mirror: Fraction | None = None

    def __post_init__(self) -> None:
        _safe("ControlCommand", "deployment_id", self.deployment_id)

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        d["issued_at"] = iso_ms(self.issued_at_ms)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlCommand:
        data = _with_iso_times("ControlCommand", d, ("issued_at_ms", "issued_at"))
        return _convert(cls, "ControlCommand", data)


class RouterState(msgspec.Struct, frozen=True):
    """What a router reports after applying (or at startup before) a command. ``to_dict`` adds
    ``applied_at`` (ISO 8601 of ``applied_at_ms``), which ``from_dict`` takes where ``applied_at_ms`` is
    missing."""

    router_id: NonEmpty
    deployment_id: NonEmpty | None
    status: RouterStatus
    active_config: NonEmpty
    last_good: NonEmpty
    candidate_config: NonEmpty | None
    weight: Fraction
    answers_command_id: NonEmpty | None
    applied_at_ms: EpochMs
    seq: Count
    # Heartbeats repeat the current state so the CLI can tell live routers from dead ones;
    # they acknowledge nothing new, so the audit log skips them.
    heartbeat: bool = False
    # Why this router sends nothing to the candidate although a canary runs (its control view is
    # unconfirmed: broker down, Read ACL revoked …); None while the view is fresh.
    failsafe: NonEmpty | None = None
    # The search_requests partitions it holds (None: it takes no requests from Kafka, or an older router),
    # and why it takes none of the requests waiting there (None while it does).
    request_partitions: Annotated[tuple[Count, ...], Meta(max_length=10_000)] | None = None
    requests_stalled: NonEmpty | None = None

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        d["applied_at"] = iso_ms(self.applied_at_ms)
        if self.request_partitions is not None:
            d["request_partitions"] = list(self.request_partitions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterState:
        data = _with_iso_times("RouterState", d, ("applied_at_ms", "applied_at"))
        return _convert(cls, "RouterState", data)


WIRE_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    SearchOutcome,
    RouterWatermark,
    RuleVerdict,
    WindowResult,
    ControlCommand,
    RouterState,
)
"""The messages declared here, in the order docs/contracts.md lists their schemas."""
