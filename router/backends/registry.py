"""Which backend serves a configuration: the allow-list a router resolves a preset's ``backend`` with.

Only the types of :data:`canary.config.backend.BACKEND_TYPES` exist; nothing here imports a name taken from
a preset or a control command. ``bundled`` (``backend: null`` in a snapshot) is the router's own backend —
the bundled engine or the operator's (``canary router --backend``); ``http`` is one
:class:`~router.backends.http.HttpBackend` (one connection pool) per distinct service spec, built on first
use and closed with :meth:`BackendRegistry.close`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from canary.config.backend import HttpBackendSpec
from canary.core.deployment import ConfigRef
from canary.errors import ConfigError
from router.backends.base import BackendError, SearchBackend
from router.backends.http import HttpBackend

log = logging.getLogger("canary.router")

MAX_HTTP_BACKENDS: Final = 16  # distinct services one router keeps pools for
MAX_RESOLVED: Final = 256  # configurations remembered (by content hash)


class Unservable:
    """The backend of a configuration whose ``backend`` section cannot be served: every search fails with
    ``backend_config`` (visible in outcomes; the SLO rules then roll a candidate back on errors)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> list[str]:
        raise BackendError("backend_config", self.reason)


class BackendRegistry:
    def __init__(self, default: SearchBackend) -> None:
        self.default = default
        self._http: dict[HttpBackendSpec, HttpBackend] = {}
        self._by_hash: dict[str, SearchBackend] = {}

    def for_config(self, config: ConfigRef) -> SearchBackend:
        backend = self._by_hash.get(config.content_hash)
        if backend is None:
            backend = self._resolve(config.snapshot.get("backend"), config.name)
            if len(self._by_hash) >= MAX_RESOLVED:
                self._by_hash.clear()
            self._by_hash[config.content_hash] = backend
        return backend

    def _resolve(self, raw: object, name: str) -> SearchBackend:
        if raw is None:
            return self.default
        try:
            if not isinstance(raw, Mapping):
                raise ConfigError(f"backend = {raw!r:.100}: expected a mapping with a type")
            if raw.get("type") == "bundled":
                return self.default
            spec = HttpBackendSpec.from_dict(raw)
        except ConfigError as exc:  # a verified snapshot never gets here; a hand-built ConfigRef might
            log.error("config %s: cannot serve its backend: %s", name, exc)
            return Unservable(str(exc))
        backend = self._http.get(spec)
        if backend is None:
            if len(self._http) >= MAX_HTTP_BACKENDS:
                reason = f"more than {MAX_HTTP_BACKENDS} distinct HTTP search services in one router"
                log.error("config %s: %s", name, reason)
                return Unservable(reason)
            backend = self._http[spec] = HttpBackend(spec)
        return backend

    async def close(self) -> None:
        for backend in self._http.values():
            try:
                await backend.close()
            except Exception as exc:  # closing must not stop the rest of the shutdown
                log.warning("closing the HTTP backend %s failed: %r", backend.spec.url, exc)
