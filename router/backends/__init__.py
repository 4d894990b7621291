"""Search backends: the router runs searches through the :class:`SearchBackend` protocol."""

from router.backends.base import SearchBackend, load_backend

__all__ = ["SearchBackend", "load_backend"]
