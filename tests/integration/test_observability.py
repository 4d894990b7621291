"""Issue #11, item 5 on the real broker: a live worker's audit log on a disk that fills up mid-canary, then
frees — every control and state event exactly once, no torn line; the metrics and JSON logs say it was
stuck. (/metrics moving, readiness flipping and every JSON log line parsing are checked on two fleets
through a broker outage in test_broker_outage.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import ROOT, read_all
from devtools.services import Service, metric, parse_json_lines, scrape

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
    routers = [Service("router", "audit-router", bootstrap, prefix, tmp_path / "router.log")]
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
    assert codes == [0, 0], (worker.tail(), routers[0].tail())
    logs = parse_json_lines(worker.log_lines(), "worker")
    assert any("AUDIT LOG STUCK" in e["message"] for e in logs)
    assert any("writable again" in e["message"] for e in logs)
