"""The one-command demo: a bad candidate is rolled back automatically, a good one is promoted.

Uses KAFKA_BOOTSTRAP_SERVERS or starts the local broker; runs a real worker and a real router as
subprocesses, produces labeled load onto search_requests, drives canaries through the control topic like
an operator would, prints progress as windows arrive, writes the reports and stops everything it started.

``secure=True`` (``canary demo --secure``) runs it all on the secure local broker (SASL/SCRAM + ACLs): the
admin principal creates the topics and applies the least-privilege ACLs, the worker and the router run as
their own principals (and only verify their topics), and the demo itself acts as the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary.config import PresetStore
from canary.core.judge import Judgement
from canary.core.models import WindowResult
from canary.errors import CanaryError, ConfigError, DeploymentError
from canary.kafka.clients import KafkaConnection, connection_for
from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings

# Settings a service must not inherit from the demo's shell when the demo gives it its own principal.
_SECURITY_ENV = (
    "CANARY_KAFKA_SECURITY_PROTOCOL",
    "CANARY_KAFKA_SASL_MECHANISM",
    "CANARY_KAFKA_SASL_USERNAME",
    "CANARY_KAFKA_SASL_PASSWORD",
    "CANARY_KAFKA_SASL_PASSWORD_FILE",
    "CANARY_KAFKA_SSL_CAFILE",
    "CANARY_KAFKA_SSL_CERTFILE",
    "CANARY_KAFKA_SSL_KEYFILE",
    "CANARY_KAFKA_SSL_KEY_PASSWORD",
    "CANARY_KAFKA_SSL_KEY_PASSWORD_FILE",
)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class DemoConfig:
    # 120/s gives the 10 % candidate ~12 requests/s: the ~130 fast requests that *prove* p95 ≤ T at 99 %
    # (0 exceedances, see healthy()) arrive in ~11 s instead of ~25 s at 60/s.
    qps: float = 120.0
    weight: float = 0.10
    # The real rerank model costs ~120 ms of CPU per last_good request (bench/bench_reranker.py): 120/s of
    # it needs ~15 cores. The demo's router waits that cost instead unless told otherwise.
    rerank: str = "modeled"
    bad_candidate: str = "candidate_slow"
    good_candidate: str = "candidate_high_recall"
    good_windows: int = 2  # consecutive passing candidate windows before promoting (as 2 failing roll back)
    timeout: float = 60.0  # per phase


class Services:
    """Worker and router subprocesses; always stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, settings: Settings, kafka: DemoKafka, log_dir: Path) -> None:
        self.settings = settings
        self.kafka = kafka
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.operator.bootstrap,
            "CANARY_TOPIC_PREFIX": settings.topic_prefix,
            "CANARY_PROJECT_ROOT": str(settings.project_root),
            # The services verify with the demo's trusted keys; the worker signs with the demo's worker key.
            "CANARY_TRUSTED_KEYS_DIR": str(settings.trusted_keys_dir),
            "CANARY_OPERATOR_KEY": str(settings.operator_key_path),
            "CANARY_WORKER_KEY": str(settings.worker_key_path),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, *args: str) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        env = self.env
        if name in self.kafka.service_env:  # its own principal: nothing of the demo's credentials
            env = {k: v for k, v in env.items() if k not in _SECURITY_ENV} | self.kafka.service_env[name]
        proc = subprocess.Popen(
            [sys.executable, "-m", "canary.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append((name, proc, log))

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise CanaryError(f"the {name} exited with code {proc.returncode}:\n" + "\n".join(tail))

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.procs.clear()


@dataclass(frozen=True)
class DemoKafka:
    """The demo's clusters: the operator's connection (the demo's own clients), the admin's (topics, ACLs)
    and the environment of each service that runs as its own principal (secure demo only)."""

    operator: KafkaConnection
    admin: KafkaConnection
    service_env: dict[str, dict[str, str]]
    secure: bool = False


@contextlib.contextmanager
def kafka_for_demo(settings: Settings, secure: bool = False) -> Iterator[DemoKafka]:
    if settings.uses_external_kafka:
        if secure:
            raise ConfigError(
                "--secure runs the demo on the secure local broker; unset KAFKA_BOOTSTRAP_SERVERS (an external "
                "secured cluster is used with CANARY_KAFKA_* settings, without --secure)"
            )
        from canary.kafka.connect import require_kafka

        say(f"using Kafka at {settings.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS)")
        conn = require_kafka(settings)
        yield DemoKafka(conn, conn, {})
        return
    from canary.kafka.broker import LocalBroker

    broker = LocalBroker(settings.home, settings.local_port, secure=secure)
    already = broker.running_info() is not None
    info = broker.start(log=say)
    try:
        if secure:
            say(f"secure broker: SASL_PLAINTEXT SCRAM-SHA-512 + ACLs; principals' settings in {broker.principals_dir}")
            services = {"worker": broker.client_env("worker"), "router": broker.client_env("router")}
            yield DemoKafka(broker.connection("operator"), broker.connection("admin"), services, secure=True)
        else:
            conn = connection_for(settings, info.bootstrap)
            yield DemoKafka(conn, conn, {})
    finally:
        if not already:
            broker.stop(log=say)


def _security(services: Services) -> Any:
    from canary.security import ControlSecurity

    return ControlSecurity.operator(services.settings)


def healthy(window: WindowResult) -> bool:
    """Ready to promote: no rule fails and the latency and recall rules have *passed* (evidence that they
    hold). The error-rate rule is not waited for: proving a rate below 1 % at 99 % confidence takes about
    650 error-free requests (ln(100) / 0.01), two minutes of demo traffic; it still guards every window."""
    outcomes = {v.metric: v.outcome for v in window.verdicts}
    if not outcomes or "fail" in outcomes.values():
        return False
    return all(outcomes.get(m) == "pass" for m in ("p95_ms", "recall_at_10") if m in outcomes)


def ensure_demo_keys(settings: Settings) -> None:
    """The demo signs like everyone else: the operator and worker keys of these settings, created (and
    trusted) if missing — what 'canary keys init' and 'canary keys init --role worker' do."""
    from canary.security import Role, init_key

    if settings.insecure_control:
        say("INSECURE CONTROL MODE (CANARY_INSECURE_CONTROL): commands are not verified")
    keys: tuple[tuple[Role, Path], ...] = (
        ("operator", settings.operator_key_path),
        ("worker", settings.worker_key_path),
    )
    for role, path in keys:
        made = init_key(path, settings.trusted_keys_dir, role)
        verb = "created" if made.created else "using"
        say(f"{verb} {role} key {made.key_id} ({path}), trusted in {settings.trusted_keys_dir}")


async def _wait_for_routers(
    bootstrap: KafkaConnection, topics: Topics, services: Services, timeout: float = 60
) -> None:
    from canary.ops.view import read_view_async

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        if (
            await read_view_async(bootstrap, topics, verifier=_security(services).verifier(topics.control))
        ).live_routers():
            return
        await asyncio.sleep(0.5)
    raise CanaryError("the router did not come up within 60 s (see its log)")


def _has_event(audit: Path, needle: str, deployment_id: str) -> bool:
    try:
        text = audit.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(needle in line and deployment_id in line for line in text.splitlines())


async def _audited(audit: Path, event_type: str, deployment_id: str, timeout: float = 10.0) -> None:
    """Wait until the audit agent has written ``event_type`` of the deployment (the reports read it)."""
    needle = f'"event_type": "{event_type}"'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_has_event, audit, needle, deployment_id):
            return
        await asyncio.sleep(0.1)
    say(f"warning: {event_type} of {deployment_id} not in {audit} after {timeout:.0f}s; reports may lack it")


async def _follow(
    bootstrap: KafkaConnection, topics: Topics, deployment_id: str, services: Services, until: str, cfg: DemoConfig
) -> dict[str, Any]:
    """Print candidate/last_good windows of one deployment until it is rolled back (or passes enough)."""
    from canary.ops.view import read_view_async
    from canary.ops.watch import WatchItem, WatchState, format_window, tail_windows

    state = WatchState()
    passing = 0
    deadline = time.monotonic() + cfg.timeout
    queue: asyncio.Queue[WatchItem] = asyncio.Queue()

    async def pump() -> None:
        # A separate task: cancelling a pending anext() would close the generator.
        async for w in tail_windows(bootstrap, topics, from_beginning=True):
            await queue.put(w)

    pumping = asyncio.create_task(pump())
    try:
        while time.monotonic() < deadline:
            services.check_alive()
            if pumping.done():
                pumping.result()  # surfaces the consumer's error
            try:
                item: WatchItem | None = await asyncio.wait_for(queue.get(), timeout=0.5)
            except TimeoutError:
                item = None
            window = None if item is None else (item.window if isinstance(item, Judgement) else item)
            if item is not None and window is not None and window.deployment_id == deployment_id:
                state.add(item)
                say("  " + format_window(window, state.streak_text(window)))
                if window.arm == "candidate":
                    passing = passing + 1 if healthy(window) else 0
            if until == "rolled_back":
                # Only the control topic can say "rolled back"; folding it is cheap but not free.
                view = await read_view_async(bootstrap, topics, verifier=_security(services).verifier(topics.control))
                dep = view.ledger.deployments.get(deployment_id)
                if dep is not None and dep.status == "rolled_back":
                    return {"status": dep.status, "reason": dep.reason}
            elif passing >= cfg.good_windows:
                return {"status": "passing", "passing_windows": passing}
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping
    raise CanaryError(f"deployment {deployment_id} did not reach '{until}' within {cfg.timeout:.0f}s")


async def _run(
    settings: Settings,
    bootstrap: KafkaConnection,
    topics: Topics,
    services: Services,
    cfg: DemoConfig,
    audit: Path,
) -> dict[str, str]:
    from canary.ops.commands import start_canary, stop_canary
    from canary.ops.load import produce_load

    store = PresetStore(settings.presets_dir)
    security = _security(services)
    await _wait_for_routers(bootstrap, topics, services)
    say(f"router is live; sending {cfg.qps:.0f} labeled queries/s onto {topics.search_requests}")
    load = asyncio.create_task(produce_load(bootstrap, topics, cfg.qps, duration=600))
    try:
        await asyncio.sleep(1.5)  # a first last_good window before the candidate starts
        # Phase 1: a candidate that breaks its latency SLO.
        bad = store.get(cfg.bad_candidate)
        ack = await start_canary(bootstrap, topics, bad, store.get("last_good"), cfg.weight, security=security)
        if ack.compensated:
            raise DeploymentError("the router did not acknowledge the start")
        say(f"phase 1: canary {ack.command.deployment_id} of {bad.name} at {cfg.weight:.0%} — expecting a rollback")
        rolled_back = ack.command.deployment_id
        result = await _follow(bootstrap, topics, rolled_back, services, "rolled_back", cfg)
        say(f"ROLLED BACK automatically: {result['reason']}")

        # Phase 2: a healthy candidate, promoted after passing windows.
        good = store.get(cfg.good_candidate)
        ack = await start_canary(bootstrap, topics, good, store.get("last_good"), cfg.weight, security=security)
        if ack.compensated:
            raise DeploymentError("the router did not acknowledge the start")
        say(
            f"phase 2: canary {ack.command.deployment_id} of {good.name} — "
            f"promoting after {cfg.good_windows} passing windows"
        )
        await _follow(bootstrap, topics, ack.command.deployment_id, services, "passing", cfg)
        promoted = await stop_canary(bootstrap, topics, promote=True, security=security)
        say(f"PROMOTED {good.name}: it is now last_good and active ({len(promoted.acked_by)} router ack)")
        await _audited(audit, "canary_promote", ack.command.deployment_id)
        return {"rolled_back": rolled_back, "promoted": ack.command.deployment_id}
    finally:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await load


def run_demo(settings: Settings, output: Path, cfg: DemoConfig | None = None, secure: bool = False) -> int:
    cfg = cfg or DemoConfig()
    started = time.monotonic()
    prefix = settings.topic_prefix or f"demo{int(time.time())}."
    settings = settings.with_overrides(topic_prefix=prefix)
    topics = Topics(prefix)
    output.mkdir(parents=True, exist_ok=True)
    audit = output / "audit.log"
    if audit.exists():
        audit.unlink()  # fresh topics, fresh audit trail
    logs = settings.home / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"canary demo — topics prefixed '{prefix}', reports in {output}, service logs in {logs}")
    ensure_demo_keys(settings)
    with kafka_for_demo(settings, secure) as kafka:
        bootstrap = kafka.operator
        ensure_topics(kafka.admin, topics, replication_factor=settings.replication_factor)
        if kafka.secure:
            from canary.kafka.acls import apply_acls

            granted = apply_acls(kafka.admin, topics)
            say(f"applied {len(granted.applied)} least-privilege ACLs (operator, router, worker) as admin")
        services = Services(settings, kafka, logs)
        try:
            services.start("worker", "worker", "--audit-log", str(audit), "--data-dir", str(logs / "worker-data"))
            services.start("router", "router", "--router-id", "demo-router", "--rerank", cfg.rerank)
            deployments = asyncio.run(_run(settings, bootstrap, topics, services, cfg, audit))
            say("writing reports …")
            from canary.reports.export import export_reports

            resolved = settings.with_overrides(bootstrap_servers=bootstrap.bootstrap, kafka_security=bootstrap.security)
            # report.html tells the automatic rollback; the promotion gets its own report beside it.
            written = export_reports(resolved, output, deployment_id=deployments["rolled_back"])
            written += export_reports(resolved, output / "promoted", deployment_id=deployments["promoted"])
            for path in written:
                say(f"  wrote {path}")
        finally:
            services.stop()
            say("stopped the worker and the router")
    say(
        f"demo finished in {time.monotonic() - started:.0f}s. Open {output / 'report.html'} "
        f"(rollback) and {output / 'promoted' / 'report.html'} (promotion)"
    )
    say(f"inspect the topics: CANARY_TOPIC_PREFIX={prefix} canary status")
    return 0
