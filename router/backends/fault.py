"""FAULT INJECTION — wraps a real backend to make a config misbehave on purpose.

Used by tests, benchmarks and the demo the way Flagger's end-to-end tests use podinfo's delay endpoint:
the router, Kafka, windows and SLO agent all run for real; only the backend's answer is made slow,
failing or degraded for the configs named here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.backends.base import BackendError, SearchBackend, exact_searcher, known_collections


class InjectedFault(BackendError):
    """The error a fault-injected search raises (appears as error='injected_fault' in outcomes)."""

    def __init__(self, message: str) -> None:
        super().__init__("injected_fault", message)


@dataclass(frozen=True, slots=True)
class Fault:
    added_latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    keep_fraction: float = 1.0  # <1 drops that share of results, best first
    # Reverse the top 10: the same documents (recall@10 unchanged), another order — visible only by RBO.
    reorder_top10: bool = False


class FaultInjectingBackend:
    """Applies a :class:`Fault` to searches whose preset name is in ``faults``; others pass through."""

    def __init__(self, inner: SearchBackend, faults: Mapping[str, Fault], seed: int = 7) -> None:
        self.inner = inner
        self.faults = dict(faults)
        self._rng = random.Random(seed)

    @property
    def exact_search(self) -> Callable[[str, str, int], Awaitable[Sequence[str]]] | None:
        """The wrapped backend's exact search, unfaulted (the truth does not degrade with the candidate), or
        None when it has none."""
        inner = exact_searcher(self.inner)
        return inner.exact_search if inner is not None else None

    @property
    def collections(self) -> frozenset[str] | None:
        """The wrapped backend's collections (None when it does not say)."""
        return known_collections(self.inner)

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        name = str(params.get("metadata", {}).get("name", ""))
        fault = self.faults.get(name)
        if fault is None:
            return await self.inner.search(query, collection, params)
        delay = fault.added_latency_ms + self._rng.uniform(-1, 1) * fault.latency_jitter_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if fault.error_rate and self._rng.random() < fault.error_rate:
            raise InjectedFault(f"injected fault for {name}")
        ranked = list(await self.inner.search(query, collection, params))
        if fault.keep_fraction < 1.0:
            keep = round(len(ranked) * fault.keep_fraction)
            # Lose the best results, as a too-narrow index or a bad fusion weight would.
            ranked = ranked[len(ranked) - keep :]
        if fault.reorder_top10:
            ranked = ranked[:10][::-1] + ranked[10:]
        return ranked
