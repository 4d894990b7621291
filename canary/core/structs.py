"""The one gate from a parsed JSON value to a declared record (a ``msgspec.Struct``).

Every record canary reads back — a topic message, a checkpoint, a key file, an HTTP body — is declared once,
as a Struct whose annotations (types, closed ``Literal`` sets, ``Meta`` bounds, defaults) are its contract.
:func:`convert` checks a value already parsed by the bounded decoder (:mod:`canary.core.wire`) against that
declaration and builds the record, or raises :class:`~canary.errors.InvalidEvent` naming the record, the
field, the offending value and why, in the words the contracts use (``must be one of …``, ``must be >= 0``,
``required field is missing``): a poison record must be diagnosable from the log line alone. What an
annotation cannot say (a safe name, a pair of fields) the Struct checks in ``__post_init__``, raising
:class:`InvalidEvent` itself; msgspec runs it on every path.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

import msgspec

from canary.errors import InvalidEvent

_M = TypeVar("_M", bound=msgspec.Struct)

_TYPE_WORDS = {
    "int": "expected an integer",
    "float": "expected a number",
    "str": "expected a string",
    "bool": "expected true/false",
    "object": "expected an object",
    "array": "expected a list",
}
_EXPECTED = re.compile(r"Expected `(?P<type>[a-z]+)(?P<null> \| null)?`(?P<rest>.*)")
_EXPECTED_ANY = re.compile(r"Expected `(?P<types>[a-z]+(?: \| [a-z]+)+)`, got")
_BOUND = re.compile(r" (?P<op>>=|<=|>|<) (?P<num>\S+)$")
_LENGTH = re.compile(r" of length (?P<op>>=|<=) (?P<num>\d+)$")
_PATH = re.compile(r" - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")  # [...]: a value of an object (msgspec names no key)
_PATTERN = re.compile(r"Expected `str` matching regex (?P<regex>'.*')$")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`(?: - at `\$(.*)`)?$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$(.*)`)?$")

Literals = dict[str, tuple[tuple[Any, ...], bool]]


def _options(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def _literals(cls: type[msgspec.Struct]) -> Literals:
    """Per field of ``cls`` with a closed set: its values, and whether null is allowed too."""
    out: Literals = {}
    for f in msgspec.structs.fields(cls):
        options = _options(f.type)
        values = [v for o in options if typing.get_origin(o) is Literal for v in typing.get_args(o)]
        if values:  # in the order the Literal declares them (inspect sorts them)
            out[f.encode_name] = (tuple(values), type(None) in options)
    return out


def _nullable(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The required fields of ``cls`` that may be null."""
    return tuple(f.encode_name for f in msgspec.structs.fields(cls) if f.required and type(None) in _options(f.type))


_FACTS: dict[type[msgspec.Struct], tuple[Literals, tuple[str, ...]]] = {}


def _facts(cls: type[msgspec.Struct]) -> tuple[Literals, tuple[str, ...]]:
    facts = _FACTS.get(cls)
    if facts is None:
        facts = _FACTS[cls] = (_literals(cls), _nullable(cls))
    return facts


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _type_at(cls: type[msgspec.Struct], steps: list[tuple[str, int | str | None]]) -> Any:
    """The annotation at a msgspec error path inside ``cls`` (None where it cannot be followed)."""
    current: Any = cls
    for name, _ in steps:
        options = [_unwrap(o) for o in _options(_unwrap(current)) if o is not type(None)]
        if name:
            structs_ = [o for o in options if isinstance(o, type) and issubclass(o, msgspec.Struct)]
            fields = {f.encode_name: f.type for c in structs_ for f in msgspec.structs.fields(c)}
            if name not in fields:
                return None
            current = fields[name]
        else:  # an item of a list/tuple, or a value of a mapping
            args = [a for o in options for a in typing.get_args(o) if a is not Ellipsis]
            if not args:
                return None
            current = args[-1]
    return _unwrap(current)


def reason(message: str, field: str, literals: Literals) -> str:
    """msgspec's refusal in the words the contract uses (docs/contracts.md, "Poison messages")."""
    if field in literals and (message.startswith("Invalid enum value") or ", got `" in message):
        values, nullable = literals[field]
        return f"must be one of {', '.join(map(str, values))}" + (" or null" if nullable else "")
    if (p := _PATTERN.match(message)) is not None:
        return f"must match {p['regex']}"
    m = _EXPECTED.match(message)
    if m is None:
        if (u := _EXPECTED_ANY.match(message)) is not None:  # a union: "expected a string or an integer"
            kinds = u["types"].split(" | ")
            words = [_TYPE_WORDS.get(k, f"expected {k}").removeprefix("expected ") for k in kinds if k != "null"]
            return "expected " + " or ".join(words) + (" or null" if "null" in kinds else "")
        return message[:1].lower() + message[1:]
    kind, rest = m["type"], m["rest"]
    if rest.startswith(", got"):
        return _TYPE_WORDS.get(kind, f"expected {kind}") + (" or null" if kind == "object" and m["null"] else "")
    if (n := _LENGTH.search(rest)) is not None:
        if kind == "str" and n["op"] == ">=" and n["num"] == "1":
            return "must not be empty"
        least = "at most" if n["op"] == "<=" else "at least"
        return f"expected {least} {n['num']} {'characters' if kind == 'str' else 'items'}"
    if (b := _BOUND.search(rest)) is not None:
        num = b["num"]
        return f"must be {b['op']} {float(num):g}" if kind == "float" else f"must be {b['op']} {num}"
    return message[:1].lower() + message[1:]


