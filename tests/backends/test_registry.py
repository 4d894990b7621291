"""Which backend serves a configuration (router.backends.registry): an allow-list, never an import."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from canary.core.deployment import ConfigRef
from router.backends.base import BackendError
from router.backends.http import HttpBackend
from router.backends.memory import KeywordBackend, numbered_corpus
from router.backends.registry import MAX_HTTP_BACKENDS, BackendRegistry, Unservable


def ref(backend: Any, name: str = "cfg") -> ConfigRef:
    return ConfigRef.from_snapshot({"metadata": {"name": name, "version": "1.0.0"}, "backend": backend})


def test_bundled_http_and_unservable_sections() -> None:
    default = KeywordBackend(numbered_corpus(queries=2))
    registry = BackendRegistry(default)
    assert registry.for_config(ref(None)) is default
    assert registry.for_config(ref({"type": "bundled"})) is default
    a = registry.for_config(ref({"type": "http", "url": "http://127.0.0.1:9/s"}, "a"))
    b = registry.for_config(ref({"type": "http", "url": "http://127.0.0.1:9/s"}, "b"))
    assert isinstance(a, HttpBackend) and a is b  # one pool per distinct service
    for bad in ("os:system", {"type": "python", "factory": "os:system"}, {"type": "http", "url": "file:///x"}):
        backend = registry.for_config(ref(bad, "bad"))
        assert isinstance(backend, Unservable)
        with pytest.raises(BackendError) as info:
            asyncio.run(backend.search("q", "c", {}))
        assert info.value.error_code == "backend_config"


def test_at_most_16_services_and_close() -> None:
    registry = BackendRegistry(KeywordBackend({}))
    backends = [
        registry.for_config(ref({"type": "http", "url": f"http://127.0.0.1:{9000 + i}/s"}, f"c{i}"))
        for i in range(MAX_HTTP_BACKENDS + 1)
    ]
    assert all(isinstance(b, HttpBackend) for b in backends[:-1]) and isinstance(backends[-1], Unservable)
    asyncio.run(registry.close())
