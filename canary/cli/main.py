"""The ``canary`` command line. The only place that maps errors to exit codes.

Exit codes: 0 success; 1 unexpected canary error; 2 bad input (preset, option, setting);
3 Kafka unreachable or misconfigured; 4 deployment state forbids the command; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary.cli.output import emit as _emit
from canary.errors import CanaryError, ConfigError, DeploymentError, KafkaError
from canary.runtime import reuse_freed_memory, stop_signals_held
from canary.settings import Settings, load_settings

if TYPE_CHECKING:
    from canary.kafka.acls import Role

Handler = Callable[[argparse.Namespace, Settings], int]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- kafka --------------------------------------------------------------------------------------------------
def _local_broker(args: argparse.Namespace, settings: Settings) -> Any:
    from devtools.broker import LocalBroker

    port = args.port if getattr(args, "port", None) else settings.local_port
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    return LocalBroker(settings.home, port, data_dir=data_dir, secure=bool(getattr(args, "secure", False)))


def cmd_kafka_start(args: argparse.Namespace, settings: Settings) -> int:
    if settings.uses_external_kafka:
        _log(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} is set: using that cluster, starting nothing")
        _emit(args, {"bootstrap": settings.bootstrap_servers, "started": False}, settings.effective_bootstrap)
        return 0
    broker = _local_broker(args, settings)
    info = broker.start(log=_log)
    payload: dict[str, Any] = {**asdict(info), "bootstrap": info.bootstrap, "started": True}
    human = info.bootstrap
    if broker.secure:
        from devtools.broker import SECURE_MECHANISM, SECURE_PRINCIPALS

        payload["principals"] = {
            p: {"env_file": str(broker.env_file(p)), "settings": broker.client_env(p)} for p in SECURE_PRINCIPALS
        }
        admin_env = broker.env_file("admin")
        human = "\n".join(
            [
                f"secure broker at {info.bootstrap}: SASL_PLAINTEXT {SECURE_MECHANISM}, StandardAuthorizer "
                "(no ACL = no access)",
                "principals (passwords generated, files 0600):",
                *(f"  {p:9} {broker.env_file(p)}" for p in SECURE_PRINCIPALS),
                "next, as admin:",
                f"  set -a; . {admin_env}; set +a",
                "  canary kafka topics && canary kafka acls",
                "then run each service with its own principal's env file (router.env, worker.env; operator.env "
                "for the CLI)",
            ]
        )
    _emit(args, payload, human)
    return 0


def _named(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "port", None) or getattr(args, "data_dir", None))


def _resolve_broker(args: argparse.Namespace, settings: Settings) -> tuple[Any, list[Any]]:
    """The broker a stop/status means, and the running brokers canary started here. Named by --data-dir →
    that one; by --port alone → the one registered on that port (started with any --data-dir). Otherwise
    the default port's if it runs, else the only other one running."""
    from devtools.broker import discover_brokers

    broker = _local_broker(args, settings)
    if broker.running_info() is not None or getattr(args, "data_dir", None):
        return broker, []
    running = discover_brokers(settings.home)
    if _named(args):
        # --port alone: the broker registered on that port, wherever its --data-dir was at start
        return next((b for b in running if b.port == broker.port), broker), []
    return (running[0] if len(running) == 1 else broker), running


def cmd_kafka_stop(args: argparse.Namespace, settings: Settings) -> int:
    broker, running = _resolve_broker(args, settings)
    if len(running) > 1:
        names = ", ".join(f"127.0.0.1:{b.port} ({b.data_dir})" for b in running)
        from canary.errors import ConfigError

        raise ConfigError(f"several local brokers started by canary are running: {names}; name one with --port")
    stopped = broker.stop(log=_log)
    human = f"stopped the broker on 127.0.0.1:{broker.port}" if stopped else "no local broker was running"
    _emit(args, {"stopped": stopped}, human)
    return 0


