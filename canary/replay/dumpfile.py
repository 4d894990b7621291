"""Topic dumps in the JSON-lines envelope of ``kcat -C -J``: an offline replay's input, and writing one from Kafka.

A dump holds one JSON object per line, as ``kcat -C -J`` writes them::

    {"topic":"search_results","partition":0,"offset":12,"tstype":"create","ts":1700000000000,"broker":1,
     "key":"dep|cfg|arm","payload":"{...}"}

``topic``, ``partition``, ``offset``, ``key`` and ``payload`` are required (key / payload: a string or
null); ``tstype``, ``ts`` and ``broker`` are optional (kcat omits the timestamp when the broker has none,
older kcat versions omit ``broker``), ``headers`` and any other field are ignored. ``ts`` is the Kafka
record timestamp: it plays the arrival time the live worker saw, as in a replay from Kafka.

Topics are recognized by their name's **suffix** (``search_results``, ``canary_control``,
``canary_windows``, ``canary_verdicts``, ``search_results.dlq``); what precedes it is the prefix
(``CANARY_TOPIC_PREFIX`` / :class:`~canary.kafka.topics.Topics`). A dump whose topics carry one prefix is
read whatever the settings say; when it mixes several, the settings' prefix picks one (else an error).
Records of canary's other topics (``canary_state``, ``search_requests`` …) are counted and skipped.

:func:`load_span` turns a dump into the :class:`~canary.replay.span.SpanData` a replay from Kafka reads —
the same offset ranges (mirroring ``offsets_for_times`` on the records' timestamps), the control topic
in offset order, the live windows with the judged copies from ``canary_verdicts`` — so
:func:`~canary.replay.postmortem.run_replay` gives the same result as from Kafka, without a broker. A
malformed line (not JSON, a missing or mistyped field, an unknown topic) is counted and listed with its
line number and reason; the rest is replayed. :func:`write_dump` (the only part that talks to Kafka)
writes the dump of a span in the same envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from canary.control.records import verify_control_records
from canary.core import wire
from canary.core.models import JSONDict, iso_ms
from canary.core.windows import window_bounds
from canary.errors import ConfigError, KafkaError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.pipeline.recompute import read_bounds, span_bounds
from canary.pipeline.run import Record
from canary.pipeline.settings import PipelineSettings
from canary.replay.span import SpanData
from canary.security import CommandVerifier, default_verifier

MAX_LISTED = 20  # malformed lines / invalid commands listed individually (all are counted)

_BASE = Topics("")
ROLES: dict[str, str] = {
    "results": _BASE.search_results,
    "control": _BASE.control,
    "windows": _BASE.windows,
    "verdicts": _BASE.verdicts,
    "results_dlq": _BASE.results_dlq,
}
"""Topics a replay reads, by role → base name (without prefix)."""

IGNORED: tuple[str, ...] = (
    _BASE.search_requests,
    _BASE.requests_dlq,
    _BASE.state,
    _BASE.window_state,
    _BASE.responses,
)
"""canary's other topics: a dump of every topic may hold them; counted, not replayed, not malformed."""

# Longest first, so that "search_results.dlq" is not taken for "search_results" with a suffix.
_SUFFIXES = sorted([*ROLES.values(), *IGNORED], key=len, reverse=True)
_ROLE_OF_BASE = {base: role for role, base in ROLES.items()}

_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def split_topic(name: str) -> tuple[str, str] | None:
    """``(prefix, base)`` of a canary topic name, by suffix; None for a topic canary does not know."""
    for base in _SUFFIXES:
        if name.endswith(base):
            return name[: len(name) - len(base)], base
    return None


# -- parsing ------------------------------------------------------------------------------------------------


class LineError(ValueError):
    """Why one dump line cannot be used: ``kind`` (machine-readable) and a human reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DumpRecord:
    """One envelope: the record as a consumer sees it, the line it came from, kcat's extra fields."""

    line: int
    record: Record
    tstype: str | None = None
    broker: int | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    kind: str  # not_json | not_object | missing_field | wrong_type | unknown_topic | other_prefix | conflict
    reason: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"line": self.line, "kind": self.kind, "reason": self.reason}
        if self.topic is not None:
            out.update(topic=self.topic, partition=self.partition, offset=self.offset)
        return out

    def describe(self) -> str:
        return f"line {self.line}: {self.reason}"


