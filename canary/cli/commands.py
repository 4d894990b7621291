"""Service commands registered onto the main parser: the worker, the router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary.cli.output import safe_name
from canary.errors import ConfigError
from canary.kafka.clients import KafkaConnection
from canary.pipeline.settings import DEFAULTS
from canary.settings import Settings

if TYPE_CHECKING:
    from canary.kafka.acls import Role


def _bootstrap_for_service(settings: Settings, role: Role) -> KafkaConnection:
    """Services follow the one rule: KAFKA_BOOTSTRAP_SERVERS, else the local broker — which a service never
    starts (a JVM is a side effect a service must not have, and it would outlive the service): it says how
    to start one ('canary kafka start') instead.

    The topics the service uses are verified; they are created only where ``settings.services_create_topics``
    (by default an unauthenticated cluster): on a secured one that is the admin's 'canary kafka topics'."""
    from canary.kafka.acls import topics_of
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics, ensure_topics

    log = logging.getLogger("canary")
    conn = require_kafka(settings)
    topics = Topics(settings.topic_prefix)
    if settings.services_create_topics:
        ensure_topics(conn, topics, create=True, replication_factor=settings.replication_factor)
    else:
        wanted = set(topics_of(topics, role))
        ensure_topics(conn, [s for s in topics.specs() if s.name in wanted], create=False)
        log.warning("%s: verified its %d topics on %s (services do not create topics here)", role, len(wanted), conn)
    return conn


def _security(args: argparse.Namespace, settings: Settings, role: str) -> Any:
    from canary.security import ControlSecurity

    if getattr(args, "insecure", False):
        settings = settings.with_overrides(insecure_control=True)
    return ControlSecurity.worker(settings) if role == "worker" else ControlSecurity.operator(settings)


def _log_format(args: argparse.Namespace, settings: Settings) -> Any:
    from canary.observability.logs import parse_log_format

    if args.log_format:
        return parse_log_format(args.log_format, "--log-format")
    return parse_log_format(settings.log_format, "CANARY_LOG_FORMAT")


def _metrics_endpoint(args: argparse.Namespace) -> Any:
    from canary.observability.server import MetricsEndpoint

    return MetricsEndpoint(host=args.metrics_host, port=args.metrics_port)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.topics import Topics
    from canary.observability.logs import configure_logging
    from streams.worker import run_worker

    log_format = _log_format(args, settings)
    metrics = _metrics_endpoint(args)
    configure_logging(log_format)  # until Faust takes over with the same configuration
    security = _security(args, settings, "worker")
    security.signer(
        Topics(settings.topic_prefix).control
    )  # fail before Kafka and Faust start if the worker key is missing (exit 2, says how)
    bootstrap = _bootstrap_for_service(settings, "worker")
    from canary.kafka.topics import cluster_replication_factor

    audit = Path(args.audit_log) if args.audit_log else settings.reports_dir / "audit.log"
    data_dir = Path(args.data_dir) if args.data_dir else settings.env_home / "worker-data"
    alerts: tuple[Any, ...] = ()
    if settings.environment is not None:
        from canary.config.environments import load_environment

        alerts = load_environment(settings.environments_dir, settings.environment).alerts
        for target in alerts:
            if target.secret_env and target.secret_env not in settings.alert_secrets:
                logging.getLogger("canary.alerts").warning(
                    "alert webhook %s: %s is not set; its alerts go out unsigned", target.url, target.secret_env
                )
    run_worker(
        bootstrap,
        Topics(settings.topic_prefix),
        audit_log=audit,
        data_dir=data_dir,
        grace_ms=args.grace_ms,
        window_ms=args.window_ms,
        instance_id=args.instance_id,
        security=security,
        environment=settings.environment,
        alerts=alerts,
        alert_secrets=settings.alert_secrets,
        prometheus_url=settings.prometheus_url,
        replication_factor=cluster_replication_factor(bootstrap, settings.replication_factor),
        metrics=metrics,
        log_format=log_format,
        native=settings.native,
    )
    return 0