def cmd_kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.probe import metadata_problem

    if settings.uses_external_kafka:
        from canary.kafka.clients import connection_for

        bootstrap = settings.effective_bootstrap
        problem = metadata_problem(connection_for(settings))  # with the configured SASL/SSL settings
        up = problem is None
        _emit(
            args,
            {"running": up, "bootstrap": bootstrap, "external": True, "problem": problem},
            f"external Kafka at {bootstrap}: {'answering' if up else f'NOT answering ({problem})'}",
        )
        return 0 if up else 3
    broker, running = _resolve_broker(args, settings)
    status = broker.status()
    human = (
        f"local Kafka {status.version} at {status.bootstrap}: {status.detail}"
        + (f" (pid {status.pid})" if status.pid else "")
        + f"\ndata dir: {status.data_dir}"
    )
    others = [asdict(b.status()) for b in running if b.data_dir != broker.data_dir]
    if others:
        human += "\nother brokers canary started here: " + ", ".join(
            f"{o['bootstrap']} (pid {o['pid']})" for o in others
        )
    _emit(args, {**asdict(status), "external": False, "others": others}, human)
    return 0 if status.running else 3


def cmd_kafka_topics(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics, ensure_topics

    conn = require_kafka(settings)
    replication = args.replication_factor or settings.replication_factor
    reports = ensure_topics(conn, Topics(settings.topic_prefix), strict=False, replication_factor=replication)
    payload = [{"topic": r.name, "action": r.action, "problems": list(r.problems)} for r in reports]
    lines = [f"{r.action:9} {r.name}" + (": " + "; ".join(r.problems) if r.problems else "") for r in reports]
    _emit(args, {"bootstrap": conn.bootstrap, "topics": payload}, "\n".join(lines))
    return 3 if any(r.action == "mismatch" for r in reports) else 0


def cmd_kafka_acls(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.acls import DEFAULT_PRINCIPALS, acl_plan, apply_acls
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics

    principals: dict[Role, str] = {
        "operator": args.operator_principal or DEFAULT_PRINCIPALS["operator"],
        "router": args.router_principal or DEFAULT_PRINCIPALS["router"],
        "worker": args.worker_principal or DEFAULT_PRINCIPALS["worker"],
    }
    topics = Topics(settings.topic_prefix)
    if args.dry_run:
        plan = acl_plan(topics, principals)
        _emit(args, {"plan": [b.to_dict() for b in plan]}, "\n".join(b.describe() for b in plan))
        return 0
    conn = require_kafka(settings)
    if not conn.security.authenticated:
        _log(
            f"note: this client is unauthenticated (PLAINTEXT) on {conn.bootstrap}; a cluster without an "
            "authorizer accepts the ACLs but enforces none. Use the admin principal's settings."
        )
    report = apply_acls(conn, topics, principals, prune=args.prune)
    lines = [f"applied  {b.describe()}" for b in report.applied]
    verb = "removed" if report.pruned else "EXTRA  "
    lines += [f"{verb}  {b.describe()}" for b in report.extra]
    if report.extra and not report.pruned:
        lines.append(f"{len(report.extra)} binding(s) beyond the least-privilege set; --prune removes them")
    _emit(args, {"bootstrap": conn.bootstrap, **report.to_dict()}, "\n".join(lines))
    return 0


# -- parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canary",
        description=(
            "Canary deployments for search/retrieval configurations on Apache Kafka. "
            "Kafka: KAFKA_BOOTSTRAP_SERVERS if set, otherwise the local broker ('canary kafka start')."
        ),
    )
    parser.add_argument(
        "--env",
        metavar="NAME",
        help="environment (configs/environments/NAME.yaml; or CANARY_ENV): its own topics, keys, audit and "
        "reports on the same cluster, with its SLO / weight / plan overrides",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = sub.add_parser("kafka", help="run or inspect the local Kafka broker and the topics")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    start = ksub.add_parser(
        "start",
        help="start the local KRaft broker on 127.0.0.1 (downloads the jars with Maven on first run)",
        description="Start (or reuse) the local single-node KRaft broker bound to 127.0.0.1.",
    )
    start.add_argument("--port", type=int, help="listener port (default 19092 or CANARY_KAFKA_PORT)")
    start.add_argument("--data-dir", help="log/state directory (default ~/.cache/canary/broker-PORT)")
    start.add_argument(
        "--secure",
        action="store_true",
        help="SASL_PLAINTEXT SCRAM-SHA-512 listener + StandardAuthorizer (no ACL = no access); creates the "
        "principals admin (super user), operator, router and worker with generated passwords and writes a "
        "client env file for each (0600) into the data dir's principals/",
    )
    start.set_defaults(handler=cmd_kafka_start)
    stop = ksub.add_parser("stop", help="stop the local broker cleanly; leaves no JVM behind")
    stop.add_argument("--port", type=int)
    stop.add_argument("--data-dir")
    stop.set_defaults(handler=cmd_kafka_stop)
    status = ksub.add_parser("status", help="is the broker up and answering metadata requests?")
    status.add_argument("--port", type=int)
    status.add_argument("--data-dir")
    status.set_defaults(handler=cmd_kafka_status)
    topics = ksub.add_parser(
        "topics",
        help="create missing topics and verify existing ones (idempotent; reports mismatches)",
        description="The admin step: on a secured cluster services only verify their topics at start.",
    )
    topics.add_argument(
        "--replication-factor",
        type=int,
        help="copies of each new topic (default CANARY_KAFKA_REPLICATION_FACTOR, else min(3, brokers))",
    )
    topics.set_defaults(handler=cmd_kafka_topics)
    acls = ksub.add_parser(
        "acls",
        help="apply the least-privilege ACLs for operator, router and worker (run as the admin principal)",
        description=(
            "Grants exactly what each role needs on the topics under CANARY_TOPIC_PREFIX (docs/contracts.md, "
            "'Kafka ACLs'): only operators and the worker write the control topic; routers read requests and "
            "control and write outcomes and state; workers write windows. Idempotent. Bindings the principals "
            "hold beyond that set on this prefix are reported (--prune removes them)."
        ),
    )
    acls.add_argument("--operator-principal", help="default User:operator")
    acls.add_argument("--router-principal", help="default User:router")
    acls.add_argument("--worker-principal", help="default User:worker")
    acls.add_argument("--prune", action="store_true", help="remove the principals' bindings beyond the set")
    acls.add_argument("--dry-run", action="store_true", help="print the set without contacting Kafka")
    acls.set_defaults(handler=cmd_kafka_acls)
    for p in (start, stop, status, topics, acls):
        p.add_argument("--json", action="store_true", help="machine-readable output")

    from canary.cli import commands as cli_commands
    from canary.cli import dashboard as cli_dashboard
    from canary.cli import keys as cli_keys
    from canary.cli import ops as cli_ops
    from canary.cli import replay as cli_replay
    from canary.cli import reports as cli_reports

    cli_ops.register(sub)
    cli_reports.register(sub)
    cli_replay.register(sub)
    cli_commands.register(sub)
    cli_keys.register(sub)
    cli_dashboard.register(sub)
    return parser


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (``canary status --json | head -1``): end quietly, as a Unix
    tool killed by SIGPIPE would (exit 141), without a traceback or a second error at interpreter exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def _logs_json(args: argparse.Namespace, settings: Settings | None) -> bool:
    if not hasattr(args, "log_format"):
        return False  # not a service command
    if args.log_format:
        return bool(args.log_format == "json")
    return settings is not None and settings.log_format == "json"


# The library raises; only the CLI turns errors into exit codes (most specific class first).
EXIT_CODES: tuple[tuple[type[CanaryError], int], ...] = (
    (ConfigError, 2),  # invalid input or setup: a preset, a setting, an argument
    (KafkaError, 3),  # Kafka unreachable or misbehaving
    (DeploymentError, 4),  # not valid in the deployment's current state
    (CanaryError, 1),
)


def exit_code(exc: CanaryError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def main(argv: Sequence[str] | None = None) -> int:
    reuse_freed_memory()  # every canary process: Kafka reads reuse their buffers (canary.runtime)
    with stop_signals_held():  # the commands' modules load numpy: its thread pool must not take SIGTERM
        parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    settings: Settings | None = None
    try:
        try:
            settings = load_settings().in_environment(args.env)
            if settings.environment is not None:  # an unknown or broken environment fails every command early
                from canary.config.environments import load_environment

                load_environment(settings.environments_dir, settings.environment)
            code = handler(args, settings)
            sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
            return code
        except CanaryError as exc:
            if getattr(args, "json", False):
                print(json.dumps({"error": type(exc).__name__, "message": str(exc)}, indent=2))
                sys.stdout.flush()
            if _logs_json(args, settings):  # a service logging JSON keeps every stderr line parseable
                from canary.observability.logs import emit_error_line

                emit_error_line(f"canary: error: {exc}")
            else:
                print(f"canary: error: {exc}", file=sys.stderr)
            return exit_code(exc)
        except KeyboardInterrupt:
            print("canary: interrupted", file=sys.stderr)
            return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()


if __name__ == "__main__":
    raise SystemExit(main())
