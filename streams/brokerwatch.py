"""The worker's own view of the broker: one small metadata request a second, folded into outages.

Why a probe of its own and not the consumers' state: see :mod:`canary.core.outages`. The request asks for
the metadata of one topic the worker may read anyway (the control topic), so it costs the broker next to
nothing and needs no ACL beyond the worker's. A failed or unanswered probe (a stopped broker refuses the
connection; a hung one accepts it and never answers, hence the timeout) closes the client, so the next
probe starts from a fresh connection rather than a half-broken one. Two log lines per outage (when it has
lasted ``min_outage_ms``, and when it ends), never one per probe; aiokafka's own connection errors are
rate-limited by the logging set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient

from canary.core.models import iso_ms
from canary.core.outages import OutageLog
from canary.kafka.clients import Cluster, client_kwargs

log = logging.getLogger("canary.streams.broker")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BrokerWatch:
    def __init__(
        self, bootstrap: Cluster, topic: str, outages: OutageLog, interval_s: float = 1.0, timeout_s: float = 2.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.outages = outages
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.probes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def run(self) -> None:
        try:
            while True:
                sent = now_ms()
                ok = await self.probe()
                done = now_ms()
                change = self.outages.probe(ok, sent, done)
                current = self.outages.last
                if change == "began" and current is not None:
                    log.warning(
                        "broker unreachable since %s (%s): judgements of the windows over this outage and the "
                        "backlog drain after it carry a broker_outage note",
                        iso_ms(current.start_ms),
                        self.last_error,
                    )
                elif change == "ended" and current is not None:
                    log.warning(
                        "broker reachable again after %.1f s (%s – %s)",
                        current.duration_s or 0.0,
                        iso_ms(current.start_ms),
                        iso_ms(current.end_ms or done),
                    )
                await asyncio.sleep(max(0.05, self.interval_s - (done - sent) / 1000))
        finally:
            await self._close()

    async def probe(self) -> bool:
        """True when the broker answered a metadata request within the timeout."""
        self.probes += 1
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    **client_kwargs(self.bootstrap), request_timeout_ms=int(self.timeout_s * 1000)
                )
                self._admin = admin
                await asyncio.wait_for(admin.start(), self.timeout_s)
            await asyncio.wait_for(self._admin.describe_topics([self.topic]), self.timeout_s)
            self.last_error = None
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is "not reachable now"; the next probe starts afresh
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._close()
            return False

    async def _close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), self.timeout_s)
