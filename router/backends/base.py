"""The search backend protocol: plug your own engine in by import path (``package.module:factory``)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from canary.errors import ConfigError


@runtime_checkable
class SearchBackend(Protocol):
    """Runs one search with a preset's parameters and returns ranked document ids — or a
    :class:`RankedResults` (a list of ids with ``metrics``: extra numbers the engine measured, e.g. its cost),
    which the router puts on the outcome for presets' custom metrics."""

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]: ...


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
