"""Helpers for end-to-end tests: a real worker process, real routers, real Kafka, scripted load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from canary.config import PresetStore
from canary.control import read_topic
from canary.core.deployment import ConfigRef, snapshot_hash
from canary.core.models import ControlCommand
from canary.kafka.clients import Cluster, as_connection, client_kwargs, consumer_kwargs
from canary.kafka.topics import Topics, ensure_topics
from canary.security import CommandSigner, ControlSecurity, Role
from canary.settings import load_settings
from router.backends.fault import Fault, FaultInjectingBackend
from router.backends.memory import KeywordBackend, numbered_corpus, relevant_for
from router.service import RouterService, now_ms

ROOT = Path(__file__).resolve().parents[1]
PRESETS = PresetStore(ROOT / "configs" / "presets")


def preset_ref(name: str) -> ConfigRef:
    preset = PRESETS.get(name)
    return ConfigRef.from_snapshot(preset.to_dict(), preset.content_hash)


def start_command(
    candidate: str, weight: float = 0.2, deployment_id: str | None = None, slo: dict[str, Any] | None = None
) -> ControlCommand:
    preset = PRESETS.get(candidate)
    snapshot = preset.to_dict()
    if slo is not None:
        snapshot["slo"] = {**snapshot["slo"], **slo}
    last_good = PRESETS.get("last_good")
    return ControlCommand(
        command_id=f"start-{uuid.uuid4().hex[:10]}",
        type="start",
        deployment_id=deployment_id or f"canary_{uuid.uuid4().hex[:8]}",
        candidate_config=snapshot,
        # What a real start carries: the hash of the snapshot as sent (overrides included).
        candidate_config_hash=snapshot_hash(snapshot),
        last_good_config=last_good.to_dict(),
        weight=weight,
        reason=None,
        evidence=None,
        issued_by="cli:test",
        issued_at_ms=now_ms(),
    )


def end_command(deployment_id: str, kind: str = "abort") -> ControlCommand:
    return ControlCommand(
        command_id=f"{kind}-{uuid.uuid4().hex[:10]}",
        type=kind,  # type: ignore[arg-type]
        deployment_id=deployment_id,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=None,
        reason="test cleanup",
        evidence=None,
        issued_by="cli:test",
        issued_at_ms=now_ms(),
    )


def security(role: Role = "operator", environment: str | None = None) -> ControlSecurity:
    """The test session's keys (tests/conftest.py ``control_keys``) in ``environment`` (CANARY_ENV)."""
    return ControlSecurity.for_role(load_settings().in_environment(environment), role)


def operator_signer(topics: Topics, environment: str | None = None) -> CommandSigner:
    """The test session's operator key, signing for ``topics.control`` in ``environment``."""
    signer = security("operator", environment).signer(topics.control)
    assert signer is not None
    return signer


def worker_signer(topics: Topics) -> CommandSigner:
    """The test session's worker key (the SLO agent's), signing for ``topics.control``."""
    signer = ControlSecurity.worker(load_settings()).signer(topics.control)
    assert signer is not None
    return signer


def signed(cmd: ControlCommand, topics: Topics, environment: str | None = None) -> dict[str, Any]:
    return operator_signer(topics, environment).sign_command(cmd)


async def send_raw(bootstrap: Cluster, topics: Topics, payload: dict[str, Any] | bytes, key: str = "forged") -> None:
    """Produce ``payload`` onto the control topic exactly as given (forgeries, replays, poison)."""
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all")
    await producer.start()
    try:
        value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await producer.send_and_wait(topics.control, value, key=key.encode())
    finally:
        await producer.stop()


async def send_command(bootstrap: Cluster, topics: Topics, cmd: ControlCommand, environment: str | None = None) -> None:
    """Produce ``cmd`` signed with the session's operator key, as the CLI (of ``environment``) would."""
    await send_raw(bootstrap, topics, signed(cmd, topics, environment), key=cmd.deployment_id)