_INT64_MAX = 2**63 - 1  # Kafka's partitions, offsets and timestamps are 64-bit at most


def _req_int(obj: dict[str, Any], name: str) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value <= _INT64_MAX:
        got = _json_type(value) if type(value) is not int else f"{value}"
        raise LineError("wrong_type", f"field {name!r}: expected an integer >= 0, got {got:.60}")
    return value


def _opt(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if value is not None and type(value) is not kind:
        raise LineError("wrong_type", f"field {name!r}: expected {_JSON_TYPES[kind]} or null, got {_json_type(value)}")
    return value


def _bytes(obj: dict[str, Any], name: str) -> bytes | None:
    value = obj[name]
    if value is None:
        return None
    if type(value) is not str:
        raise LineError("wrong_type", f"field {name!r}: expected a string or null, got {_json_type(value)}")
    try:
        # surrogateescape: a value that was not UTF-8 (written by write_dump as \\udcXX escapes) comes back
        # byte for byte.
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise LineError("wrong_type", f"field {name!r}: holds a lone surrogate, not encodable as UTF-8") from None


REQUIRED = ("topic", "partition", "offset", "key", "payload")
# A flat envelope; its payload (a string) may be a whole checkpoint, and holds \udcXX escapes for bytes that
# were not UTF-8.
DUMP_LINE = wire.Limits("dump line", 64 << 20, 8, lone_surrogates=True)


def parse_line(raw: bytes, line: int) -> DumpRecord:
    """One dump line → :class:`DumpRecord`; raises :class:`LineError` with the reason."""
    try:
        obj = wire.decode(raw, DUMP_LINE)
    except wire.Rejected as exc:  # bounded: a hostile line is refused with its code, never a crash
        if exc.code in ("too_large", "too_deep"):
            raise LineError(exc.code, exc.detail[:200]) from None
        raise LineError("not_json", f"not JSON ({exc.detail[:120]})") from None
    if type(obj) is not dict:
        raise LineError("not_object", f"expected a JSON object, got {_json_type(obj)}")
    missing = [f for f in REQUIRED if f not in obj]
    if missing:
        raise LineError("missing_field", "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
    topic = obj["topic"]
    if type(topic) is not str or not topic:
        got = "an empty string" if topic == "" else _json_type(topic)
        raise LineError("wrong_type", f"field 'topic': expected a non-empty string, got {got}")
    partition = _req_int(obj, "partition")
    offset = _req_int(obj, "offset")
    ts = _opt(obj, "ts", int)
    if ts is not None and not -_INT64_MAX - 1 <= ts <= _INT64_MAX:
        raise LineError("wrong_type", f"field 'ts': expected a 64-bit integer or null, got {str(ts)[:60]}")
    tstype = _opt(obj, "tstype", str)
    broker = _opt(obj, "broker", int)
    key = _bytes(obj, "key")
    value = _bytes(obj, "payload")
    return DumpRecord(line, Record(topic, partition, offset, ts, key, value), tstype, broker)


@dataclass
class DumpFile:
    """A parsed dump: every usable envelope (any topic) and every malformed line."""

    path: str
    lines: int = 0
    records: list[DumpRecord] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    blank_lines: int = 0
    read_seconds: float = 0.0


def _open(path: str, stack: contextlib.ExitStack) -> Iterable[bytes]:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--input {path}: is a directory, expected a dump file (JSON lines)")
    try:
        if path.endswith(".gz"):
            return cast("Iterable[bytes]", stack.enter_context(gzip.open(p, "rb")))
        return stack.enter_context(p.open("rb"))
    except FileNotFoundError:
        raise ConfigError(f"--input {path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"--input {path}: cannot read: {exc.strerror or exc}") from None


def parse_lines(lines: Iterable[bytes], path: str = "<dump>") -> DumpFile:
    """Parse dump lines (bytes, with or without the newline); line numbers count from 1."""
    dump = DumpFile(path)
    records = dump.records
    bad = dump.bad
    n = 0
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            dump.blank_lines += 1
            continue
        try:
            records.append(parse_line(text, n))
        except LineError as exc:
            bad.append(BadLine(n, exc.kind, exc.reason))
    dump.lines = n
    return dump


def read_dump(path: str | Path) -> DumpFile:
    """Read and parse a dump file (``-``: standard input; ``*.gz``: gzip); unreadable → ConfigError."""
    name = str(path)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        lines = _open(name, stack)
        try:
            dump = parse_lines(lines, name)
        except (OSError, EOFError, zlib.error) as exc:  # gzip: BadGzipFile is an OSError, truncated → EOFError
            raise ConfigError(f"--input {name}: cannot read: {exc}") from None
    dump.read_seconds = time.perf_counter() - started
    return dump


# -- from a dump to what a replay reads ---------------------------------------------------------------------


@dataclass
class DumpTopics:
    """Which prefix the dump is replayed with, and each usable record's role."""

    prefix: str
    prefixes: list[str]
    by_role: dict[str, list[DumpRecord]]
    ignored: dict[str, int]
    bad: list[BadLine]
    duplicates: int


def resolve_topics(dump: DumpFile, settings_prefix: str = "") -> DumpTopics:
    """Classify the records by suffix, pick the prefix (see the module docstring), drop duplicate offsets."""
    split: list[tuple[DumpRecord, tuple[str, str] | None]] = [(r, split_topic(r.record.topic)) for r in dump.records]
    prefixes = sorted({s[0] for _, s in split if s is not None})
    if len(prefixes) <= 1:
        prefix = prefixes[0] if prefixes else settings_prefix
    elif settings_prefix in prefixes:
        prefix = settings_prefix
    else:
        raise ConfigError(
            f"--input {dump.path}: the dump holds topics of several prefixes ("
            + ", ".join(repr(p) for p in prefixes)
            + "); set CANARY_TOPIC_PREFIX to the one to replay"
        )
    by_role: dict[str, list[DumpRecord]] = {role: [] for role in ROLES}
    ignored: dict[str, int] = {}
    bad: list[BadLine] = []
    seen: dict[tuple[str, int, int], DumpRecord] = {}
    duplicates = 0
    known = ", ".join(f"[prefix]{base}" for base in ROLES.values())
    for r, parts in split:
        rec = r.record
        where = (rec.topic, rec.partition, rec.offset)
        if parts is None:
            bad.append(
                BadLine(r.line, "unknown_topic", f"unknown topic {rec.topic!r} (a replay reads {known})", *where)
            )
            continue
        p, base = parts
        if p != prefix:
            bad.append(
                BadLine(
                    r.line,
                    "other_prefix",
                    f"topic {rec.topic!r} has prefix {p!r}; the replay reads prefix {prefix!r}",
                    *where,
                )
            )
            continue
        role = _ROLE_OF_BASE.get(base)
        if role is None:
            ignored[rec.topic] = ignored.get(rec.topic, 0) + 1
            continue
        first = seen.get(where)
        if first is not None:
            if (first.record.key, first.record.value) == (rec.key, rec.value):
                duplicates += 1  # the same record twice (overlapping dumps concatenated)
            else:
                bad.append(
                    BadLine(
                        r.line,
                        "conflict",
                        f"{rec.topic}[{rec.partition}]@{rec.offset} is also on line {first.line} with another "
                        "key/payload; the first is used",
                        *where,
                    )
                )
            continue
        seen[where] = r
        by_role[role].append(r)
    for recs in by_role.values():
        recs.sort(key=lambda r: (r.record.partition, r.record.offset))
    return DumpTopics(prefix, prefixes, by_role, ignored, bad, duplicates)


def _json_int(value: bytes | None, name: str) -> int | None:
    """``value[name]`` if the value is a JSON object with an integer there (cheap peek, never raises)."""
    if value is None:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    v = obj.get(name)
    return v if type(v) is int else None


def _select(
    recs: list[DumpRecord], from_ms: int | None, to_ms: int | None, ts_of: dict[int, int] | None = None
) -> list[DumpRecord]:
    """Per partition (offset order): ``[first with ts >= from_ms, first with ts >= to_ms)`` — what
    ``offsets_for_times`` gives the Kafka reader. A record without timestamp counts as time 0 unless
    ``ts_of`` (line → time) has one."""
    out: list[DumpRecord] = []
    i = 0
    while i < len(recs):
        p = recs[i].record.partition
        j = i
        while j < len(recs) and recs[j].record.partition == p:
            j += 1
        part = recs[i:j]

        def ts(r: DumpRecord) -> int:
            t = r.record.arrival_ms
            if t is None:
                t = (ts_of or {}).get(r.line, 0)
            return t

        lo = 0 if from_ms is None else next((k for k, r in enumerate(part) if ts(r) >= from_ms), len(part))
        hi = len(part) if to_ms is None else next((k for k, r in enumerate(part) if ts(r) >= to_ms), len(part))
        out.extend(part[lo : max(lo, hi)])
        i = j
    return out


def _offsets(recs: list[DumpRecord]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for r in recs:
        p, o = r.record.partition, r.record.offset
        lo, hi = out.get(p, (o, o + 1))
        out[p] = (min(lo, o), max(hi, o + 1))
    return out


@dataclass
class DumpSpan:
    """What :func:`load_span` returns: the replay's input and the dump's own report section."""

    data: SpanData
    section: JSONDict
    notes: list[str]
    lines_by_result: dict[tuple[int, int], int]


def default_span(
    topics: DumpTopics, settings: PipelineSettings, event_ts: dict[int, int]
) -> tuple[int | None, int | None, JSONDict, list[str]]:
    """The span a dump covers: the windows of its outcome records, narrowed to the windows the live results
    in it cover (a dump written by ``--dump`` has warm-up records on both sides of its span, and exactly the
    span's live windows). ``(None, None, …)`` when the dump holds neither."""
    times = [event_ts.get(r.line, r.record.arrival_ms) for r in topics.by_role["results"]]
    outcome_times = [t for t in times if t is not None and t >= 0]
    starts = [
        s
        for r in (*topics.by_role["windows"], *topics.by_role["verdicts"])
        if (s := _json_int(r.record.value, "window_start_ms")) is not None
    ]
    coverage: JSONDict = {
        "outcomes": ({"first_ts_ms": min(outcome_times), "last_ts_ms": max(outcome_times)} if outcome_times else None),
        "live_windows": {"first_start_ms": min(starts), "last_start_ms": max(starts)} if starts else None,
    }
    notes: list[str] = []
    if outcome_times:
        first = window_bounds(min(outcome_times), settings.window_ms)[0]
        until = window_bounds(max(outcome_times), settings.window_ms)[1]
        if starts:
            lo, hi = max(first, min(starts)), min(until, max(starts) + settings.window_ms)
            if lo < hi:
                margin = settings.lookback_ms + 2 * settings.window_ms  # a --dump file's warm-up, and slack
                if lo - first > margin or until - hi > margin:
                    notes.append(
                        f"span from the dump: its outcomes cover {iso_ms(first)} → {iso_ms(until)}, its live windows "
                        f"{iso_ms(min(starts))} → {iso_ms(max(starts) + settings.window_ms)}; replaying where both "
                        "cover (pass --from/--to to replay every outcome)"
                    )
                first, until = lo, hi
            else:
                notes.append(
                    "span from the dump: its live windows do not overlap its outcomes; replaying the outcomes' span"
                )
        return first, until, coverage, notes
    if starts:
        notes.append("the dump holds no search_results record: the live windows are shown without a replay")
        return min(starts), max(starts) + settings.window_ms, coverage, notes
    return None, None, coverage, notes


def load_span(
    source: str | Path | DumpFile,
    from_ms: int | None = None,
    to_ms: int | None = None,
    settings: PipelineSettings | None = None,
    *,
    topic_prefix: str = "",
    verifier: CommandVerifier | Callable[[str], CommandVerifier] | None = None,
) -> DumpSpan:
    """A dump → the :class:`SpanData` a replay of ``[from_ms, to_ms)`` from Kafka would read.

    The dump's control records are verified as the live readers verify the topic (``verifier``, or one made
    for the dump's control topic by a callable given its name — a signature is bound to the topic it was
    made for, and the dump says which; None: the process settings'): a rejected command is listed with the
    invalid ones, never applied.

    Missing bounds default to the span the dump covers (:func:`default_span`). Raises ConfigError when the
    file cannot be read, or no span is given and the dump has nothing to derive one from.
    """
    settings = settings or PipelineSettings()
    dump = source if isinstance(source, DumpFile) else read_dump(source)
    started = time.perf_counter()
    topics = resolve_topics(dump, topic_prefix)
    results = topics.by_role["results"]
    event_ts = {r.line: t for r in results if (t := _json_int(r.record.value, "ts")) is not None}
    span_source = {"from": "option" if from_ms is not None else "dump", "to": "option" if to_ms is not None else "dump"}
    d_from, d_to, coverage, notes = default_span(topics, settings, event_ts)
    bad = sorted([*dump.bad, *topics.bad], key=lambda b: b.line)
    if from_ms is None or to_ms is None:
        if d_from is None or d_to is None:
            first_bad = "; ".join(b.describe() for b in bad[:3])
            raise ConfigError(
                f"--input {dump.path}: no search_results or canary_windows record to take the span from "
                f"({dump.lines} line(s), {len(bad)} malformed"
                + (f": {first_bad}" if first_bad else "")
                + "); give --from and --to"
            )
        from_ms = d_from if from_ms is None else from_ms
        to_ms = d_to if to_ms is None else to_ms
    if to_ms <= from_ms:
        raise ConfigError(
            f"--to must be after --from (got from={from_ms} to={to_ms}"
            + (", the other bound taken from the dump)" if "dump" in span_source.values() else ")")
        )
    read_from, read_to = read_bounds(from_ms, to_ms, settings)
    first_window, _ = span_bounds(from_ms, to_ms, settings)

    # The ranges the Kafka reader reads (canary.replay.reader.read_span), on the records' timestamps.
    # An outcome without a record timestamp is placed by its own event time, as the recomputation does.
    sel = {
        "results": _select(results, read_from, read_to, event_ts),
        "control": _select(topics.by_role["control"], None, read_to),
        "windows": _select(topics.by_role["windows"], first_window, None),
        "verdicts": _select(topics.by_role["verdicts"], first_window, None),
        "results_dlq": _select(topics.by_role["results_dlq"], read_from, None),
    }
    from canary.replay.reader import parse_late_dead_letters, parse_windows

    control = sel["control"]
    control_topic = topics.prefix + _BASE.control
    check = verifier if isinstance(verifier, CommandVerifier) else (verifier or default_verifier)(control_topic)
    commands, command_times, invalid = verify_control_records((r.record for r in control), check)
    line_of = {(r.record.partition, r.record.offset): r.line for r in control}
    invalid_commands = [{"line": line_of.get((i["partition"], i["offset"])), **i} for i in invalid]
    live_windows, invalid_windows = parse_windows(
        [r.record.value for r in sel["windows"]], [r.record.value for r in sel["verdicts"]]
    )
    live_late = parse_late_dead_letters([r.record.value for r in sel["results_dlq"]])
    stamps = [r.record.arrival_ms for recs in topics.by_role.values() for r in recs if r.record.arrival_ms is not None]
    horizon = min(read_to, max(stamps)) if stamps else read_to
    prefixed = {role: topics.prefix + base for role, base in ROLES.items()}
    data = SpanData(
        from_ms=from_ms,
        to_ms=to_ms,
        read_from_ms=read_from,
        read_to_ms=read_to,
        horizon_ms=horizon,
        records=[(r.record.partition, r.record.offset, r.record.arrival_ms, r.record.value) for r in sel["results"]],
        commands=commands,
        command_times=command_times,
        live_windows=live_windows,
        live_late=live_late,
        invalid_commands=len(invalid),
        invalid_windows=invalid_windows,
        read_seconds={"dump": dump.read_seconds + time.perf_counter() - started},
        offsets={prefixed["results"]: _offsets(sel["results"]), prefixed["control"]: _offsets(control)},
    )
    by_kind: dict[str, int] = {}
    for b in bad:
        by_kind[b.kind] = by_kind.get(b.kind, 0) + 1
    section: JSONDict = {
        "file": dump.path,
        "lines": dump.lines,
        "blank_lines": dump.blank_lines,
        "records": len(dump.records),
        "prefix": topics.prefix,
        "prefixes_found": topics.prefixes,
        "topics": {prefixed[role]: len(recs) for role, recs in topics.by_role.items() if recs},
        "replayed": {prefixed[role]: len(recs) for role, recs in sel.items() if recs},
        "outside_read_range": {
            prefixed[role]: len(topics.by_role[role]) - len(recs)
            for role, recs in sel.items()
            if len(topics.by_role[role]) > len(recs)
        },
        "ignored_topics": dict(sorted(topics.ignored.items())),
        "duplicates": topics.duplicates,
        "malformed_lines": len(bad),
        "malformed_by_kind": dict(sorted(by_kind.items())),
        "malformed": [b.to_dict() for b in bad[:MAX_LISTED]],
        "invalid_control_commands": invalid_commands[:MAX_LISTED],
        "span_source": span_source,
        "coverage": coverage,
        "horizon_ms": horizon,
    }
    if bad:
        notes.insert(
            0,
            f"dump {dump.path}: {len(bad)} malformed line(s) skipped, the rest replayed; "
            + "; ".join(b.describe() for b in bad[:3])
            + (f"; … (first {MAX_LISTED} in input.dump.malformed)" if len(bad) > 3 else ""),
        )
    if invalid_commands:
        notes.append(
            f"dump {dump.path}: {len(invalid)} control record(s) are not valid commands and were skipped; "
            + "; ".join(f"line {i['line']}: {i['reason'][:120]}" for i in invalid_commands[:3])
        )
    return DumpSpan(data, section, notes, {(r.record.partition, r.record.offset): r.line for r in sel["results"]})


def summary_line(section: JSONDict) -> str:
    """One line for the CLI summary: what the dump held and what was skipped."""
    parts = [f"dump {section['file']}: {section['lines']} line(s), {section['records']} record(s)"]
    if section["topics"]:
        parts.append("(" + ", ".join(f"{t} {n}" for t, n in section["topics"].items()) + ")")
    tail = [f"{section['malformed_lines']} malformed"]
    if section["malformed"]:
        tail[0] += " [" + "; ".join(f"line {b['line']}: {b['reason']}" for b in section["malformed"][:3]) + "]"
    if section["duplicates"]:
        tail.append(f"{section['duplicates']} duplicate(s) dropped")
    if section["ignored_topics"]:
        tail.append(f"{sum(section['ignored_topics'].values())} of other canary topics ignored")
    return " ".join(parts) + "; " + ", ".join(tail)


# -- writing a dump -----------------------------------------------------------------------------------------

_TSTYPES = {0: "create", 1: "logappend"}


def envelope(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    value: bytes | None,
    *,
    key: bytes | None = None,
    timestamp_type: int | None = 0,
    broker: int | None = None,
) -> str:
    """One dump line (no newline) in ``kcat -C -J``'s envelope; key/payload are the values' UTF-8 text.

    A value that is not UTF-8 is written with ``\\udcXX`` escapes (Python's surrogateescape), which
    :func:`parse_line` turns back into the same bytes."""
    obj: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if timestamp_ms is not None and timestamp_ms >= 0:
        obj["tstype"] = _TSTYPES.get(timestamp_type if timestamp_type is not None else 0, "create")
        obj["ts"] = timestamp_ms
    obj["broker"] = -1 if broker is None else broker
    ascii_only = False
    for name, raw in (("key", key), ("payload", value)):
        if raw is None:
            obj[name] = None
            continue
        try:
            obj[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            obj[name] = raw.decode("utf-8", "surrogateescape")
            ascii_only = True  # lone surrogates only survive as \\u escapes
    return json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":"))


def _in_window_span(value: bytes | None, first_ms: int, until_ms: int) -> bool:
    """Keep a canary_windows / canary_verdicts record iff its window starts in the span (or it cannot be
    read: a poison record is kept so the replay counts it, as one from Kafka does)."""
    start = _json_int(value, "window_start_ms")
    return start is None or first_ms <= start < until_ms


async def write_dump(
    bootstrap: Cluster,
    topics: Topics,
    from_ms: int,
    to_ms: int,
    path: Path,
    settings: PipelineSettings | None = None,
    *,
    timeout: float = 600.0,
) -> JSONDict:
    """Write what a replay of ``[from_ms, to_ms)`` reads from Kafka as a kcat-style dump file.

    ``search_results`` over the read range (warm-up and late arrivals included), the control topic from
    its beginning to the range's end, the span's windows from ``canary_windows`` and ``canary_verdicts``
    (the live results to compare with) and the outcome dead letters from the range on. Written to a
    temporary file and renamed, so a failed dump leaves no partial file behind.
    """
    from canary.kafka.topics import topic_partitions
    from canary.replay.reader import new_consumer, offset_ranges, read_ranges

    settings = settings or PipelineSettings()
    read_from, read_to = read_bounds(from_ms, to_ms, settings)
    first_window, until = span_bounds(from_ms, to_ms, settings)
    plan: list[tuple[str, bool, int | None, int | None, bool]] = [
        # topic, must exist, from (Kafka time), to, keep only the span's windows
        (topics.search_results, True, read_from, read_to, False),
        (topics.control, True, None, read_to, False),
        (topics.windows, True, first_window, None, True),
        (topics.verdicts, False, first_window, None, True),
        (topics.results_dlq, False, read_from, None, False),
    ]

    def cannot_write(exc: OSError) -> ConfigError:
        return ConfigError(f"--dump {path}: cannot write: {exc.strerror or exc}")

    consumer = new_consumer(bootstrap)
    try:
        await asyncio.wait_for(consumer.start(), 15)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    tmp = path.with_name(path.name + ".tmp")
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    ok = False
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = tmp.open("w", encoding="utf-8")
        except OSError as exc:
            raise cannot_write(exc) from None
        try:
            for topic, required, lo, hi, window_filter in plan:
                started = time.perf_counter()
                tps = await topic_partitions(consumer, topic, required=required)
                cluster = consumer._client.cluster
                leaders: dict[int, int | None] = {}
                for tp in tps:
                    leader = cluster.leader_for_partition(tp)
                    leaders[tp.partition] = leader if isinstance(leader, int) and leader >= 0 else None
                counts[topic] = 0

                def sink(
                    r: Any, topic: str = topic, window_filter: bool = window_filter, leaders: dict[int, Any] = leaders
                ) -> None:
                    if window_filter and not _in_window_span(r.value, first_window, until):
                        return
                    line = envelope(
                        topic,
                        r.partition,
                        r.offset,
                        r.timestamp,
                        r.value,
                        key=r.key,
                        timestamp_type=r.timestamp_type,
                        broker=leaders.get(r.partition),
                    )
                    try:
                        fh.write(line + "\n")
                    except OSError as exc:
                        raise cannot_write(exc) from None
                    counts[topic] += 1

                await read_ranges(consumer, await offset_ranges(consumer, tps, lo, hi), sink, timeout)
                seconds[topic] = round(time.perf_counter() - started, 3)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise cannot_write(exc) from None
        finally:
            fh.close()
        try:
            tmp.replace(path)
        except OSError as exc:
            raise cannot_write(exc) from None
        ok = True
    finally:
        await consumer.stop()
        if not ok:
            tmp.unlink(missing_ok=True)
    return {
        "file": str(path),
        "bootstrap": str(bootstrap),
        "span": {"from": iso_ms(from_ms), "to": iso_ms(to_ms), "from_ms": from_ms, "to_ms": to_ms},
        "read_from_ms": read_from,
        "read_to_ms": read_to,
        "records": counts,
        "lines": sum(counts.values()),
        "read_seconds": seconds,
    }
