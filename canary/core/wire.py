"""Every record is hostile until decoded: the one bounded, total JSON decoder of canary.

Every value read off a topic, out of an HTTP body or from a file canary did not just write itself goes
through :func:`decode` (or :func:`decode_object`) with the :class:`Limits` of what it is supposed to be.
The decoder either returns a JSON value or raises :class:`Rejected` with a code from a closed set
(:data:`REJECT_CODES`) and a detail naming the limit or the position; it never raises anything else, never
recurses in Python and never holds more than ``max_bytes`` of input:

``no_value``    the record has no value (a tombstone, a null) where a JSON document is expected
``too_large``   more bytes than the record kind allows (checked before parsing)
``too_deep``    arrays/objects nested deeper than the kind allows (checked before parsing, see below)
``not_utf8``    the bytes are not UTF-8, or a string holds a lone surrogate escape (not Unicode text)
``not_json``    not a JSON document
``not_object``  valid JSON, but not the object the contract requires
``invalid``     a JSON object whose fields break the contract (raised by the models, not here)

Depth is bounded before anything parses: a value can never nest deeper than it has opening brackets, so
counting ``[`` and ``{`` bytes (a C-speed scan) settles every ordinary record; only a record with more
brackets than its depth limit — rare: strings may hold brackets — gets the exact, string-aware scan
(:func:`depth_of`, vectorized). The
parsers behind it (orjson, then the standard library's ``json`` for what orjson refuses, e.g. the ``NaN``
literals Python writes) therefore never meet a nesting that could exhaust the interpreter's recursion
limit; a 6 kB ``[[[…]]]`` used to stop every router with ``RecursionError``.

Field validation stays with the records, each declared once as a ``msgspec.Struct`` (``canary.core.models``,
``router.requests``, ``canary.core.judge`` …) and built through one gate, :func:`canary.core.structs.convert`:
it raises :class:`~canary.errors.InvalidEvent` naming the field, which consumers report as ``invalid``
(:func:`rejection_of`). :func:`dead_letter` builds the
one dead-letter record format every consumer writes (docs/contracts.md, "Dead letters").
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from canary.core import accel
from canary.errors import InvalidEvent

RejectCode = Literal["no_value", "too_large", "too_deep", "not_utf8", "not_json", "not_object", "invalid"]
REJECT_CODES: Final[tuple[RejectCode, ...]] = (
    "no_value",
    "too_large",
    "too_deep",
    "not_utf8",
    "not_json",
    "not_object",
    "invalid",
)

DeadLetterReason = Literal[RejectCode, "future_ts", "quarantined"]
"""Why a record went to a dead-letter topic: a decoding rejection; an outcome beyond the event-time bound
(``future_ts``); or a record whose processing raised something unexpected (``quarantined``: the loop
set it aside with the error and went on)."""
DEAD_LETTER_REASONS: Final[tuple[DeadLetterReason, ...]] = (*REJECT_CODES, "future_ts", "quarantined")

RAW_KEPT_CHARS: Final = 10_000  # of a dead record's value, kept (decoded with replacement) for operators


class Rejected(InvalidEvent):
    """A record refused by the decoder or a contract: ``code`` says why (one of :data:`REJECT_CODES`)."""

    def __init__(self, code: RejectCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: RejectCode = code
        self.detail = detail


def rejection_of(exc: BaseException) -> Rejected:
    """Any error a model raised about a decoded record, as a :class:`Rejected` (``invalid`` unless it
    already is one)."""
    if isinstance(exc, Rejected):
        return exc
    return Rejected("invalid", str(exc)[:1000])


@dataclass(frozen=True, slots=True)
class Limits:
    """What one kind of record may be: at most ``max_bytes`` of UTF-8 JSON nested at most ``max_depth``
    deep (a flat object is depth 1)."""

    kind: str
    max_bytes: int
    max_depth: int
    # Arrays and objects in all (outside strings); None: no bound beyond the size. Parsing builds one
    # Python object per container, so a 300 kB "[[],[],…]" costs a parser ~100k allocations: refused first.
    max_containers: int | None = None
    # Lone surrogate escapes are refused unless the format uses them on purpose (a topic dump writes a
    # value that was not UTF-8 as \udcXX escapes, to restore it byte for byte).
    lone_surrogates: bool = False


# Sizes: the largest legitimate record of each kind, measured (tests/core/test_wire.py pins them), with
# room to spare; the broker's own limit (1 MB by default) bounds every topic anyway. Depths: the contract's
# deepest legitimate nesting, plus margin — a start command carries two preset snapshots (command → snapshot
# → section → list → item), a rollback the judge's evidence per window.
CONTROL: Final = Limits("control command", 1 << 20, 32, 10_000)
REQUEST: Final = Limits("search request", 256 << 10, 8, 64)
OUTCOME: Final = Limits("search outcome", 64 << 10, 8, 16)
# Windows and partials hold sketches: 2,049 latency bins at most, 1,001 recall bins, and a sketch per custom
# percentile metric (16 at most): ~36,000 arrays in the largest legitimate one.
PARTIAL: Final = Limits("partial window", 8 << 20, 16, 100_000)
WINDOW: Final = Limits("window result", 8 << 20, 16, 100_000)
JUDGEMENT: Final = Limits("judgement", 8 << 20, 32, 100_000)
ROUTER_STATE: Final = Limits("router state", 64 << 10, 8, 16)
CHECKPOINT: Final = Limits("stage checkpoint", 64 << 20, 16)
DEAD_LETTER: Final = Limits("dead letter", 1 << 20, 8, 1_000)
AUDIT_LINE: Final = Limits("audit line", 4 << 20, 32, 100_000)
HTTP_BODY: Final = Limits("HTTP body", 64 << 10, 16, 1_000)
RECORD: Final = Limits("record", 8 << 20, 32, 100_000)  # any canary topic's record, for readers of several kinds
FILE: Final = Limits("JSON file", 64 << 20, 64)

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN_ARRAY, _OPEN_OBJECT, _CLOSE_ARRAY, _CLOSE_OBJECT = (ord(c) for c in "[{]}")


def depth_of(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw``, brackets inside strings ignored (see
    :func:`structure_of`)."""
    return structure_of(raw)[0]