def parse_fault(spec: str) -> tuple[str, Any]:
    """``NAME:latency_ms=1500,jitter_ms=100,error_rate=0.1,keep=0.3,reorder=1`` → (preset name, Fault)."""
    from router.backends.fault import Fault

    name, _, params = spec.partition(":")
    if not name:
        raise ConfigError(f"--inject-fault {spec!r}: expected NAME:key=value,…")
    fields = {"latency_ms": "added_latency_ms", "jitter_ms": "latency_jitter_ms", "error_rate": "error_rate"}
    fields["keep"] = "keep_fraction"
    fields["reorder"] = "reorder_top10"  # 1: the top 10 reversed (the same documents, another order)
    values: dict[str, Any] = {}
    for part in filter(None, params.split(",")):
        key, _, raw = part.partition("=")
        if key not in fields:
            raise ConfigError(f"--inject-fault {spec!r}: unknown key {key!r} (known: {', '.join(fields)})")
        try:
            values[fields[key]] = float(raw) if key != "reorder" else bool(float(raw))
        except ValueError:
            raise ConfigError(f"--inject-fault {spec!r}: {key} = {raw!r} is not a number") from None
    return name, Fault(**values)


def stable_router_id(instance: str) -> str:
    """``router-<host>-<instance>``, squeezed into the safe name set (canary.core.models.SAFE_NAME)."""
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-._") or "host"
    inst = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(instance)) or "0"
    return f"router-{host}-{inst}"[:128]