async def read_all(bootstrap: Cluster, topic: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every record currently in ``topic`` (all partitions), decoded as JSON, in (partition, offset) order."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    try:  # start() inside: a caller cancelled while it connects (a polling task) must not leave it unclosed
        await consumer.start()
        return await read_topic(consumer, topic, timeout)
    finally:
        await consumer.stop()


async def read_outcomes(bootstrap: Cluster, topic: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The outcomes in ``search_results`` — without the routers' watermark records."""
    return [r for r in await read_all(bootstrap, topic, timeout) if isinstance(r, dict) and "kind" not in r]


async def read_judged(bootstrap: Cluster, topics: Topics, deployment_id: str | None = None) -> list[dict[str, Any]]:
    """Judged candidate windows (the SLO agent's ``canary_verdicts``), once per window, in window order."""
    by_id: dict[str, dict[str, Any]] = {}
    for j in await read_all(bootstrap, topics.verdicts):
        w = j.get("window") if isinstance(j, dict) else None
        if isinstance(w, dict) and (deployment_id is None or w.get("deployment_id") == deployment_id):
            by_id.setdefault(w["window_id"], w)
    return sorted(by_id.values(), key=lambda w: w["window_start_ms"])


@dataclass
class WorkerProcess:
    """``canary worker`` as a real subprocess (so it can be SIGKILLed like in production)."""

    # An external cluster's connection (the benches) or a bare address (the tests' PLAINTEXT broker); the
    # subprocess gets the address, and SASL/SSL settings from the same environment that described them.
    bootstrap: Cluster
    topics: Topics
    audit_log: Path
    data_dir: Path
    log_path: Path
    grace_ms: int = 1000
    window_ms: int = 5000
    instance_id: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. CANARY_ENV, CANARY_PROJECT_ROOT
    proc: subprocess.Popen[bytes] | None = None
    _log_fh: Any = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": as_connection(self.bootstrap).bootstrap,
            "CANARY_TOPIC_PREFIX": self.topics.prefix,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self._log_fh = self.log_path.open("ab")
        cmd = [
            sys.executable,
            "-m",
            "canary.cli",
            "worker",
            "--audit-log",
            str(self.audit_log),
            "--data-dir",
            str(self.data_dir),
            "--grace-ms",
            str(self.grace_ms),
            "--window-ms",
            str(self.window_ms),
        ]
        if self.instance_id:
            cmd += ["--instance-id", self.instance_id]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log_fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self._close_log()
        return code

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def running_worker(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def fresh_worker(bootstrap: str, prefix: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker on topics of its own (``<prefix><random>.``), its log tail printed when it stops."""
    topics = Topics(f"{prefix}{uuid.uuid4().hex[:6]}.")
    ensure_topics(bootstrap, topics)
    worker = WorkerProcess(bootstrap, topics, tmp_path / "audit.log", tmp_path / "data", tmp_path / "worker.log")
    with running_worker(worker):
        yield worker
    print(worker.log_tail(30))


def make_backend(faults: dict[str, Fault] | None = None) -> FaultInjectingBackend:
    return FaultInjectingBackend(KeywordBackend(numbered_corpus()), faults or {})


@dataclass
class LoadGenerator:
    """Steady traffic through a router's in-process API: labeled, or without labels (``labeled=False``:
    recall then comes only from the router's sampled exact searches)."""

    router: RouterService
    qps: float = 50.0
    users: int = 2000
    queries: int = 200
    seed: int = 1
    labeled: bool = True
    sent: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def run(self, seconds: float) -> None:
        rng = random.Random(self.seed)
        interval = 1.0 / self.qps
        start = time.monotonic()
        next_at = start
        while time.monotonic() - start < seconds:
            q = rng.randrange(self.queries)
            task = asyncio.create_task(
                self.router.execute_search(
                    f"q{q}",
                    "documents",
                    user_id=f"user-{rng.randrange(self.users)}",
                    relevant_ids=relevant_for(q) if self.labeled else None,
                )
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Wait for the searches sent; a test fails in bounded time, saying how many are unanswered, where a
        broker that stops acknowledging the router's outcomes would otherwise hold it for ever (seen once in CI:
        NotEnoughReplicas to every producer for 20 minutes)."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise TimeoutError(f"{len(pending)} of {self.sent} searches still unanswered after {timeout_s:g} s")
