"""Event contracts shared by the router, the stream processor, replay and reports.

Every record is a frozen dataclass with ``to_dict`` (JSON-ready) and ``from_dict``. ``from_dict`` is the
gate for data read off a topic, so it checks every field and raises :class:`InvalidEvent` naming the
record, the field and the offending value: a poison message must be diagnosable from the log line alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

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


def _flag(d: Mapping[str, Any], name: str) -> bool:
    value = d.get(name, False)
    if not isinstance(value, bool):
        raise InvalidEvent(f"{name}: expected true/false, got {value!r:.100}")
    return value


class _Fields:
    """Typed, checked access to one incoming mapping; every failure names record, field and value."""

    def __init__(self, record: str, data: object) -> None:
        if not isinstance(data, Mapping):
            raise InvalidEvent(f"{record}: expected a JSON object, got {type(data).__name__}: {data!r:.200}")
        self.record = record
        self.data: Mapping[str, Any] = data

    def fail(self, field: str, reason: str, value: object) -> InvalidEvent:
        return InvalidEvent(f"{self.record}.{field}: {reason}, got {value!r:.200}")

    def _get(self, field: str, optional: bool) -> Any:
        if field not in self.data:
            if optional:
                return None
            raise InvalidEvent(f"{self.record}.{field}: required field is missing")
        return self.data[field]

    def str_(self, field: str, *, optional: bool = False, empty_ok: bool = False) -> str | None:
        v = self._get(field, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.fail(field, "expected a string", v)
        if not v and not empty_ok:
            raise self.fail(field, "must not be empty", v)
        return v

    def name(self, field: str, *, optional: bool = False) -> str | None:
        v = self.str_(field, optional=optional)
        if v is not None and not SAFE_NAME.fullmatch(v):
            raise self.fail(field, SAFE_NAME_HINT, v)
        return v

    def req_name(self, field: str) -> str:
        v = self.name(field)
        assert v is not None
        return v

    def req_str(self, field: str, *, empty_ok: bool = False) -> str:
        v = self.str_(field, empty_ok=empty_ok)
        assert v is not None
        return v

    def int_(
        self, field: str, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False
    ) -> int | None:
        v = self._get(field, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(field, "expected an integer", v)
        if minimum is not None and v < minimum:
            raise self.fail(field, f"must be >= {minimum}", v)
        if maximum is not None and v > maximum:
            raise self.fail(field, f"must be <= {maximum}", v)
        return v

    def req_int(self, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        v = self.int_(field, minimum=minimum, maximum=maximum)
        assert v is not None
        return v

    def epoch_ms(self, field: str) -> int:
        """A required epoch-milliseconds field, within [0, MAX_EPOCH_MS]."""
        return self.req_int(field, minimum=0, maximum=MAX_EPOCH_MS)

    def int_list(self, field: str, *, minimum: int | None = None, max_len: int = 10_000) -> tuple[int, ...] | None:
        """An optional list of integers (absent or null: None)."""
        v = self._get(field, True)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) > max_len:
            raise self.fail(field, f"expected a list of at most {max_len} integers", v)
        if not all(not isinstance(x, bool) and isinstance(x, int) and (minimum is None or x >= minimum) for x in v):
            raise self.fail(field, "expected integers" + (f" >= {minimum}" if minimum is not None else ""), v)
        return tuple(v)

    def float_(
        self,
        field: str,
        *,
        lo: float | None = None,
        hi: float | None = None,
        optional: bool = False,
    ) -> float | None:
        v = self._get(field, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(field, "expected a number", v)
        try:
            f = float(v)
        except OverflowError:
            raise self.fail(field, "number out of range", v) from None
        if not math.isfinite(f):
            raise self.fail(field, "must be finite", v)
        if lo is not None and f < lo:
            raise self.fail(field, f"must be >= {lo:g}", v)
        if hi is not None and f > hi:
            raise self.fail(field, f"must be <= {hi:g}", v)
        return f

    def req_float(self, field: str, *, lo: float | None = None, hi: float | None = None) -> float:
        v = self.float_(field, lo=lo, hi=hi)
        assert v is not None
        return v

    def choice(self, field: str, allowed: tuple[str, ...]) -> str:
        v = self._get(field, False)
        if v not in allowed:
            raise self.fail(field, f"must be one of {', '.join(allowed)}", v)
        return cast(str, v)

    def dict_(self, field: str) -> JSONDict | None:
        v = self._get(field, True)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.fail(field, "expected an object or null", v)
        return dict(v)

    def time_ms(self, ms_field: str, iso_field: str) -> int:
        """Prefer the exact ``*_ms`` field; fall back to the ISO one for hand-written input."""
        if ms_field in self.data:
            return self.epoch_ms(ms_field)
        if iso_field in self.data:
            try:
                value = parse_time(self.data[iso_field])
            except (InvalidEvent, ValueError, OverflowError):
                raise self.fail(iso_field, "expected ISO 8601 or epoch ms", self.data[iso_field]) from None
            if not 0 <= value <= MAX_EPOCH_MS:
                raise self.fail(iso_field, "must be between 1970 and 9999", self.data[iso_field])
            return value
        raise InvalidEvent(f"{self.record}.{ms_field}: required field is missing")


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


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """One answered (or failed) search request, as published by the router."""

    event_id: str
    request_id: str
    ts: int
    deployment_id: str | None
    config_name: str
    config_version: str
    config_hash: str
    arm: Arm
    latency_ms: float
    recall_at_10: float | None
    result_count: int
    error: str | None
    router_id: str
    # Extra numbers per request (ndcg@10, mrr@10, a backend's cost …): presets declare aggregations and
    # rules on them (canary.core.custom). None: none measured.
    metrics: Mapping[str, float] | None = None
    # "labels" | "exact_sample" whenever recall_at_10 is set, None when it is not. Records of routers from
    # before the field carry recall only from labels: a missing source with a recall reads as "labels".
    recall_source: RecallSource | None = None

    def __post_init__(self) -> None:
        if self.recall_source is None:
            if self.recall_at_10 is not None:  # built without a source: labels, as before the field existed
                object.__setattr__(self, "recall_source", "labels")
        elif self.recall_at_10 is None or self.recall_source not in RECALL_SOURCES:
            raise InvalidEvent(
                f"SearchOutcome(event_id={self.event_id!r}).recall_source: {self.recall_source!r} does not go with"
                f" recall_at_10 = {self.recall_at_10!r} (one of {', '.join(RECALL_SOURCES)}, only with a recall)"
            )

    @property
    def window_key(self) -> WindowKey:
        return WindowKey(self.deployment_id, self.config_name, self.arm)

    def to_dict(self) -> JSONDict:
        return {
            "event_id": self.event_id,
            "request_id": self.request_id,
            "ts": self.ts,
            "deployment_id": self.deployment_id,
            "config_name": self.config_name,
            "config_version": self.config_version,
            "config_hash": self.config_hash,
            "arm": self.arm,
            "latency_ms": self.latency_ms,
            "recall_at_10": self.recall_at_10,
            "recall_source": self.recall_source,
            "result_count": self.result_count,
            "error": self.error,
            "router_id": self.router_id,
            **({"metrics": dict(self.metrics)} if self.metrics else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchOutcome:
        event_id = d.get("event_id") if isinstance(d, Mapping) else None
        f = _Fields(f"SearchOutcome(event_id={event_id!r})", d)
        recall = f.float_("recall_at_10", lo=0.0, hi=1.0, optional=True)
        return cls(
            event_id=f.req_str("event_id"),
            request_id=f.req_str("request_id"),
            ts=f.epoch_ms("ts"),
            deployment_id=f.name("deployment_id", optional=True),
            config_name=f.req_name("config_name"),
            config_version=f.req_str("config_version", empty_ok=True),
            config_hash=f.req_str("config_hash", empty_ok=True),
            arm=cast(Arm, f.choice("arm", ARMS)),
            latency_ms=f.req_float("latency_ms", lo=0.0),
            recall_at_10=recall,
            result_count=f.req_int("result_count", minimum=0),
            error=f.str_("error", optional=True, empty_ok=True),
            router_id=f.req_name("router_id"),
            metrics=outcome_metrics(f),
            recall_source=recall_source_of(f, recall),
        )


def recall_source_of(f: _Fields, recall: float | None) -> RecallSource | None:
    """The outcome's validated ``recall_source`` (missing + a recall = "labels", an older router's record)."""
    raw = f.data.get("recall_source")
    if raw is None:
        return None if recall is None else "labels"
    if raw not in RECALL_SOURCES:
        raise f.fail("recall_source", f"must be one of {', '.join(RECALL_SOURCES)} or null", raw)
    if recall is None:
        raise f.fail("recall_source", "given without a recall_at_10", raw)
    return cast(RecallSource, raw)


MAX_OUTCOME_METRICS = 32  # a record may carry at most this many extra numbers (bounded state per window)


def outcome_metrics(f: _Fields) -> dict[str, float] | None:
    raw = f.data.get("metrics")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise f.fail("metrics", "expected an object of name → number", raw)
    if len(raw) > MAX_OUTCOME_METRICS:
        raise f.fail("metrics", f"at most {MAX_OUTCOME_METRICS} metrics", len(raw))
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise f.fail("metrics", "metric names must be letters, digits, '_', '.' or '-'", name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise f.fail(f"metrics.{name}", "expected a finite number", value)
        out[name] = float(value)
    return out


WatermarkStatus = Literal["start", "running", "stop"]
WATERMARK_STATUSES: tuple[WatermarkStatus, ...] = ("start", "running", "stop")


@dataclass(frozen=True, slots=True)
class RouterWatermark:
    """A producer's promise on one ``search_results`` partition: every outcome it stamps with
    ``ts <= watermark_ms`` (in its own clock) is already on this partition, before this record.

    ``status`` ``start`` announces a producer, ``stop`` its clean exit (it leaves the live set at once);
    ``running`` records repeat every ``interval`` (default 50 ms). ``kind`` tells it from an outcome.
    """

    router_id: str
    watermark_ms: int
    status: WatermarkStatus
    seq: int

    def to_dict(self) -> JSONDict:
        return {
            "kind": "watermark",
            "router_id": self.router_id,
            "watermark_ms": self.watermark_ms,
            "status": self.status,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterWatermark:
        f = _Fields("RouterWatermark", d)
        if f.data.get("kind") != "watermark":
            raise f.fail("kind", "expected 'watermark'", f.data.get("kind"))
        return cls(
            router_id=f.req_name("router_id"),
            watermark_ms=f.epoch_ms("watermark_ms"),
            status=cast(WatermarkStatus, f.choice("status", WATERMARK_STATUSES)),
            seq=f.req_int("seq", minimum=0),
        )


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """One SLO rule judged against one window."""

    rule: str
    metric: str
    operator: str
    threshold: float
    value: float | None
    outcome: Outcome
    reason: str
    # The numbers the outcome was decided from: method, n, exceedances or mean, bound, confidence, e-value.
    evidence: JSONDict | None = None

    def to_dict(self) -> JSONDict:
        return {
            "rule": self.rule,
            "metric": self.metric,
            "operator": self.operator,
            "threshold": self.threshold,
            "value": self.value,
            "outcome": self.outcome,
            "reason": self.reason,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleVerdict:
        f = _Fields("RuleVerdict", d)
        return cls(
            rule=f.req_str("rule"),
            metric=f.req_str("metric"),
            operator=f.req_str("operator"),
            threshold=f.req_float("threshold"),
            value=f.float_("value", optional=True),
            outcome=cast(Outcome, f.choice("outcome", OUTCOMES)),
            reason=f.req_str("reason", empty_ok=True),
            evidence=f.dict_("evidence"),
        )


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A finalized tumbling window for one :class:`WindowKey` (the spec's "bucket")."""

    deployment_id: str | None
    config_name: str
    arm: str
    window_start_ms: int
    window_end_ms: int
    duration_sec: int
    response_count: int
    error_count: int
    p95_ms: float | None
    recall_at_10: float | None
    recall_samples: int
    slo_violations: int
    verdicts: tuple[RuleVerdict, ...]
    late_count: int
    emitted_at_ms: int
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
        start = iso_ms(self.window_start_ms)
        return {
            "deployment_id": self.deployment_id,
            "config_name": self.config_name,
            "arm": self.arm,
            "timestamp": start,
            "window_start": start,
            "window_end": iso_ms(self.window_end_ms),
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "duration_sec": self.duration_sec,
            "response_count": self.response_count,
            "error_count": self.error_count,
            "p95_ms": self.p95_ms,
            "recall_at_10": self.recall_at_10,
            "recall_samples": self.recall_samples,
            "slo_violations": self.slo_violations,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "late_count": self.late_count,
            "emitted_at": iso_ms(self.emitted_at_ms),
            "emitted_at_ms": self.emitted_at_ms,
            "window_id": self.window_id,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowResult:
        f = _Fields("WindowResult", d)
        verdicts = f.data.get("verdicts", [])
        if not isinstance(verdicts, list):
            raise f.fail("verdicts", "expected a list", verdicts)
        return cls(
            deployment_id=f.str_("deployment_id", optional=True),
            config_name=f.req_str("config_name"),
            arm=f.req_str("arm"),
            window_start_ms=f.time_ms("window_start_ms", "window_start"),
            window_end_ms=f.time_ms("window_end_ms", "window_end"),
            duration_sec=f.req_int("duration_sec", minimum=0),
            response_count=f.req_int("response_count", minimum=0),
            error_count=f.req_int("error_count", minimum=0),
            p95_ms=f.float_("p95_ms", lo=0.0, optional=True),
            recall_at_10=f.float_("recall_at_10", lo=0.0, hi=1.0, optional=True),
            recall_samples=f.req_int("recall_samples", minimum=0),
            slo_violations=f.req_int("slo_violations", minimum=0),
            verdicts=tuple(RuleVerdict.from_dict(v) for v in verdicts),
            late_count=f.int_("late_count", minimum=0, optional=True) or 0,
            emitted_at_ms=f.time_ms("emitted_at_ms", "emitted_at"),
            stats=f.dict_("stats"),
        )


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """An instruction to the routers (start, rollback, promote, ...)."""

    command_id: str
    type: CommandType
    deployment_id: str
    candidate_config: JSONDict | None
    candidate_config_hash: str | None
    last_good_config: JSONDict | None
    weight: float | None
    reason: str | None
    evidence: JSONDict | None
    issued_by: str
    issued_at_ms: int

    def to_dict(self) -> JSONDict:
        return {
            "command_id": self.command_id,
            "type": self.type,
            "deployment_id": self.deployment_id,
            "candidate_config": self.candidate_config,
            "candidate_config_hash": self.candidate_config_hash,
            "last_good_config": self.last_good_config,
            "weight": self.weight,
            "reason": self.reason,
            "evidence": self.evidence,
            "issued_by": self.issued_by,
            "issued_at": iso_ms(self.issued_at_ms),
            "issued_at_ms": self.issued_at_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlCommand:
        f = _Fields("ControlCommand", d)
        return cls(
            command_id=f.req_str("command_id"),
            type=cast(CommandType, f.choice("type", COMMAND_TYPES)),
            deployment_id=f.req_name("deployment_id"),
            candidate_config=f.dict_("candidate_config"),
            candidate_config_hash=f.str_("candidate_config_hash", optional=True),
            last_good_config=f.dict_("last_good_config"),
            weight=f.float_("weight", lo=0.0, hi=1.0, optional=True),
            reason=f.str_("reason", optional=True, empty_ok=True),
            evidence=f.dict_("evidence"),
            issued_by=f.req_str("issued_by"),
            issued_at_ms=f.time_ms("issued_at_ms", "issued_at"),
        )


@dataclass(frozen=True, slots=True)
class RouterState:
    """What a router reports after applying (or at startup before) a command."""

    router_id: str
    deployment_id: str | None
    status: RouterStatus
    active_config: str
    last_good: str
    candidate_config: str | None
    weight: float
    answers_command_id: str | None
    applied_at_ms: int
    seq: int
    # Heartbeats repeat the current state so the CLI can tell live routers from dead ones;
    # they acknowledge nothing new, so the audit log skips them.
    heartbeat: bool = False
    # Why this router sends nothing to the candidate although a canary runs (its control view is
    # unconfirmed: broker down, Read ACL revoked …); None while the view is fresh.
    failsafe: str | None = None
    # The search_requests partitions it holds (None: it takes no requests from Kafka, or an older router),
    # and why it takes none of the requests waiting there (None while it does).
    request_partitions: tuple[int, ...] | None = None
    requests_stalled: str | None = None

    def to_dict(self) -> JSONDict:
        return {
            "router_id": self.router_id,
            "deployment_id": self.deployment_id,
            "status": self.status,
            "active_config": self.active_config,
            "last_good": self.last_good,
            "candidate_config": self.candidate_config,
            "weight": self.weight,
            "answers_command_id": self.answers_command_id,
            "applied_at": iso_ms(self.applied_at_ms),
            "applied_at_ms": self.applied_at_ms,
            "seq": self.seq,
            "heartbeat": self.heartbeat,
            "failsafe": self.failsafe,
            "request_partitions": list(self.request_partitions) if self.request_partitions is not None else None,
            "requests_stalled": self.requests_stalled,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterState:
        f = _Fields("RouterState", d)
        return cls(
            router_id=f.req_str("router_id"),
            deployment_id=f.str_("deployment_id", optional=True),
            status=cast(RouterStatus, f.choice("status", ROUTER_STATUSES)),
            active_config=f.req_str("active_config"),
            last_good=f.req_str("last_good"),
            candidate_config=f.str_("candidate_config", optional=True),
            weight=f.req_float("weight", lo=0.0, hi=1.0),
            answers_command_id=f.str_("answers_command_id", optional=True),
            applied_at_ms=f.time_ms("applied_at_ms", "applied_at"),
            seq=f.req_int("seq", minimum=0),
            heartbeat=_flag(d, "heartbeat"),
            failsafe=f.str_("failsafe", optional=True),
            request_partitions=f.int_list("request_partitions", minimum=0),
            requests_stalled=f.str_("requests_stalled", optional=True),
        )
