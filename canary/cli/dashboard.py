"""``canary dashboard``: serve the live web dashboard (canary.dashboard) until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from canary.cli.output import emit as _emit
from canary.errors import ConfigError
from canary.kafka.clients import Cluster
from canary.settings import Settings

log = logging.getLogger("canary.dashboard")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(args: argparse.Namespace, settings: Settings, bootstrap: Cluster) -> None:
    from canary.dashboard.app import Dashboard, serving
    from canary.dashboard.auth import load_or_create_token
    from canary.kafka.topics import Topics
    from canary.security import ControlSecurity

    token_path = Path(args.token_file) if args.token_file else settings.dashboard_token_path
    token_path.parent.mkdir(parents=True, exist_ok=True)
    token = load_or_create_token(token_path)
    audit = Path(args.audit_log) if args.audit_log else settings.reports_dir / "audit.log"
    security = ControlSecurity.operator(settings)
    dashboard = Dashboard(bootstrap, Topics(settings.topic_prefix), security, token, audit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(dashboard, args.host, args.port, args.allowed_host or ()):
        assert dashboard.hosts is not None
        port = dashboard.hosts.port  # the real port when --port 0 picked a free one
        host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{host}:{port}/"
        payload: dict[str, Any] = {
            "url": url,
            "host": args.host,
            "port": port,
            "bootstrap": str(bootstrap),
            "topic_prefix": settings.topic_prefix,
            "token_file": str(token.path),
            "token_created": token.created,
            "audit_log": str(audit),
        }
        human = f"canary dashboard on {url} (Kafka {bootstrap}; Ctrl-C to stop)\n"
        if token.created:
            human += f"operator token (shown once; also in {token.path}, mode 0600): {token.value}\n"
        else:
            human += f"operator token: in {token.path}\n"
        human += "read-only for everyone else; actions need 'Authorization: Bearer <token>'"
        if token.created and args.json:
            # --json output is for scripts and may be logged: the token itself goes to the terminal only,
            # before the document, so whoever has read the document has been shown the token.
            print(f"operator token (shown once; also in {token.path}): {token.value}", file=sys.stderr, flush=True)
        _emit(args, payload, human)
        sys.stdout.flush()
        await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 0 and 65535")
    from canary.dashboard.hosts import AllowedHosts

    AllowedHosts.of(args.host, args.port, args.allowed_host or ())  # a malformed --allowed-host fails here
    if not _is_loopback(args.host):
        log.warning(
            "dashboard: listening on %s, reachable from other machines (plain HTTP: the operator token "
            "crosses the network unencrypted; put TLS in front of it)",
            args.host,
        )
    bootstrap = require_kafka(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, settings, bootstrap))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the live web dashboard: charts, verdicts, routers, commands, audit; operator actions",
        description=(
            "Tails the control, state, window and verdict topics and the audit log, and serves a page that "
            "updates live (server-sent events): per-arm p95, recall@10 and error-rate charts with the SLO "
            "thresholds (the report's own renderer), the verdict strip and evidence, streaks, the weight, the "
            "routers, the command timeline, the audit feed, past deployments with their reports and a replay "
            "form. Everyone reaching the address gets the read-only view; pause, resume, weight, promote and "
            "rollback need the operator token (generated on first start into --token-file, mode 0600, and "
            "printed once) and are sent as commands signed with the operator key, like the CLI's. Every asset "
            "is served by the dashboard itself (works offline). Stops cleanly on Ctrl-C / SIGTERM."
        ),
    )
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default 127.0.0.1, this machine only; anything else is reachable from the network)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME[:PORT]",
        help="another Host the page may be reached by (e.g. a TLS proxy's name; repeatable). Requests naming any "
        "other host than the bind address (and localhost on a loopback bind) get 421: DNS rebinding",
    )
    p.add_argument("--token-file", help="operator token file (default ~/.cache/canary/dashboard.token)")
    p.add_argument("--audit-log", help="the worker's audit log to follow (default reports/canary/audit.log)")
    p.add_argument("--json", action="store_true", help="print the listening address as JSON once it listens")
    p.set_defaults(handler=cmd_dashboard)
