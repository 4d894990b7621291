"""Run the router as a long-lived service (``canary router``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from canary.core.deployment import ConfigRef
from canary.kafka.topics import Topics
from canary.security import CommandVerifier
from router.backends.base import SearchBackend
from router.service import RouterService

log = logging.getLogger("canary.router")


async def serve(
    bootstrap: str,
    topics: Topics,
    backend: SearchBackend,
    last_good: ConfigRef,
    router_id: str | None = None,
    report_every: float = 10.0,
    reply: bool = False,
    verifier: CommandVerifier | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = RouterService(bootstrap, topics, backend, last_good, router_id=router_id, reply=reply, verifier=verifier)
    async with service as router:
        log.warning("router %s serving %s (last_good=%s)", router.router_id, topics.search_requests, last_good.name)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=report_every)
            except TimeoutError:
                s = router.stats
                log.warning(
                    "router %s: %d requests (last_good %d, candidate %d), %d errors, %d invalid",
                    router.router_id,
                    s.requests,
                    s.by_arm["last_good"],
                    s.by_arm["candidate"],
                    s.errors,
                    s.invalid_requests,
                )
    log.warning("router stopped cleanly")
