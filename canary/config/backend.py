"""A preset's ``backend:`` section: which search engine serves it, from an allow-list of types.

A preset (and so a control command, which carries the preset's snapshot) never names code to run: no import
paths, only a ``type`` from :data:`BACKEND_TYPES` and that type's validated settings.

* ``bundled`` (or no section / ``null``): the router's own backend — the bundled hybrid engine, or whatever
  backend the *operator* started the router with (``canary router --backend pkg.mod:factory``, the API).
* ``http``: a search service over HTTP (:class:`HttpBackendSpec`; the client is
  :mod:`router.backends.http`).

The snapshot writes ``bundled`` as ``null`` (what presets wrote before this section existed), so the content
hash of every existing preset is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from canary.core import structs
from canary.core.validation import NO_VALUE, Section
from canary.errors import ConfigError, InvalidEvent

__all__ = ["BACKEND_TYPES", "PARAMS_MODES", "HttpBackendSpec", "parse_backend"]

BACKEND_TYPES: Final = ("bundled", "http")
ParamsMode = Literal["body", "query"]
PARAMS_MODES: Final[tuple[ParamsMode, ...]] = ("body", "query")
MAX_URL_LENGTH: Final = 2048
TIMEOUT_MS_RANGE: Final = (1, 60_000)
MAX_CONNECTIONS_RANGE: Final = (1, 1024)
MAX_RESULTS_RANGE: Final = (1, 1000)
_IMPORT_PATH_LIKE: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")
IMPORT_PATH_REFUSED: Final = (
    "a preset cannot name code to import (a preset and the control commands carrying it never choose what "
    "runs); use {type: bundled} or {type: http, url: ...}. An operator's own backend is passed when starting "
    "the router (canary router --backend pkg.mod:factory)"
)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable search-service URL, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (presets travel in control commands and reports)"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "must not use port 0"
    return None


class HttpBackendSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``backend: {type: http, url, timeout_ms, params, max_connections, max_results, exact_url}``.

    ``params`` says how the arm's parameters are sent: ``body`` – ``POST url`` with a JSON body ``{"query",
    "collection", "k", "config": {name, version}, "params": {derived_params, retriever, reranker}}``;
    ``query`` – ``GET url?query=…&collection=…&k=…&retriever.alpha=…`` (every parameter flattened to a dotted
    name). ``exact_url`` (optional) answers the same request with the exact top-k, for recall without labels.
    The response contract is in docs/contracts.md ("HTTP search backend").
    """

    url: str
    timeout_ms: int = 1000
    params: ParamsMode = "body"
    max_connections: int = 64
    max_results: int = 100
    exact_url: str | None = None
    type: Literal["http"] = "http"

    def __post_init__(self) -> None:
        for name, value in (("url", self.url), ("exact_url", self.exact_url)):
            problem = url_problem(value) if value is not None else None
            if problem:
                raise ConfigError(f"backend.{name} = {value!r}: {problem}")
        for name, (low, high) in (
            ("timeout_ms", TIMEOUT_MS_RANGE),
            ("max_connections", MAX_CONNECTIONS_RANGE),
            ("max_results", MAX_RESULTS_RANGE),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"backend.{name} = {value!r}: must be an integer between {low} and {high}")
        if self.params not in PARAMS_MODES:
            raise ConfigError(f"backend.params = {self.params!r}: must be one of {', '.join(PARAMS_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}  # first, as snapshots have always written it
        d.update(msgspec.to_builtins(self))
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> HttpBackendSpec:
        """From a snapshot's ``backend`` (already validated by the preset parser; checked again here).
        ConfigError naming the field (what a backend section is refused with, wherever it comes from)."""
        try:
            if not isinstance(raw, Mapping) or raw.get("type") != "http":  # written, not defaulted
                raise InvalidEvent(
                    f"backend.type: must be http, got {raw.get('type') if isinstance(raw, Mapping) else raw!r:.100}"
                )
            return structs.convert(cls, raw, "backend")
        except InvalidEvent as exc:
            raise ConfigError(f"backend = {raw!r:.200}: not an http backend section ({exc})") from None


def _bounded_int(s: Section, key: str, default: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    value = s.integer(key, minimum=low, default=default)
    if value > high:
        s.out.add(s.field(key), value, f"must be between {low} and {high}")
        return default
    return value or default


def _url(s: Section, key: str, *, required: bool) -> str | None:
    raw = s.take(key)
    if raw is NO_VALUE or (raw is None and not required):
        if required:
            s.out.add(s.field(key), NO_VALUE, "missing required field (the search service's URL)")
        return None
    if not isinstance(raw, str):
        s.out.add(s.field(key), raw, "expected a URL string")
        return None
    problem = url_problem(raw)
    if problem:
        s.out.add(s.field(key), raw, problem)
        return None
    return raw


def parse_backend(root: Section) -> HttpBackendSpec | None:
    """The preset's ``backend`` section; None = the router's own backend (``bundled``)."""
    raw = root.take("backend")
    if raw is NO_VALUE or raw is None:
        return None
    if isinstance(raw, str):
        looks = "is an import path: " if _IMPORT_PATH_LIKE.fullmatch(raw) else "must be a mapping with a type: "
        root.out.add("backend", raw, looks + IMPORT_PATH_REFUSED)
        return None
    s = root.section("backend")
    if not isinstance(raw, Mapping):
        return None  # reported by Section
    kind = s.string("type", choices=BACKEND_TYPES)
    if kind != "http":
        s.close()
        return None  # bundled (or an unknown type, reported)
    url = _url(s, "url", required=True)
    timeout_ms = _bounded_int(s, "timeout_ms", 1000, TIMEOUT_MS_RANGE)
    params = s.string("params", choices=PARAMS_MODES, required=False) or "body"
    max_connections = _bounded_int(s, "max_connections", 64, MAX_CONNECTIONS_RANGE)
    max_results = _bounded_int(s, "max_results", 100, MAX_RESULTS_RANGE)
    exact_url = _url(s, "exact_url", required=False)
    s.close()
    if url is None:
        return None
    try:
        return HttpBackendSpec(url, timeout_ms, params, max_connections, max_results, exact_url)  # type: ignore[arg-type]
    except ConfigError as exc:  # the parser above should have caught it; never load a spec that fails here
        s.out.add(s.path, raw, str(exc))
        return None
