"""Run the router as a long-lived service (``canary router``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping

from canary.core.deployment import ConfigRef
from canary.errors import CanaryError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.observability.logs import set_deployment_provider
from canary.observability.server import MetricsEndpoint, MetricsServer
from canary.pipeline.native import DEADLINE
from canary.runtime import StopDeadline
from canary.security import CommandVerifier
from router.backends.base import SearchBackend
from router.service import DEFAULT_DIFF_SAMPLE_RATE, DEFAULT_RECALL_SAMPLE_RATE, RouterService

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
    metrics: MetricsEndpoint | None = None,
    recall_sample_rate: float | Mapping[str, float] = DEFAULT_RECALL_SAMPLE_RATE,
    diff_sample_rate: float = DEFAULT_DIFF_SAMPLE_RATE,
) -> None:
    stop = asyncio.Event()
    service = RouterService(
        bootstrap,
        topics,
        backend,
        last_good,
        router_id=router_id,
        reply=reply,
        verifier=verifier,
        recall_sample_rate=recall_sample_rate,
        diff_sample_rate=diff_sample_rate,
    )
    deadline = StopDeadline(f"router {service.router_id}", native=DEADLINE)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A stop with the broker down must still end promptly: armed by the signal itself, before the loop runs.
    deadline.arm_on((signal.SIGINT, signal.SIGTERM))

    def deployment() -> str | None:
        dep = service.ledger.current or service.ledger.latest
        return dep.deployment_id if dep is not None else None

    set_deployment_provider(deployment)
    # Up before the service connects, so /readyz answers "not ready" while it starts.
    server = MetricsServer(metrics or MetricsEndpoint(), service.metrics.registry, service.readiness)
    await server.start()
    try:
        await _serve(service, stop, report_every, deadline)
    finally:
        # The deadline stays armed until the process is gone: what runs after a clean stop (asyncio.run's
        # task and executor shutdown, with the broker away) took 2.4 s once and broke the 10 s bound (CI).
        await server.stop()


async def _serve(service: RouterService, stop: asyncio.Event, report_every: float, deadline: StopDeadline) -> None:
    topics, last_good = service.topics, service.ledger.last_good
    assert last_good is not None
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
                    log.critical("router %s failed: %r; exiting", router.router_id, failed)
                    deadline.arm()  # the stop on the way out is bounded too
                    raise RouterFailed(f"router {router.router_id} failed: {failed!r}") from failed
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
