"""``/metrics``, ``/healthz`` and ``/readyz`` of a service, on one small HTTP server.

Served by aiohttp inside the service's own event loop rather than by prometheus-client's threaded
``start_http_server``: aiohttp is already installed (Faust depends on it), it serves all three paths
(prometheus-client's server has no readiness route), and an answer from the loop itself is what makes
``/healthz`` mean something — a wedged event loop stops answering instead of reporting "live" from a
side thread. Bound to loopback unless told otherwise: the endpoints are unauthenticated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from canary.errors import ConfigError

log = logging.getLogger("canary.observability")

DEFAULT_METRICS_HOST = "127.0.0.1"

# name -> (passed, detail); ready when every check passes.
ReadinessChecks = Callable[[], Mapping[str, tuple[bool, str]]]


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where to serve; ``port`` 0 means no server at all."""

    host: str = DEFAULT_METRICS_HOST
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--metrics-port {self.port}: must be 0 (off) or a port number up to 65535")
        if not self.host:
            raise ConfigError("--metrics-host: must not be empty")

    @property
    def enabled(self) -> bool:
        return self.port != 0


class MetricsServer:
    def __init__(self, endpoint: MetricsEndpoint, registry: CollectorRegistry, readiness: ReadinessChecks) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.readiness = readiness
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def _readyz(self, _: web.Request) -> web.Response:
        try:
            checks = dict(self.readiness())
        except Exception as exc:  # a readiness probe must answer, not 500 with a traceback
            checks = {"readiness": (False, f"{type(exc).__name__}: {exc}")}
        ready = all(ok for ok, _ in checks.values())
        body = {
            "ready": ready,
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        }
        return web.json_response(body, status=200 if ready else 503)

    async def start(self) -> None:
        if not self.endpoint.enabled:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.endpoint.host, self.endpoint.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"--metrics-port {self.endpoint.port}: cannot listen on {self.endpoint.host}:{self.endpoint.port} "
                f"({exc.strerror or exc})"
            ) from exc
        self._runner = runner
        log.warning(
            "metrics on http://%s:%d/metrics (health: /healthz, readiness: /readyz)",
            self.endpoint.host,
            self.endpoint.port,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
