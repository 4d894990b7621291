"""Exponential back-off: the one pacing of canary's retry loops — aiokafka metadata refreshes while the
broker is away (canary.kafka.backoff), producer replacement (canary.kafka.producer), the audit log's disk
retries (streams.audit) and webhook deliveries (canary.alerts.dispatch).

Why not tenacity: each of those loops interleaves its own bookkeeping with the waits (an audit line per
delivery attempt, give-up rules by error class, logs bounded however long an outage lasts), which tenacity
would turn into callbacks around a loop it owns. The pacing is what they share, and it is this class.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays ``base_s``, 2·``base_s``, 4·``base_s`` … capped at ``max_s``; :meth:`reset` after a success."""

    base_s: float
    max_s: float
    failures: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.base_s <= self.max_s:
            raise ValueError(f"need 0 < base_s <= max_s, got base_s={self.base_s} max_s={self.max_s}")

    def delay(self) -> float:
        """The wait after one more failure (and count it)."""
        self.failures += 1
        return min(self.max_s, self.base_s * 2.0 ** min(self.failures - 1, 62))

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())
