"""The dashboard's web application (aiohttp): the page, its assets, the live event stream, the actions.

Routes
  GET  /                          the page (panels pre-rendered; /static/dashboard.js keeps them live)
  GET  /events                    server-sent events: ``panels`` (id → HTML), ``windows``, ``moment``
  GET  /api/state                 the folded state as JSON (for scripts)
  GET  /deployments/{id}/report   the deployment's full report page (canary.reports.html), rendered now
  POST /api/actions/{action}      pause | resume | weight | promote | rollback — operator token required
  POST /api/replay                replay / backtest a span (read-only; one at a time)
  GET  /assets/report.css, /static/*   every asset is served here: the page works offline

Nothing is loaded from another origin, and the Content-Security-Policy says so. Every request must name
the dashboard's own address in its ``Host`` header (``canary.dashboard.hosts``: DNS rebinding), else 421;
request bodies are bounded (``MAX_BODY_BYTES``) and a bad one is answered 4xx with the reason, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp_sse import sse_response

from canary.config.yamlfile import parse_yaml_text
from canary.core import wire
from canary.core.models import parse_time
from canary.dashboard.auth import OperatorToken, bearer
from canary.dashboard.feed import AuditTail, Changes, DashboardState, now_ms, tail_topics
from canary.dashboard.hosts import AllowedHosts
from canary.dashboard.page import render_page
from canary.dashboard.views import deployment_panels, history_panel, meta, render_panels, routers_panel, timeline_panel
from canary.errors import CanaryError, ConfigError, DeploymentError, InvalidEvent, KafkaError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.reports.html import CSS as REPORT_CSS
from canary.reports.html import render_report
from canary.reports.model import build_report
from canary.security import ControlSecurity

log = logging.getLogger("canary.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
ACTIONS = ("pause", "resume", "weight", "promote", "rollback")
MAX_REPLAY_SPAN_MS = 6 * 3600 * 1000
# The largest body an action or a replay needs (a replay's rules YAML is the big one) with room to spare.
MAX_BODY_BYTES = 64 * 1024
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; frame-ancestors 'none'"

Event = tuple[str, str] | None  # (event name, JSON data); None ends the stream


@dataclass
class Hub:
    """The connected browsers: each has a bounded queue; a browser too slow to drain it is dropped (its
    EventSource reconnects and starts again from a full snapshot) rather than holding memory."""

    queues: set[asyncio.Queue[Event]] = field(default_factory=set)

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=256)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.queues.discard(queue)

    def publish(self, name: str, data: Any) -> None:
        text = json.dumps(data)
        for queue in list(self.queues):
            try:
                queue.put_nowait((name, text))
            except asyncio.QueueFull:
                self.queues.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def close(self) -> None:
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueEmpty):
                while queue.full():
                    queue.get_nowait()
            queue.put_nowait(None)
        self.queues.clear()


def _issuer() -> str:
    try:
        return f"dashboard:{getpass.getuser()}"
    except Exception:
        return "dashboard:unknown"


class Dashboard:
    """State, tailing tasks and request handlers of one dashboard process."""

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        security: ControlSecurity,
        token: OperatorToken,
        audit_log: Path | None,
        ack_timeout: float = 5.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.security = security
        self.token = token
        self.audit = AuditTail(audit_log) if audit_log is not None else None
        self.ack_timeout = ack_timeout
        self.state = DashboardState(security.verifier(topics.control))
        self.hub = Hub()
        self.panels: dict[str, str] = render_panels(self.state)
        self.feed_error: str | None = None
        self._replay_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.started_ms = now_ms()
        # Which Host headers are answered; set by serving() from the bind address. None answers none.
        self.hosts: AllowedHosts | None = None

    # -- live state -------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {**meta(self.state), "feed_error": self.feed_error, "server_ms": now_ms()}

    async def on_change(self, changes: Changes) -> None:
        updated: dict[str, str] = {}
        if changes.deployments or changes.control or changes.moments:
            updated.update(deployment_panels(self.state))
            updated["history"] = history_panel(self.state)
        if changes.control:
            updated["timeline"] = timeline_panel(self.state)
        if changes.routers or changes.control:
            updated["routers"] = routers_panel(self.state)
        self.panels.update(updated)
        if updated:
            self.hub.publish("panels", {"panels": updated, "meta": self._meta()})
        for record in changes.moments:
            cmd = record.verdict.command
            assert cmd is not None
            self.hub.publish(
                "moment",
                {
                    "command_id": cmd.command_id,
                    "type": cmd.type,
                    "deployment_id": cmd.deployment_id,
                    "reason": cmd.reason,
                    "appended_at_ms": record.appended_at_ms,
                    "sent_at_ms": now_ms(),
                },
            )
        if changes.windows:
            sent = now_ms()
            self.hub.publish("windows", {"windows": [w.to_dict() for w in changes.windows], "sent_at_ms": sent})

    async def _feed(self) -> None:
        delay = 1.0
        while True:
            try:
                await tail_topics(self.bootstrap, self.topics, self.state, self.on_change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka gone, a topic deleted…: keep serving the last view, marked stale
                self.feed_error = f"{type(exc).__name__}: {exc}"
                log.warning("dashboard: topic feed failed (%s); retrying in %.0f s", self.feed_error, delay)
                self.hub.publish("panels", {"panels": {}, "meta": self._meta()})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                # A fresh fold: the retry re-reads the history from the beginning.
                self.state = DashboardState(self.security.verifier(self.topics.control), audit=self.state.audit)
            else:  # pragma: no cover - tail_topics only returns by raising
                return

    async def _audit_loop(self) -> None:
        assert self.audit is not None
        while True:
            events = self.audit.read_new()
            if events:
                self.state.audit.extend(events)
                from canary.dashboard.views import audit_panel

                self.panels["audit"] = audit_panel(self.state)
                self.hub.publish("panels", {"panels": {"audit": self.panels["audit"]}, "meta": self._meta()})
            await asyncio.sleep(0.5)

    async def _router_clock(self) -> None:
        # Liveness is an age: re-render the routers panel even when no state record arrives.
        while True:
            await asyncio.sleep(2.0)
            if self.hub.queues and self.state.caught_up:
                self.panels["routers"] = routers_panel(self.state)
                self.hub.publish("panels", {"panels": {"routers": self.panels["routers"]}, "meta": self._meta()})

    async def start(self, _app: web.Application) -> None:
        self._tasks = [asyncio.create_task(self._feed(), name="dashboard-feed")]
        self._tasks.append(asyncio.create_task(self._router_clock(), name="dashboard-routers"))
        if self.audit is not None:
            self._tasks.append(asyncio.create_task(self._audit_loop(), name="dashboard-audit"))

    async def shutdown(self, _app: web.Application) -> None:
        self.hub.close()  # ends every event stream, so the server need not wait for them

    async def cleanup(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- pages ------------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        title = f"{self.bootstrap} · topics {self.topics.prefix or '(no prefix)'}"
        html = render_page(self.panels, self._meta(), title)
        return web.Response(
            text=html,
            content_type="text/html",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"},
        )

    async def report_css(self, request: web.Request) -> web.Response:
        return web.Response(text=REPORT_CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def report(self, request: web.Request) -> web.Response:
        deployment_id = request.match_info["deployment_id"]
        if deployment_id not in self.state.ledger.deployments:
            raise web.HTTPNotFound(text=f"no deployment {deployment_id!r} on the control topic")
        report = build_report(
            commands=self.state.accepted_commands(),
            command_times=self.state.accepted_command_times(),
            windows=self.state.deployment_windows(deployment_id),
            deployment_id=deployment_id,
            outages=self.state.outages,
        )
        return web.Response(
            text=render_report(report), content_type="text/html", headers={"Content-Security-Policy": REPORT_CSP}
        )

    async def api_state(self, request: web.Request) -> web.Response:
        routers = [s.to_dict() for s in sorted(self.state.routers.values(), key=lambda s: s.router_id)]
        timeline = [
            {
                "offset": r.offset,
                "appended_at_ms": r.appended_at_ms,
                "command_id": r.command_id,
                "type": r.verdict.command.type if r.verdict.command else None,
                "accepted": r.verdict.accepted,
                "reason": r.verdict.reason,
                "applied": r.applied,
                "note": r.note,
            }
            for r in self.state.control
        ]
        return web.json_response({"meta": self._meta(), "routers": routers, "control": timeline})

    async def events(self, request: web.Request) -> web.StreamResponse:
        queue = self.hub.subscribe()
        try:
            async with sse_response(request, ping_interval=15) as resp:
                await resp.send(json.dumps({"panels": self.panels, "meta": self._meta()}), event="panels")
                while resp.is_connected():
                    item = await queue.get()
                    if item is None:
                        break
                    name, data = item
                    await resp.send(data, event=name)
                return resp
        except ConnectionResetError:  # the browser went away mid-write: its stream simply ends
            return web.Response(status=204)
        finally:
            self.hub.unsubscribe(queue)

    # -- actions ----------------------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> None:
        """401 without credentials, 403 with wrong ones or from a foreign page; nothing is read or sent first."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise _json_error(web.HTTPForbidden, f"cross-origin request from {origin} refused")
        presented = bearer(request.headers.get("Authorization"))
        if presented is None:
            raise _json_error(
                web.HTTPUnauthorized,
                "operator token required: send 'Authorization: Bearer <token>' (the token file is named at start)",
                headers={"WWW-Authenticate": 'Bearer realm="canary-dashboard"'},
            )
        if not self.token.matches(presented):
            raise _json_error(web.HTTPForbidden, "operator token does not match")

    async def action(self, request: web.Request) -> web.Response:
        self._authorize(request)
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise _json_error(web.HTTPNotFound, f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        body = await _json_body(request)
        deployment_id = body.get("deployment_id")
        if not isinstance(deployment_id, str) or not deployment_id:
            raise _json_error(web.HTTPBadRequest, "deployment_id: required (the deployment the page shows)")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _json_error(web.HTTPBadRequest, "reason: expected a string")
        from canary.ops.commands import simple_command, stop_canary

        issuer = _issuer()
        common: dict[str, Any] = {
            "security": self.security,
            "issued_by": issuer,
            "deployment_id": deployment_id,
            "reason": reason or None,
        }
        try:
            if action in ("promote", "rollback"):
                ack = await stop_canary(
                    self.bootstrap, self.topics, promote=action == "promote", timeout=self.ack_timeout, **common
                )
            elif action == "weight":
                weight = body.get("weight")
                if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
                    raise _json_error(web.HTTPBadRequest, f"weight: {weight!r} must be a number in (0, 1]")
                ack = await simple_command(
                    self.bootstrap, self.topics, "set_weight", weight=float(weight), timeout=self.ack_timeout, **common
                )
            else:
                ack = await simple_command(
                    self.bootstrap,
                    self.topics,
                    "pause" if action == "pause" else "resume",
                    timeout=self.ack_timeout,
                    **common,
                )
        except DeploymentError as exc:
            raise _json_error(web.HTTPConflict, str(exc)) from None
        except KafkaError as exc:
            raise _json_error(web.HTTPServiceUnavailable, str(exc)) from None
        except ConfigError as exc:  # e.g. no operator key on this host: nothing could be signed
            raise _json_error(web.HTTPInternalServerError, str(exc)) from None
        missing = sorted(set(ack.waited_for) - set(ack.acked_by))
        log.warning("dashboard: %s %s issued by %s (%s)", action, deployment_id, issuer, ack.command.command_id)
        return web.json_response({**ack.to_dict(), "ok": not missing and ack.rejected is None, "unacked": missing})

    async def replay(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            from_ms, to_ms = _time_field(body, "from"), _time_field(body, "to")
            if to_ms <= from_ms:
                raise ConfigError(f"to must be after from (got from={from_ms} to={to_ms})")
            if to_ms - from_ms > MAX_REPLAY_SPAN_MS:
                raise ConfigError("span longer than 6 hours: use 'canary replay' for long spans")
            rules = _rules_field(body)
            deployment_id = body.get("deployment_id") or None
            if deployment_id is not None and not isinstance(deployment_id, str):
                raise ConfigError("deployment_id: expected a string")
        except ConfigError as exc:
            raise _json_error(web.HTTPBadRequest, str(exc)) from None
        if self._replay_lock.locked():
            raise _json_error(web.HTTPTooManyRequests, "a replay is already running; try again when it is done")
        async with self._replay_lock:
            from canary.pipeline.settings import PipelineSettings
            from canary.replay.html import render_replay_html
            from canary.replay.postmortem import run_replay
            from canary.replay.reader import read_span

            started = time.perf_counter()
            try:
                data = await read_span(
                    self.bootstrap,
                    self.topics,
                    from_ms,
                    to_ms,
                    PipelineSettings(),
                    verifier=self.security.verifier(self.topics.control),  # as the live fold verifies
                )
                report = await asyncio.to_thread(
                    run_replay,
                    data,
                    deployment_id=deployment_id,
                    rules_override=rules,
                    rules_label="dashboard rules" if rules else None,
                )
            except KafkaError as exc:
                raise _json_error(web.HTTPServiceUnavailable, str(exc)) from None
            except CanaryError as exc:
                raise _json_error(web.HTTPBadRequest, str(exc)) from None
            return web.json_response(
                {
                    "summary": report.get("summary", []),
                    "html": render_replay_html(report),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )


def _json_error(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json", headers=headers)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 4xx naming what is wrong with it (never a 500)."""
    if request.content_type != "application/json":
        raise _json_error(web.HTTPUnsupportedMediaType, "send the body as application/json")
    try:
        raw = await request.read()  # bounded by the application's client_max_size
    except web.HTTPRequestEntityTooLarge:
        message = f"body: larger than {MAX_BODY_BYTES} bytes (an action needs a few hundred)"
        raise web.HTTPRequestEntityTooLarge(
            MAX_BODY_BYTES, text=json.dumps({"error": message}), content_type="application/json"
        ) from None
    try:
        body = wire.decode_object(raw, wire.HTTP_BODY)
    except wire.Rejected as exc:  # bounded: size, depth and type, with the reason
        raise _json_error(web.HTTPBadRequest, f"body: {exc.code}: {exc.detail}") from None
    return body


def _time_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: required (ISO 8601 time or epoch milliseconds)")
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        return parse_time(text)
    except InvalidEvent as exc:
        raise ConfigError(f"{name} {text!r}: expected ISO 8601 time or epoch milliseconds ({exc})") from None


def _rules_field(body: dict[str, Any]) -> Any:
    text = body.get("rules")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise ConfigError("rules: expected YAML text")
    from canary.config.rules import parse_policy

    data, error = parse_yaml_text(text, "rules")  # bounded: size, depth, no aliases
    if error is not None:
        raise ConfigError(str(error))
    return parse_policy(data, "rules")


def _host_check(dashboard: Dashboard) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def host_check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host = request.headers.get("Host")
        if dashboard.hosts is None or not dashboard.hosts.allows(host):
            expected = f"{dashboard.hosts.bind}:{dashboard.hosts.port}" if dashboard.hosts else "its address"
            raise web.HTTPMisdirectedRequest(
                text=json.dumps(
                    {
                        "error": f"Host {host!r} is not this dashboard's address (reach it as {expected}, or "
                        "allow the name with --allowed-host): refused against DNS rebinding"
                    }
                ),
                content_type="application/json",
            )
        return await handler(request)

    return host_check


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def create_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(middlewares=[_host_check(dashboard), _security_headers], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/events", dashboard.events)
    app.router.add_get("/api/state", dashboard.api_state)
    app.router.add_get("/deployments/{deployment_id}/report", dashboard.report)
    app.router.add_post("/api/actions/{action}", dashboard.action)
    app.router.add_post("/api/replay", dashboard.replay)
    app.router.add_get("/assets/report.css", dashboard.report_css)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.on_startup.append(dashboard.start)
    app.on_shutdown.append(dashboard.shutdown)
    app.on_cleanup.append(dashboard.cleanup)
    return app


@contextlib.asynccontextmanager
async def serving(
    dashboard: Dashboard, host: str, port: int, allowed_hosts: Iterable[str] = ()
) -> AsyncIterator[web.AppRunner]:
    """The app listening on ``host:port`` until the block ends; then a clean shutdown. Requests must name
    ``host`` (and the port) in their Host header, or one of ``allowed_hosts`` (canary.dashboard.hosts)."""
    dashboard.hosts = AllowedHosts.of(host, port, allowed_hosts)
    runner = web.AppRunner(create_app(dashboard), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        for address in runner.addresses:  # the real port when port 0 picked a free one
            if isinstance(address, tuple) and len(address) >= 2:
                dashboard.hosts.port = int(address[1])
                break
        yield runner
    finally:
        await runner.cleanup()
