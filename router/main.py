"""Run the router as a long-lived service (``canary router``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from canary.core.deployment import ConfigRef
from canary.errors import CanaryError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.security import CommandVerifier
from router.backends.base import SearchBackend
from router.service import RouterService

log = logging.getLogger("canary.router")


class RouterFailed(CanaryError):
    """An essential router loop died; the process exits non-zero."""


async def serve(
    bootstrap: Cluster,
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
        last_report = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                failed = router.failure()
                if failed is not None:
                    # Supervised: a half-alive router (no control loop, no watermarks) is worse than none;
                    # exit non-zero with the cause so the orchestrator restarts it.
                    log.critical("router %s: an essential loop died: %r; exiting", router.router_id, failed)
                    raise RouterFailed(f"router {router.router_id}: essential loop died: {failed!r}") from failed
                if time.monotonic() - last_report < report_every:
                    continue
                last_report = time.monotonic()
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
