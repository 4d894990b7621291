"""The search backend protocol: plug your own engine in by import path (``package.module:factory``).

That import path is the *operator's* choice (``canary router --backend``, or a factory passed to the API),
never a preset's or a control command's: a preset names a backend from an allow-list of types instead
(:mod:`router.backends.registry`)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from canary.errors import ConfigError


@runtime_checkable
class SearchBackend(Protocol):
    """Runs one search with a preset's parameters and returns ranked document ids — or a
    :class:`RankedResults` (a list of ids with ``metrics``: extra numbers the engine measured, e.g. its cost),
    which the router puts on the outcome for presets' custom metrics.

    A backend may also declare ``collections`` (the names it serves, see :func:`known_collections`): the
    in-process API then refuses any other name instead of searching something else; and ``max_concurrency``
    (an int): how many searches it runs at once with profit — a CPU-bound engine, its cores — so the router
    serves it in bounded lanes per arm and sheds what does not fit (router/admission.py); without it the
    router does not limit it (an HTTP service has its own pool and timeouts)."""

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]: ...


@runtime_checkable
class ExactSearchBackend(SearchBackend, Protocol):
    """A backend that can also answer a query *exactly* (brute force over everything it indexes), so the
    router can measure recall@10 on a sample of unlabeled requests (docs/contracts.md, "Recall without
    labels"). Optional: a backend without ``exact_search`` simply gets no sampled recall.

    The exact answer must not depend on the preset being judged (it takes no params): both arms are
    measured against the same truth. It runs off the hot path, at most a few at a time."""

    async def exact_search(self, query: str, collection: str, k: int) -> Sequence[str]: ...


def known_collections(backend: object) -> frozenset[str] | None:
    """The collections ``backend`` serves — its optional ``collections`` attribute — or None when it does not
    say (every name is passed on: an HTTP service, for one, answers for its own collections)."""
    names = getattr(backend, "collections", None)
    return None if names is None else frozenset(str(n) for n in names)


def require_collection(backend: object, collection: str, config_name: str) -> None:
    """ConfigError naming the collection and the known ones if ``backend`` says it does not serve it."""
    known = known_collections(backend)
    if known is not None and collection not in known:
        raise ConfigError(
            f"collection_name {collection!r}: not a collection of the search backend serving {config_name} "
            f"({type(backend).__name__} serves: {', '.join(sorted(known)) or 'none'})"
        )


def exact_searcher(backend: object) -> ExactSearchBackend | None:
    """``backend`` if it offers ``exact_search`` (a wrapper may offer it only when what it wraps does)."""
    if getattr(backend, "exact_search", None) is None:
        return None
    return backend if isinstance(backend, ExactSearchBackend) else None


BACKEND_ERROR_CODES: tuple[str, ...] = (
    "backend_error",
    "backend_http_4xx",
    "backend_http_5xx",
    "backend_bad_response",
    "backend_unavailable",
    "backend_config",
    "injected_fault",
)
"""The ``error`` codes a backend may give an outcome (docs/contracts.md); ``timeout`` is the router's own."""


class BackendError(Exception):
    """A failed search the router reports with ``error_code`` (one of :data:`BACKEND_ERROR_CODES`) instead
    of the generic ``backend_error``."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code if error_code in BACKEND_ERROR_CODES else "backend_error"


class RankedResults(list[str]):
    """Ranked ids plus the engine's own per-request numbers (``{"cost_units": 12.0}``)."""

    def __init__(self, ids: Sequence[str], metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(ids)
        self.metrics: dict[str, float] = dict(metrics or {})


def load_backend(import_path: str) -> SearchBackend:
    """Instantiate ``pkg.module:factory`` (a class or zero-argument callable returning a backend)."""
    module_name, _, attr = import_path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"backend = {import_path!r}: expected 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend = {import_path!r}: cannot import: {exc}") from exc
    backend = factory()
    if not isinstance(backend, SearchBackend):
        raise ConfigError(f"backend = {import_path!r}: {type(backend).__name__} has no async search()")
    return backend
