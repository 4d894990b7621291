"""Back-off for aiokafka's metadata refresh while the cluster is away.

aiokafka refreshes metadata on demand (``force_metadata_update``) whenever a producer has a batch for a
partition without a known leader, or a consumer fetches one — and with the broker down a refresh fails at
once (connection refused), so the waiter wakes and asks again: measured on a router during a 60 s broker
stop, ~5,400 refresh attempts per second per client and ~85 % of a core, every attempt logging two lines.
The Java client backs off between failed attempts (``reconnect.backoff.ms`` doubling up to
``reconnect.backoff.max.ms``); aiokafka 0.14 has no such setting, so :func:`calm` adds that back-off to one
client: a failed refresh returns only after the back-off, and a successful one resets it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from canary.backoff import Backoff

RECONNECT_BACKOFF_S: Final = 0.1  # the Java client's reconnect.backoff.ms default
RECONNECT_BACKOFF_MAX_S: Final = 1.0  # its reconnect.backoff.max.ms default


def _client_of(owner: Any) -> Any:
    """The AIOKafkaClient of a producer, consumer or admin client (or the client itself)."""
    for attr in ("client", "_client"):
        client = getattr(owner, attr, None)
        if client is not None and hasattr(client, "_metadata_update"):
            return client
    return owner


def calm(owner: Any, base_s: float = RECONNECT_BACKOFF_S, max_s: float = RECONNECT_BACKOFF_MAX_S) -> Any:
    """Give ``owner``'s client an exponential back-off between failed metadata refreshes; returns ``owner``.

    Wraps the client's private ``_metadata_update`` on this instance only (the one place every refresh
    goes through); applying it twice is harmless."""
    client = _client_of(owner)
    refresh: Callable[..., Awaitable[bool]] | None = getattr(client, "_metadata_update", None)
    if refresh is None or getattr(refresh, "__canary_calm__", False):
        return owner
    pace = Backoff(base_s, max_s)

    async def refresh_with_backoff(*args: Any, **kwargs: Any) -> bool:
        updated = await refresh(*args, **kwargs)
        if updated:
            pace.reset()
        else:
            await pace.wait()
        return updated

    refresh_with_backoff.__canary_calm__ = True  # type: ignore[attr-defined]
    client._metadata_update = refresh_with_backoff
    return owner