def structure_of(raw: bytes) -> tuple[int, int]:
    """(deepest nesting, number of arrays and objects) of ``raw``, brackets inside strings ignored.

    Exact for JSON. For anything else it is at least the depth any JSON parser reaches before it fails,
    which is what the bound protects: a parser reads a valid prefix and stops at the first error, and within
    a valid prefix a quote ends a string exactly when an even number of backslashes precedes it (outside
    strings JSON has no backslash at all), so the string regions — and the depth — are the parser's own.
    Vectorized (numpy): linear, with no Python loop per byte, whatever the input holds.
    """
    # numpy is imported here, not with the module: what imports wire early (before a service installs its stop
    # deadline) must not start numpy's thread pool, whose thread would not block the stop signals
    # (tests/test_runtime.py; the native scan usually answers instead: canary.core.accel).
    import numpy as np

    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size == 0:
        return 0, 0
    quotes = a == _QUOTE
    backslashes = a == _BACKSLASH
    if backslashes.any():
        index = np.arange(a.size)
        # For every position, how many backslashes run up to it (0 where there is none).
        run = index - np.maximum.accumulate(np.where(backslashes, -1, index))
        escaped = np.zeros(a.size, dtype=bool)
        escaped[1:] = (run[:-1] % 2) == 1
        quotes &= ~escaped
    outside = (np.cumsum(quotes) % 2) == 0  # an odd count of quotes so far: inside a string
    opens = ((a == _OPEN_ARRAY) | (a == _OPEN_OBJECT)) & outside
    containers = int(np.count_nonzero(opens))
    if not containers:
        return 0, 0
    closes = ((a == _CLOSE_ARRAY) | (a == _CLOSE_OBJECT)) & outside
    return int(np.cumsum(opens.astype(np.int64) - closes.astype(np.int64)).max(initial=0)), containers


