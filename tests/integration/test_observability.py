"""Issue #11, items 4 and 5 on the real broker: /metrics, /healthz and /readyz of a live router and worker,
JSON logs with the deployment id, and a live worker's audit log on a disk that fills up mid-canary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from tests.integration.harness import ROOT, read_all, send_raw, start_command
from tests.integration.services import Service, metric, parse_json_lines, probe, scrape

pytestmark = pytest.mark.kafka


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.effective_bootstrap,
        "CANARY_TOPIC_PREFIX": settings.topic_prefix,
        "CANARY_PROJECT_ROOT": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_deployment_on_every_line(entries: list[dict[str, Any]], dep: str, source: str) -> None:
    """Once the service knows the deployment, every later line names it."""
    first = next((i for i, e in enumerate(entries) if e["deployment_id"] is not None), None)
    assert first is not None, f"{source}: no line carries a deployment id"
    later = entries[first:]
    assert all(e["deployment_id"] == dep for e in later), [e for e in later if e["deployment_id"] != dep][:3]


async def test_metrics_move_readiness_and_json_logs(settings: Settings, topics: Topics, tmp_path: Path) -> None:
    bootstrap, prefix = settings.effective_bootstrap, topics.prefix
    worker = Service(
        "worker",
        "worker",
        bootstrap,
        prefix,
        tmp_path / "worker.log",
        extra=["--audit-log", str(tmp_path / "audit.log"), "--data-dir", str(tmp_path / "faust")],
    )
    router = Service("router", f"obs-router-{uuid.uuid4().hex[:6]}", bootstrap, prefix, tmp_path / "router.log")
    worker.start()
    router.start()
    try:
        await wait_until(router.ready, 60, f"router readiness\n{router.tail()}")
        await wait_until(worker.ready, 60, f"worker readiness\n{worker.tail()}")
        assert probe(router.port, "/healthz") == (200, {"status": "live"})
        assert probe(worker.port, "/healthz") == (200, {"status": "live"})
        status, body = probe(router.port, "/readyz")
        assert status == 200 and body["ready"] and set(body["checks"]) >= {"started", "assigned", "control_fresh"}
        r0, w0 = scrape(router.port), scrape(worker.port)

        started = cli(settings, "start", "candidate_high_recall", "--weight", "0.5", "--json")
        assert started.returncode == 0, started.stderr
        dep = json.loads(started.stdout)["deployment_id"]
        # A forged (unsigned) start: refused by both, counted by reason.
        await send_raw(bootstrap, topics, start_command("candidate_high_recall", weight=1.0).to_dict())
        load = cli(settings, "load", "--qps", "50", "--duration", "8", "--json", timeout=60)
        assert load.returncode == 0, load.stderr
        acked = json.loads(load.stdout)["acked"]

        def windows_judged() -> bool:
            w = scrape(worker.port)
            return (
                metric(w, "canary_worker_judgements_total") > 0
                and metric(w, "canary_worker_windows_emitted_total") >= 2
            )

        await wait_until(windows_judged, 40, f"judged windows\n{worker.tail()}")
        await wait_until(
            lambda: (
                sum(
                    metric(scrape(router.port), "canary_router_outcomes_total", arm=a, result="ok")
                    for a in ("last_good", "candidate")
                )
                >= acked
            ),
            20,
            "every outcome acknowledged",
        )
        r1, w1 = scrape(router.port), scrape(worker.port)
        stopped = cli(settings, "stop", "--rollback", "--json")
        assert stopped.returncode == 0, stopped.stderr
        await wait_until(
            lambda: metric(scrape(worker.port), "canary_worker_commands_applied_total", type="rollback") == 1,
            15,
            "the worker to fold the rollback",
        )
        w2 = scrape(worker.port)
    finally:
        codes = [s.terminate()[0] for s in (router, worker) if s.proc is not None]

    # Router: requests and acknowledged outcomes by arm moved, the signed start applied, the forgery counted.
    for arm in ("last_good", "candidate"):
        assert metric(r1, "canary_router_requests_total", arm=arm) > metric(r0, "canary_router_requests_total", arm=arm)
    outcomes = sum(metric(r1, "canary_router_outcomes_total", arm=a, result="ok") for a in ("last_good", "candidate"))
    assert outcomes == acked
    assert metric(r1, "canary_router_commands_applied_total", type="start") == 1
    assert metric(r1, "canary_router_commands_rejected_total", reason="unsigned") == 1
    assert metric(r1, "canary_router_publish_errors_total", kind="outcome") == 0
    assert metric(r1, "canary_router_control_lag_seconds") < 5
    assert metric(r1, "canary_router_failsafe") == 0
    # Worker: outcomes consumed, windows emitted with their lag, verdicts, commands by type and reason.
    assert metric(w1, "canary_worker_outcomes_total") >= acked > metric(w0, "canary_worker_outcomes_total")
    assert metric(w1, "canary_worker_windows_emitted_total") > metric(w0, "canary_worker_windows_emitted_total")
    assert metric(w1, "canary_worker_window_emit_lag_seconds_count") == metric(
        w1, "canary_worker_windows_emitted_total"
    )
    assert sum(metric(w1, "canary_worker_verdicts_total", outcome=o) for o in ("pass", "fail", "inconclusive")) > 0
    assert metric(w1, "canary_worker_commands_applied_total", type="start") == 1
    assert metric(w1, "canary_worker_commands_rejected_total", reason="unsigned") == 1
    assert metric(w2, "canary_worker_audit_lines_total", source="control") >= 3  # start, forgery, rollback
    assert metric(w2, "canary_worker_audit_lines_total", source="state") >= 2
    assert codes == [0, 0], (router.tail(), worker.tail())

    # Every line of both processes is one JSON object; once a deployment is known, every line names it.
    for service in (router, worker):
        entries = parse_json_lines(service.log_lines(), service.name)
        assert entries, service.name
        assert_deployment_on_every_line(entries, dep, service.name)
    router_lines = parse_json_lines(router.log_lines(), router.name)
    assert any("REJECTED" in e["message"] and e["level"] == "WARNING" for e in router_lines)


def _fill(path: Path) -> None:
    """Write until the file system is full (unbuffered: every byte that fits is taken)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65536, 4096, 1):
            chunk = b"x" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    mount_point = tmp_path / "audit-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the audit log (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_live_worker_audit_on_a_full_disk_loses_nothing(
    settings: Settings, topics: Topics, tmp_path: Path, small_tmpfs: Path
) -> None:
    bootstrap, prefix = settings.effective_bootstrap, topics.prefix
    audit = small_tmpfs / "audit.log"
    filler = small_tmpfs / "filler"
    worker = Service(
        "worker",
        "worker",
        bootstrap,
        prefix,
        tmp_path / "worker.log",
        extra=["--audit-log", str(audit), "--data-dir", str(tmp_path / "faust")],
    )
    routers = [Service("router", f"audit-router-{i}", bootstrap, prefix, tmp_path / f"r{i}.log") for i in range(2)]
    for s in (worker, *routers):
        s.start()
    try:
        for s in (worker, *routers):
            await wait_until(s.ready, 60, f"{s.name} readiness\n{s.tail()}")
        started = cli(settings, "start", "candidate_high_recall", "--weight", "0.2", "--json")
        assert started.returncode == 0, started.stderr
        await wait_until(lambda: audit.exists() and audit.stat().st_size > 0, 20, "the first audit lines")

        await asyncio.to_thread(_fill, filler)  # the disk is full mid-canary
        for args in (("weight", "0.3"), ("pause",), ("resume",), ("weight", "0.4")):
            done = cli(settings, *args, "--json")
            assert done.returncode == 0, done.stderr

        def stuck() -> bool:
            return metric(scrape(worker.port), "canary_worker_audit_stuck_seconds") > 0

        await wait_until(stuck, 20, "the audit agent to report it is stuck")
        await asyncio.sleep(3)  # stuck for a while: retried with backoff, nothing skipped
        failures = metric(scrape(worker.port), "canary_worker_audit_write_failures_total")
        assert failures >= 2
        filler.unlink()  # space comes back

        stopped = cli(settings, "stop", "--rollback", "--json")
        assert stopped.returncode == 0, stopped.stderr
        control = await read_all(bootstrap, topics.control)
        states = await read_all(bootstrap, topics.state)
        expected = {f"control:{c['command_id']}" for c in control} | {
            f"state:{s['router_id']}:{s['seq']}:{s['applied_at_ms']}" for s in states if not s.get("heartbeat")
        }

        def all_written() -> bool:
            ids = {json.loads(line)["event_id"] for line in audit.read_text().splitlines() if line.strip()}
            return ids >= expected

        await wait_until(all_written, 40, f"every event in the audit log\n{worker.tail()}")
        assert metric(scrape(worker.port), "canary_worker_audit_stuck_seconds") == 0
    finally:
        codes = [s.terminate()[0] for s in (*routers, worker) if s.proc is not None]
    raw = audit.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    entries = [json.loads(line) for line in lines]  # no torn line: every line parses
    ids = [e["event_id"] for e in entries]
    assert len(ids) == len(set(ids)), "an event was written twice"
    assert set(ids) >= expected
    assert [c["type"] for c in control] == ["start", "set_weight", "pause", "resume", "set_weight", "rollback"]
    assert codes == [0, 0, 0], (worker.tail(), routers[0].tail())
    logs = parse_json_lines(worker.log_lines(), "worker")
    assert any("AUDIT LOG STUCK" in e["message"] for e in logs)
    assert any("writable again" in e["message"] for e in logs)
