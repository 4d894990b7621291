"""Field-by-field reading of untrusted data (presets, environments, an slo section anywhere) that collects every
problem instead of stopping at the first.

Readers return a typed placeholder (0, "", ...) for a bad field so parsing can continue and report all
problems of a file at once; the caller must raise if :attr:`Collector.errors` is non-empty, so placeholders
never escape.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class _NoValue(enum.Enum):
    TOKEN = "<no value>"


#: Marks a field that is absent (as opposed to present with the value ``None``/null).
NO_VALUE = _NoValue.TOKEN

_MAX_SHOWN = 80


def show(value: object) -> str:
    """Render a value the way it would look in YAML/JSON (``true``, ``null``, ``"text"``), shortened."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def kind(value: object) -> str:
    """YAML-flavoured type name for messages; bool is checked first because it subclasses int."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    names = {int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in one preset: where it is, what was found there and why it is wrong."""

    file: str
    field: str  # dotted path, e.g. "retriever.alpha"; "" for whole-file problems
    value: object  # NO_VALUE when the field is missing or the file could not be parsed
    reason: str

    def __str__(self) -> str:
        if self.value is NO_VALUE:
            return f"{self.file}: {self.field}: {self.reason}" if self.field else f"{self.file}: {self.reason}"
        return f"{self.file}: {self.field or '(top level)'} = {show(self.value)}: {self.reason}"


class Collector:
    """Accumulates the FieldErrors of one file and remembers which fields failed (for cross-field checks)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[FieldError] = []
        self._failed: set[str] = set()

    def add(self, field: str, value: object, reason: str) -> None:
        self.errors.append(FieldError(self.file, field, value, reason))
        self._failed.add(field)

    def ok(self, *fields: str) -> bool:
        """True if none of the given fields (or their parent sections) produced an error."""
        return not any(f == bad or f.startswith(bad + ".") for f in fields for bad in self._failed)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Section:
    """A mapping being read. Every key taken is remembered so :meth:`close` can flag unknown (typo) keys."""

    def __init__(self, out: Collector, path: str, raw: object) -> None:
        self.out = out
        self.path = path
        self._seen: set[str] = set()
        # A missing or malformed section is reported once here, not once per field inside it.
        self._raw: Mapping[object, object] = {}
        self._broken = True
        if raw is NO_VALUE:
            out.add(path, NO_VALUE, "missing required section")
        elif not isinstance(raw, Mapping):
            out.add(path, raw, f"must be a mapping, got {kind(raw)}")
        else:
            self._raw = raw
            self._broken = False

    def field(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is written (even as null); does not count as reading it."""
        return key in self._raw

    def written(self) -> list[str]:
        """The keys written, in file order (does not count as reading them)."""
        return [str(k) for k in self._raw]

    def take(self, key: str) -> object:
        self._seen.add(key)
        return self._raw.get(key, NO_VALUE)

    def _missing(self, key: str) -> None:
        if not self._broken:
            self.out.add(self.field(key), NO_VALUE, "missing required field")

    def _bad(self, key: str, value: object, reason: str) -> None:
        self.out.add(self.field(key), value, reason)

    def integer(self, key: str, *, minimum: int = 1, default: int | None = None) -> int:
        value = self.take(key)
        if value is NO_VALUE:
            if default is not None:
                return default
            self._missing(key)
        elif isinstance(value, bool) or not isinstance(value, int):  # YAML `true` must not pass as 1
            self._bad(key, value, f"expected an integer, got {kind(value)}")
        elif value < minimum:
            self._bad(key, value, "must be a positive integer" if minimum == 1 else f"must be >= {minimum}")
        else:
            return value
        return 0

    def number(self, key: str, *, low: float | None = None, high: float | None = None, positive: bool = False) -> float:
        value = self.take(key)
        if value is NO_VALUE:
            self._missing(key)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            self._bad(key, value, f"expected a number, got {kind(value)}")
        elif not math.isfinite(value):
            self._bad(key, value, "must be a finite number")
        elif positive and value <= 0:
            self._bad(key, value, "must be greater than 0")
        elif low is not None and high is not None and not low <= value <= high:
            self._bad(key, value, f"must be between {low:g} and {high:g}")
        elif low is not None and high is None and value < low:
            self._bad(key, value, f"must be >= {low:g}")
        else:
            # Normalised to float so 1 and 1.0 give the same snapshot and content hash.
            return float(value)
        return 0.0

    def string(
        self,
        key: str,
        *,
        choices: Iterable[str] = (),
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        required: bool = True,
    ) -> str:
        value = self.take(key)
        allowed = tuple(choices)
        if value is NO_VALUE:
            if required:
                self._missing(key)
        elif not isinstance(value, str):
            # `version: 1.10` parses as the float 1.1: quoting is the fix the user needs to hear.
            quote = " (quote it)" if isinstance(value, int | float) and not isinstance(value, bool) else ""
            self._bad(key, value, f"expected a string, got {kind(value)}{quote}")
        elif allowed and value not in allowed:
            self._bad(key, value, "must be one of " + ", ".join(allowed))
        elif pattern is not None and not pattern.fullmatch(value):
            self._bad(key, value, hint or f"must match {pattern.pattern}")
        elif not value.strip():
            self._bad(key, value, "must not be empty")
        else:
            return value
        return ""

    def strings(self, key: str) -> tuple[str, ...]:
        """Optional list of non-empty strings, e.g. tags."""
        value = self.take(key)
        if value is NO_VALUE:
            return ()
        if not isinstance(value, list):
            self._bad(key, value, f"expected a list of strings, got {kind(value)}")
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.out.add(f"{self.field(key)}[{i}]", item, "expected a non-empty string")
        return tuple(str(item) for item in value)

    def section(self, key: str) -> Section:
        return Section(self.out, self.field(key), self.take(key))

    def sections(self, key: str) -> list[Section]:
        """Optional list of mappings, e.g. slo.rules."""
        value = self.take(key)
        if value is NO_VALUE:
            return []
        if not isinstance(value, list):
            self._bad(key, value, f"expected a list of mappings, got {kind(value)}")
            return []
        return [Section(self.out, f"{self.field(key)}[{i}]", item) for i, item in enumerate(value)]

    def close(self) -> None:
        """Report keys nobody asked for: almost always a typo that would otherwise be silently ignored."""
        known = sorted(self._seen)
        for key, value in self._raw.items():
            if key in self._seen:
                continue
            guess = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (allowed: {', '.join(known)})"
            self.out.add(self.field(str(key)), value, "unknown field" + hint)