def check_bounds(raw: bytes, limits: Limits) -> None:
    """Raise :class:`Rejected` (``too_large`` / ``too_deep``) unless ``raw`` is within ``limits``; cheap for
    ordinary records (a length and two byte counts)."""
    if len(raw) > limits.max_bytes:
        raise Rejected("too_large", f"{limits.kind} of {len(raw)} bytes, more than {limits.max_bytes}")
    openers = raw.count(b"[") + raw.count(b"{")  # an upper bound of both depth and containers
    if openers > limits.max_depth or (limits.max_containers is not None and openers > limits.max_containers):
        # The native batch core's scan where it is built: every partial and merged window is measured, each with
        # thousands of arrays.
        depth, containers = (accel.NATIVE.structure or structure_of)(raw)
        if depth > limits.max_depth:
            raise Rejected("too_deep", f"{limits.kind} nested {depth} deep, more than {limits.max_depth}")
        if limits.max_containers is not None and containers > limits.max_containers:
            detail = f"{limits.kind} of {containers} arrays/objects, more than {limits.max_containers}"
            raise Rejected("too_large", detail)


def _lone_surrogate(value: Any) -> bool:
    """Whether a decoded value holds a string that is not Unicode text (a lone surrogate escape), which
    the standard library accepts and every later ``.encode()`` would fail on. Iterative: bounded depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decode(raw: bytes | bytearray | memoryview | str | None, limits: Limits) -> Any:
    """The JSON value of ``raw`` within ``limits``; :class:`Rejected` otherwise — and nothing else, ever."""
    if raw is None:
        raise Rejected("no_value", f"the {limits.kind} record has no value")
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    check_bounds(data, limits)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # orjson is strict; the standard library decides the rest, with its own messages
    except Exception as exc:  # defensive: a parser must not stop a consumer loop
        raise Rejected("not_json", f"{limits.kind}: {type(exc).__name__}: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"{limits.kind}: byte {exc.start} is not UTF-8 ({exc.reason})") from None
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ints beyond the digit limit
        raise Rejected("not_json", f"{limits.kind}: {exc}") from None
    except Exception as exc:  # defensive, as above
        raise Rejected("not_json", f"{limits.kind}: {type(exc).__name__}: {exc}") from None
    if not limits.lone_surrogates and _lone_surrogate(value):
        raise Rejected("not_utf8", f"{limits.kind}: a string holds a lone surrogate escape, which is not text")
    return value


def decode_object(raw: bytes | bytearray | memoryview | str | None, limits: Limits) -> dict[str, Any]:
    """:func:`decode`, and the value must be a JSON object (``not_object`` otherwise)."""
    value = decode(raw, limits)
    if not isinstance(value, dict):
        raise Rejected("not_object", f"{limits.kind}: expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def as_json(raw: bytes | bytearray | memoryview | str | None, limits: Limits = RECORD) -> Any:
    """A record's JSON value for display and offline folds, or — for a record that is not bounded JSON — the
    marker ``{"_invalid": text, "_reason": code}``, which no contract accepts (so every reader that gets it
    counts an invalid record instead of crashing)."""
    try:
        return decode(raw, limits)
    except Rejected as exc:
        return {"_invalid": raw_text(raw, 200), "_reason": exc.code}


def raw_text(raw: bytes | bytearray | memoryview | str | None, limit: int = RAW_KEPT_CHARS) -> str | None:
    """A dead record's value as text for operators: at most ``limit`` characters, undecodable bytes
    replaced (the record itself may be anything)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw[:limit].encode("utf-8", "replace").decode("utf-8")
    return bytes(raw[: limit * 4]).decode("utf-8", errors="replace")[:limit]


def dead_letter(
    reason: DeadLetterReason,
    detail: str,
    *,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    raw: bytes | bytearray | memoryview | str | None,
    extra: Mapping[str, Any] | None = None,
    at_ms: int | None = None,
) -> dict[str, Any]:
    """The dead-letter record of one refused record: why (a closed ``reason`` and a ``detail``), where it was
    (topic, partition, offset) and what it held (``raw``, truncated; ``raw_bytes`` its full size)."""
    return {
        "reason": reason,
        "detail": detail[:2000],
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "raw": raw_text(raw),
        "raw_bytes": None if raw is None else len(raw),
        "dead_lettered_at_ms": at_ms if at_ms is not None else time.time_ns() // 1_000_000,
        **(extra or {}),
    }