def cmd_router(args: argparse.Namespace, settings: Settings) -> int:
    from canary.config import PresetStore
    from canary.core.deployment import ConfigRef
    from canary.kafka.topics import Topics
    from canary.observability.logs import configure_logging
    from router.backends.base import load_backend
    from router.backends.fault import FaultInjectingBackend
    from router.backends.hybrid import HybridBackend, bundled_corpus
    from router.main import serve

    configure_logging(_log_format(args, settings))
    metrics = _metrics_endpoint(args)
    preset = PresetStore(settings.presets_dir).get(args.last_good)
    backend = (
        load_backend(args.backend)
        if args.backend
        else HybridBackend(
            bundled_corpus(settings.corpus),
            rerank=args.rerank or settings.rerank,
            max_concurrency=args.search_concurrency,
        )
    )
    if args.inject_fault:
        backend = FaultInjectingBackend(backend, dict(parse_fault(f) for f in args.inject_fault))
        logging.getLogger("canary").warning("FAULT INJECTION active: %s", ", ".join(args.inject_fault))
    security = _security(args, settings, "operator")
    bootstrap = _bootstrap_for_service(settings, "router")
    last_good = ConfigRef.from_snapshot(preset.to_dict(), preset.content_hash)
    asyncio.run(
        serve(
            bootstrap,
            Topics(settings.topic_prefix),
            backend,
            last_good,
            router_id=args.router_id or stable_router_id(args.instance),
            reply=args.reply,
            verifier=security.verifier(Topics(settings.topic_prefix).control),
            metrics=metrics,
            recall_sample_rate=settings.recall_sample_rates,
            diff_sample_rate=settings.diff_sample_rate,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from devtools.demo import DemoConfig, run_demo

    output = Path(args.output) if args.output else settings.demo_reports_dir
    cfg = DemoConfig(qps=args.qps, weight=args.weight, rerank=args.rerank)
    if args.port:
        settings = settings.with_overrides(local_port=args.port)
    return run_demo(settings, output, cfg, secure=args.secure)


_INSECURE_HELP = (
    "INSECURE: apply control commands without verifying their signatures (local experiments only; "
    "same as CANARY_INSECURE_CONTROL=1; logged loudly)"
)


def _service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics, /healthz (live) and /readyz (ready: connected, assigned, control "
        "view fresh) on this port (default 0 = off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics server binds to (default 127.0.0.1: the endpoints are unauthenticated)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or one JSON object per line with ts, level, logger, message, deployment_id "
        "(default $CANARY_LOG_FORMAT or text)",
    )


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="one-command demo: a bad candidate is rolled back automatically, a good one promoted",
        description=(
            "Uses KAFKA_BOOTSTRAP_SERVERS or starts the local broker, creates topics (fresh prefix), starts the "
            "worker and a router, generates load, runs a failing canary (rolled back by the SLO agent) and a "
            "healthy one (walked up its rollout plan and promoted by the SLO agent), writes the reports "
            "(canary_result.json, metrics.json, audit.log, report.html) into a directory of its own and stops "
            "everything it started. It never touches reports/canary/audit.log or the live reports."
        ),
    )
    demo.add_argument(
        "--output",
        help="the demo's own report directory (default reports/canary/demo; a directory holding report files "
        "the demo did not write is refused)",
    )
    demo.add_argument("--qps", type=float, default=45.0, help="load in requests per second (45)")
    demo.add_argument(
        "--weight",
        type=float,
        default=0.10,
        help="the failing candidate's traffic share (0.10; the healthy one follows its rollout plan's steps)",
    )
    demo.add_argument(
        "--rerank",
        choices=("model", "modeled"),
        default="model",
        help="the router's model: model (default) runs all-MiniLM-L6-v2 for every query (~12 ms of CPU each on"
        " the Cranfield collection); modeled waits that cost instead of spending it",
    )
    demo.add_argument(
        "--secure",
        action="store_true",
        help="run on the secure local broker (SASL/SCRAM + least-privilege ACLs; started like "
        "'canary kafka start --secure' if not running): each service runs as its own principal",
    )
    demo.add_argument("--port", type=int, help="local broker port (default 19092 or CANARY_KAFKA_PORT)")
    demo.set_defaults(handler=cmd_demo)

    worker = sub.add_parser(
        "worker",
        help="run the Faust streams worker: windows, SLO agent, audit agent",
        description=(
            "Aggregates search_results into tumbling windows per deployment/config/arm, judges candidate "
            "windows against the preset's SLO, issues rollbacks on the control topic, and appends every "
            "control/state event to the audit log. Stops cleanly on Ctrl-C / SIGTERM."
        ),
    )
    worker.add_argument(
        "--grace-ms",
        type=int,
        default=DEFAULTS.grace_ms,
        help=f"event-time grace after a window ends ({DEFAULTS.grace_ms})",
    )
    worker.add_argument(
        "--window-ms", type=int, default=DEFAULTS.window_ms, help=f"window (bucket) size in ms ({DEFAULTS.window_ms})"
    )
    worker.add_argument("--audit-log", help="audit log path (default reports/canary/audit.log)")
    worker.add_argument("--data-dir", help="Faust data dir (default ~/.cache/canary/worker-data)")
    worker.add_argument(
        "--instance-id",
        help="stable id for Kafka static membership: a restarted worker with the same id resumes its "
        "partitions immediately instead of after the session timeout (10 s)",
    )
    worker.add_argument("--insecure", action="store_true", help=_INSECURE_HELP)
    _service_options(worker)
    worker.set_defaults(handler=cmd_worker)

    router = sub.add_parser(
        "router",
        help="run a router: consumes search_requests, splits traffic, publishes outcomes, obeys control",
        description=(
            "Consumes search_requests (consumer group shared by all routers), routes each request to "
            "last_good or the candidate by a sticky hash of user_id, runs the search and publishes one "
            "outcome per request to search_results. Every router reads the control topic itself."
        ),
    )
    router.add_argument(
        "--router-id",
        type=safe_name("router id"),
        help="id of this router (letters, digits, '_', '.', '-'); default router-<host>-<instance>, stable across "
        "restarts so a restarted router keeps its identity in watermarks, state and dedup",
    )
    router.add_argument(
        "--instance",
        default=os.environ.get("CANARY_ROUTER_INSTANCE", "0"),
        help="instance number for the default router id; give each router on one host its own "
        "(default $CANARY_ROUTER_INSTANCE or 0)",
    )
    router.add_argument("--last-good", default="last_good", help="preset used before any canary ran")
    router.add_argument("--backend", help="search backend import path 'package.module:factory'")
    router.add_argument(
        "--rerank",
        choices=("model", "modeled", "off"),
        help="the bundled backend's model: model = the real all-MiniLM-L6-v2 forward pass (every query encoded,"
        " and a cross_encoder rerank's passages); modeled = wait what it would cost (a box too small for the"
        " request rate); off = no rerank model (default $CANARY_RERANK or model)",
    )
    router.add_argument("--reply", action="store_true", help="also publish results to search_responses")
    router.add_argument(
        "--search-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="searches the bundled engine runs at once, split between last_good and the candidates by traffic"
        " share (at least 1 each); more wait up to 2 s in a queue of 64 per lane, then are shed with error"
        " 'overloaded' (default: one per core)",
    )
    router.add_argument(
        "--inject-fault",
        action="append",
        metavar="NAME:latency_ms=…,keep=…",
        help="FAULT INJECTION for demos/tests: make preset NAME slow (latency_ms, jitter_ms), failing "
        "(error_rate), degraded (keep = fraction of good results kept in place) or reordered (reorder=1: the "
        "top 10 reversed, the same documents; visible only by the result-diff metrics)",
    )
    router.add_argument("--insecure", action="store_true", help=_INSECURE_HELP)
    _service_options(router)
    router.set_defaults(handler=cmd_router)
    _ = argparse
