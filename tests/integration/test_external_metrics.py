"""External metrics from a real Prometheus server (issue #23, item 4): Debian's ``prometheus`` (installed by
scripts/install_test_deps.sh), started here on loopback, scrapes a real exporter; the worker queries it for
every candidate window, and a rule on that metric rolls the candidate back when the exporter reports a
breach. Prometheus down: the windows are inconclusive for the rule — no pass, no rollback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    send_command,
    start_command,
)
from router.service import RouterService

pytestmark = pytest.mark.kafka

CPU_SLO = {
    "metrics": [
        {
            "name": "backend_cpu",
            "source": "prometheus",
            "query": 'max(canary_test_backend_cpu{deployment="{{deployment}}"})',
        }
    ],
    "rules": [{"name": "cpu", "metric": "backend_cpu", "operator": "le", "threshold": 0.8}],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus server on loopback scraping one exporter every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: exporter, static_configs: [{{targets: ['{target}']}}]}}]\n"
        )
        self.cmd = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.log = (tmp / "prometheus.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[Gauge, str]]:
    registry = CollectorRegistry()
    gauge = Gauge(
        "canary_test_backend_cpu", "The search backend's CPU share, by deployment", ["deployment"], registry=registry
    )
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield gauge, f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(exporter: tuple[Gauge, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), exporter[1])
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("prom-worker")
    with fresh_worker(kafka_bootstrap, "prom", tmp) as w:
        # fresh_worker started it without the URL: restart it with the Prometheus it queries.
        w.stop()
        w.extra_env["CANARY_PROMETHEUS_URL"] = prometheus.url
        w.start()
        yield w


async def _canary(worker: WorkerProcess, seconds: float) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    router = RouterService(
        worker.bootstrap, worker.topics, make_backend(), preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.5, slo=CPU_SLO)
    dep = cmd.deployment_id
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        while dep not in router.ledger.deployments:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=40)
        task = asyncio.create_task(load.run(seconds))
        while not task.done() and router.ledger.deployments[dep].status != "rolled_back":
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await load.drain()
        if router.ledger.deployments[dep].live:
            await send_command(worker.bootstrap, worker.topics, end_command(dep))
        await asyncio.sleep(2)
    finally:
        await router.stop()
    control = [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["deployment_id"] == dep]
    return dep, control, await read_judged(worker.bootstrap, worker.topics, dep)


def _cpu_verdicts(windows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (v["outcome"], w["stats"].get("external", {}).get("backend_cpu"))
        for w in windows
        if w["arm"] == "candidate"
        for v in w["verdicts"]
        if v["rule"] == "cpu"
    ]


async def test_a_prometheus_rule_rolls_back_when_the_exporter_reports_a_breach(
    worker: WorkerProcess, exporter: tuple[Gauge, str], prometheus: Prometheus
) -> None:
    gauge, _ = exporter
    _, control, windows = await _run_with_cpu(worker, gauge, 0.95, seconds=45)
    rollbacks = [c for c in control if c["type"] == "rollback"]
    assert len(rollbacks) == 1, worker.log_tail()
    assert rollbacks[0]["reason"] == "SLO violation: cpu failed for 2 consecutive buckets"
    cpu = _cpu_verdicts(windows)
    assert ("fail", {"value": 0.95}) in cpu, cpu


async def _run_with_cpu(
    worker: WorkerProcess, gauge: Gauge, value: float, seconds: float
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a canary while the exporter reports ``value`` for it (set as soon as its start is on the topic)."""
    setter = asyncio.create_task(_set_for_new(worker, gauge, value))
    try:
        return await _canary(worker, seconds)
    finally:
        setter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await setter  # its reader closed before the test goes on (an unclosed consumer warns when collected)


async def _set_for_new(worker: WorkerProcess, gauge: Gauge, value: float) -> None:
    seen: set[str] = set()
    while True:
        for c in await read_all(worker.bootstrap, worker.topics.control, timeout=1.0):
            if c["type"] == "start" and c["deployment_id"] not in seen:
                seen.add(c["deployment_id"])
                gauge.labels(deployment=c["deployment_id"]).set(value)
        await asyncio.sleep(0.2)


async def test_prometheus_down_leaves_the_rule_inconclusive(
    worker: WorkerProcess, exporter: tuple[Gauge, str], prometheus: Prometheus
) -> None:
    gauge, _ = exporter
    prometheus.stop()
    try:
        _, control, windows = await _run_with_cpu(worker, gauge, 0.95, seconds=25)
    finally:
        prometheus.start()
    assert not [c for c in control if c["type"] == "rollback"], worker.log_tail()
    cpu = _cpu_verdicts(windows)
    assert cpu and all(outcome == "inconclusive" for outcome, _ in cpu), cpu
    # Windows judged after the abort (in flight) are not queried: an ended canary's windows decide nothing.
    queried = [external for _, external in cpu if external is not None]
    assert queried and all(external == {"missing": "error"} for external in queried), cpu