def invalid(
    record: str,
    data: Mapping[str, Any],
    exc: msgspec.ValidationError,
    literals: Literals,
    cls: type[msgspec.Struct] | None = None,
) -> InvalidEvent:
    """A msgspec refusal as :class:`InvalidEvent` naming the record, the top-level field and its value (and,
    for a refusal inside a list or object, which item)."""
    message = str(exc)
    missing = _MISSING.match(message)
    if missing is not None:
        where = f"{missing[2]}.{missing[1]}".lstrip(".") if missing[2] else missing[1]
        return InvalidEvent(f"{record}.{where}: required field is missing")
    unknown = _UNKNOWN.match(message)
    if unknown is not None:  # only where the declaration forbids them (readers ignore unknown fields)
        where = f"{unknown[2]}.{unknown[1]}".lstrip(".") if unknown[2] else unknown[1]
        return InvalidEvent(f"{record}.{where}: not a field of this record")
    path_m = _PATH.search(message)
    if path_m is None:
        return InvalidEvent(f"{record}: {message}")
    steps: list[tuple[str, int | str | None]] = [
        (name, int(idx) if idx.isdigit() else idx or None) for name, idx in _STEP.findall(path_m["path"])
    ]
    message = message[: path_m.start()]
    if not steps or not steps[0][0]:
        return InvalidEvent(f"{record}: {message}")
    field = steps[0][0]
    value = data.get(field)
    why = reason(message, field, literals)
    if isinstance(value, float) and not math.isfinite(value):
        why = "must be finite"
    elif len(steps) > 1:  # an item inside a list or an object: say which, keep the top field's name
        inner = "".join(f"[{i}]" if i is not None else f".{n}" for n, i in steps[1:])
        if message.startswith("Invalid enum value") and cls is not None:
            nested = _type_at(cls, steps)
            values = [v for o in _options(nested) if typing.get_origin(o) is Literal for v in typing.get_args(o)]
            if values:
                why = f"must be one of {', '.join(map(str, values))}"
        why = f"expected every item valid: {inner}: {why}"
    if path_m["key"]:  # a key of the object at that path (JSON keys are text: its pattern, say)
        why = why.replace("expected every item valid: ", "expected every key valid: ", 1)
        if len(steps) == 1:
            why = f"expected every key valid: {why}"
    return InvalidEvent(f"{record}.{field}: {why}, got {value!r:.200}")


def finite(record: str, field: str, value: float | None) -> None:
    """:class:`InvalidEvent` unless ``value`` is None or a finite number (a parsed NaN/Infinity literal
    passes a float annotation without bounds)."""
    if value is not None and not math.isfinite(value):
        raise InvalidEvent(f"{record}.{field}: must be finite, got {value!r}")


def convert(
    cls: type[_M],
    data: object,
    record: str | None = None,
    *,
    finite_fields: tuple[str, ...] = (),
    fill_nullable: bool = False,
) -> _M:
    """``data`` (a parsed JSON value) as ``cls``, or :class:`InvalidEvent` naming ``record`` (default: the
    class name), the field and the value.

    ``finite_fields``: float fields whose bounds (if any) let an infinity through. ``fill_nullable``: a
    required field that may be null may also be left out (the wire messages' rule for older or terser
    producers); otherwise a missing required field is refused, whatever its type."""
    record = record or cls.__name__
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"{record}: expected a JSON object, got {type(data).__name__}: {data!r:.200}")
    literals, nullable = _facts(cls)
    if fill_nullable and not all(name in data for name in nullable):
        data = {**dict.fromkeys(nullable), **data}
    try:
        message = msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise invalid(record, data, exc, literals, cls) from None
    for name in finite_fields:
        finite(record, name, getattr(message, name))
    return message


_T = TypeVar("_T")


def exactly(data: object, shape: type[_T]) -> _T | None:
    """``data`` as ``shape`` when it already is one exactly (msgspec's strict conversion, in C), else None.

    For the hot parsers of the window statistics (sketch bins, recall histograms, group rows: thousands of
    ``[index, count]`` pairs a window), whose reference check is a Python loop: the fast path accepts only what
    that loop accepts with the same values (``shape`` says the loop's bounds; strict: no bool, float or string
    for an int), and on None the caller runs its own checks, which decide — accept or refuse — and say why."""
    try:
        return msgspec.convert(data, shape)
    except msgspec.ValidationError:
        return None
