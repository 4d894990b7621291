"""On a real secure broker (SASL/SCRAM + StandardAuthorizer), set up the way an admin would with the CLI:
`canary kafka start --secure`, `canary kafka topics`, `canary kafka acls`.

- a principal without Write on the control topic is refused there; the operator is not;
- a router whose Read ACL on the control topic is revoked mid-canary fails safe to last_good within the
  bound while its request intake keeps flowing, says why (logs and its state), and catches up and serves
  what the control topic says once the ACL is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from canary.cli.main import main
from canary.core.models import ControlCommand
from canary.errors import KafkaError
from canary.kafka.acls import AclAdmin, AclBinding
from canary.kafka.clients import KafkaConnection, client_kwargs
from canary.kafka.connect import require_kafka
from canary.kafka.topics import Topics, ensure_topics
from canary.ops.commands import produce_command
from canary.ops.view import read_view_async
from canary.settings import Settings
from devtools.broker import SECURE_PRINCIPALS, LocalBroker
from devtools.harness import make_backend, operator_signer, preset_ref, start_command
from router.backends.memory import relevant_for
from router.service import RouterService, now_ms

pytestmark = pytest.mark.kafka
CLI = (sys.executable, "-m", "canary.cli")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the real CLI in-process with ``env`` added to the environment; (exit code, stdout)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        with contextlib.redirect_stdout(out):
            code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def secure_broker(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("secure-kafka")
    # A subprocess, as a user would run it (the broker outlives the command, as it does for them).
    proc = subprocess.run(
        [*CLI, "kafka", "start", "--secure", "--port", str(port), "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    broker = LocalBroker(base_settings.home, port, data_dir=data_dir, secure=True)
    try:
        assert proc.returncode == 0, proc.stderr
        started = json.loads(proc.stdout)
        assert started["secure"] and set(started["principals"]) == set(SECURE_PRINCIPALS)
        for principal in SECURE_PRINCIPALS:  # generated secrets, owner-only
            for path in (broker.principals_dir / f"{principal}.password", broker.env_file(principal)):
                assert path.stat().st_mode & 0o777 == 0o600, path
        assert broker.principals_dir.stat().st_mode & 0o777 == 0o700
        yield broker
    finally:
        broker.stop()


def provision(broker: LocalBroker) -> Topics:
    """What an admin does for a new deployment: create the topics and apply the ACLs, as admin, with the CLI."""
    prefix = f"s{uuid.uuid4().hex[:8]}."
    admin_env = {**broker.client_env("admin"), "CANARY_TOPIC_PREFIX": prefix}
    code, out = _cli(["kafka", "topics", "--json"], admin_env)
    assert code == 0, out
    assert {t["action"] for t in json.loads(out)["topics"]} == {"created"}
    code, out = _cli(["kafka", "acls", "--json"], admin_env)
    assert code == 0, out
    assert json.loads(out)["extra"] == []
    return Topics(prefix)


async def test_only_principals_with_write_may_produce_on_the_control_topic(secure_broker: LocalBroker) -> None:
    topics = await asyncio.to_thread(provision, secure_broker)

    async def produce(principal: str) -> None:
        producer = AIOKafkaProducer(**client_kwargs(secure_broker.connection(principal)), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topics.control, b'{"forged": true}', key=b"x")
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        await produce("router")
    # A wrong password is named as such, not as "Kafka is down".
    wrong = replace(secure_broker.security("router"), sasl_password="not-the-password")
    settings = Settings(bootstrap_servers=f"127.0.0.1:{secure_broker.port}", kafka_security=wrong)
    with pytest.raises(KafkaError, match="refused or failed our client with SASL_PLAINTEXT SCRAM-SHA-512 as router"):
        await asyncio.to_thread(require_kafka, settings)
    # The operator (and the SLO agent's worker principal) may: a signed command lands on the topic.
    cmd = start_command("candidate_high_recall", weight=0.1)
    await produce_command(secure_broker.connection("operator"), topics, cmd, operator_signer(topics))
    view = await read_view_async(secure_broker.connection("operator"), topics)
    assert view.ledger.deployments[cmd.deployment_id].status == "running"
    # Services on a secured cluster only verify: a router principal can check its topics but not create any.
    as_router = secure_broker.connection("router")
    verified = await asyncio.to_thread(ensure_topics, as_router, _router_specs(topics), create=False)
    assert {r.action for r in verified} == {"ok"}
    with pytest.raises(KafkaError, match="cannot create topic"):
        await asyncio.to_thread(ensure_topics, as_router, Topics(f"{topics.prefix}nope."))


def _router_specs(topics: Topics) -> list[Any]:
    from canary.kafka.acls import topics_of

    wanted = set(topics_of(topics, "router"))
    return [s for s in topics.specs() if s.name in wanted]


async def _feed_requests(conn: KafkaConnection, topics: Topics, stop: asyncio.Event, qps: float = 100.0) -> int:
    """Steady search requests on ``search_requests`` (as the operator principal) until ``stop``."""
    producer = AIOKafkaProducer(**client_kwargs(conn), linger_ms=5, acks="all")
    await producer.start()
    sent = 0
    try:
        while not stop.is_set():
            q = sent % 200
            body = {
                "request_id": f"req-{uuid.uuid4().hex[:12]}",
                "query": f"q{q}",
                "collection": "documents",
                "user_id": f"user-{sent % 500}",
                "ts": now_ms(),
                "relevant_ids": relevant_for(q),
            }
            await producer.send(topics.search_requests, json.dumps(body).encode(), key=body["user_id"].encode())
            sent += 1
            await asyncio.sleep(1 / qps)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _until(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_router_without_read_on_control_fails_safe_and_catches_up(
    secure_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topics = await asyncio.to_thread(provision, secure_broker)
    operator = secure_broker.connection("operator")
    read_control = AclBinding("User:router", "TOPIC", "LITERAL", topics.control, "READ")
    router = RouterService(
        secure_broker.connection("router"), topics, make_backend(), preset_ref("last_good"), router_id="r-secure"
    )
    stop_feed = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="canary.router")
    async with router:
        feed = asyncio.create_task(_feed_requests(operator, topics, stop_feed))
        try:
            start = start_command("candidate_high_recall", weight=0.5)
            await produce_command(operator, topics, start, operator_signer(topics))
            await _until(lambda: router.stats.by_arm["candidate"] > 20, 20, "candidate traffic")

            async with AclAdmin(secure_broker.connection("admin")) as admin:
                assert await admin.delete([read_control]) == 1
            revoked_ms = now_ms()
            # Within the bound (5 s without a confirmed read, checked every second) it fails safe.
            await _until(lambda: router.control.stale, router.control.freshness.stale_after_s + 5, "fail-safe")
            await asyncio.sleep(0.3)  # requests in flight when it turned stale finish on their arm
            held = router.stats.by_arm["candidate"]
            last_good_then = router.stats.by_arm["last_good"]
            assert router.stats.last_candidate_dispatch_ms is not None
            assert (
                router.stats.last_candidate_dispatch_ms - revoked_ms
                <= (router.control.freshness.stale_after_s + 2) * 1000
            )
            # While revoked the operator changes the canary; the router cannot see it yet.
            reweigh = _set_weight(start.deployment_id, 0.9)
            await produce_command(operator, topics, reweigh, operator_signer(topics))
            await asyncio.sleep(3)
            assert router.stats.by_arm["candidate"] == held, "a candidate request was sent while fail-safe"
            assert router.stats.by_arm["last_good"] > last_good_then + 100, "request intake stopped"
            reason = router.control.failsafe_reason
            assert reason is not None and "TopicAuthorizationFailed" in reason
            assert any("FAIL-SAFE" in r.getMessage() and "TopicAuthorization" in r.getMessage() for r in caplog.records)
            states = (await read_view_async(operator, topics)).routers
            assert states["r-secure"].failsafe is not None and "TopicAuthorization" in states["r-secure"].failsafe
            assert router.ledger.current is not None and router.ledger.current.weight == 0.5

            async with AclAdmin(secure_broker.connection("admin")) as admin:
                await admin.create([read_control])
            # It catches up and serves what the control topic says: the new weight, candidate traffic again.
            await _until(
                lambda: not router.control.stale and router.ledger.current.weight == 0.9,  # type: ignore[union-attr]
                15,
                "catch-up after the ACL is restored",
            )
            await _until(lambda: router.stats.by_arm["candidate"] > held + 20, 10, "candidate traffic again")
            assert router.control.failsafe_reason is None
        finally:
            stop_feed.set()
            await feed
    assert router.failure() is None  # no loop died on the way


def _set_weight(deployment_id: str, weight: float) -> ControlCommand:
    return ControlCommand(
        command_id=f"set_weight-{uuid.uuid4().hex[:10]}",
        type="set_weight",
        deployment_id=deployment_id,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=weight,
        reason="test: reweigh while the router cannot read control",
        evidence=None,
        issued_by="cli:test",
        issued_at_ms=now_ms(),
    )


def test_secure_broker_files_stay_out_of_the_environment(secure_broker: LocalBroker) -> None:
    """The env file names the password file; no secret is ever put in the file itself."""
    text = secure_broker.env_file("router").read_text()
    assert "CANARY_KAFKA_SASL_PASSWORD_FILE=" in text
    assert secure_broker.password("router") not in text
    assert Path(os.path.expanduser(text.split("CANARY_KAFKA_SASL_PASSWORD_FILE=")[1].strip())).is_file()


async def test_services_on_a_secured_cluster_verify_and_never_create(secure_broker: LocalBroker) -> None:
    from canary.cli.commands import _bootstrap_for_service

    as_router = Settings(
        bootstrap_servers=f"127.0.0.1:{secure_broker.port}",
        kafka_security=secure_broker.security("router"),
        topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
    )
    assert not as_router.services_create_topics
    with pytest.raises(KafkaError, match=r"topics missing on .*canary kafka topics"):
        await asyncio.to_thread(_bootstrap_for_service, as_router, "router")
    topics = await asyncio.to_thread(provision, secure_broker)
    conn = await asyncio.to_thread(
        _bootstrap_for_service, as_router.with_overrides(topic_prefix=topics.prefix), "router"
    )
    assert conn.security.sasl_username == "router"


async def test_the_faust_worker_runs_as_its_own_principal(secure_broker: LocalBroker, tmp_path: Path) -> None:
    """The worker (Faust app, windows and merge stages, registry) authenticates as `worker` and lives within
    its ACLs: it creates its own internal topics, joins its groups and audits a control command."""
    topics = await asyncio.to_thread(provision, secure_broker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARY_KAFKA_")}
    env |= {**secure_broker.client_env("worker"), "CANARY_TOPIC_PREFIX": topics.prefix, "PYTHONUNBUFFERED": "1"}
    audit, log_path = tmp_path / "audit.log", tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = await asyncio.create_subprocess_exec(
            *CLI,
            "worker",
            "--audit-log",
            str(audit),
            "--data-dir",
            str(tmp_path / "data"),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            cmd = start_command("candidate_high_recall", weight=0.1)
            await produce_command(secure_broker.connection("operator"), topics, cmd, operator_signer(topics))

            def audit_of_start() -> dict[str, Any] | None:
                assert worker.returncode is None, log_path.read_text(errors="replace")[-3000:]
                for line in audit.read_text().splitlines() if audit.exists() else []:
                    entry: dict[str, Any] = json.loads(line)
                    if entry["details"].get("command_id") == cmd.command_id:
                        return entry
                return None

            await _until(lambda: audit_of_start() is not None, 60, "the worker's audit of the start command")
            entry = audit_of_start()
            assert entry is not None and entry["event_type"] == "canary_start" and entry["success"] is True
        finally:
            if worker.returncode is None:
                worker.terminate()
            code = await asyncio.wait_for(worker.wait(), 30)
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
    assert "Authorization" not in log_path.read_text(errors="replace")
