"""Routers and workers as real ``canary`` processes with metrics and JSON logs, and what tests read off them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from devtools.broker import listen_port
from devtools.harness import ROOT


def free_port() -> int:
    """Below the ephemeral range: an outgoing connection cannot take it before the listener binds it."""
    return listen_port()


def scrape(port: int, timeout: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def probe(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of /healthz or /readyz; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def threads_of(pid: int) -> str:
    """``name:state:wait-channel`` of each thread of ``pid`` (Linux /proc; empty elsewhere or once it is gone)."""
    out = []
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return ""
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "-"
        except OSError:
            continue
        name, _, rest = stat.rpartition(")")
        out.append(f"{name.partition('(')[2]}:{rest.split()[0]}:{wchan}")
    return " ".join(out)


@dataclass
class Service:
    """``canary router`` or ``canary worker`` with ``--metrics-port`` and ``--log-format json``."""

    kind: str  # "router" | "worker"
    name: str
    bootstrap: str
    prefix: str
    log_path: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)
    starts: int = 0
    stop_trace: list[str] = field(default_factory=list)

    def start(self) -> None:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CANARY_TOPIC_PREFIX": self.prefix,
            "CANARY_PROJECT_ROOT": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = [sys.executable, "-m", "canary.cli", self.kind, "--log-format", "json", "--metrics-port", str(self.port)]
        if self.kind == "router":
            # The in-memory keyword backend: these tests are about Kafka faults, and four routers building
            # the hybrid index at once would only slow every start on two cores.
            cmd += ["--router-id", self.name, "--backend", "devtools.harness:make_backend"]
        cmd += self.extra
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.exits.append(code)
            self.proc = None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took). While it waits, what each of the process's threads is doing
        (state and kernel wait channel, every 0.25 s) goes into :attr:`stop_trace`, for a test to print when a stop
        was slow: a service once left 11 s after SIGTERM with the signal seemingly held for ~5 s."""
        assert self.proc is not None
        self.stop_trace = []
        started = time.monotonic()
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        code: int | None = None
        while code is None and time.monotonic() - started < timeout:
            self.stop_trace.append(f"{time.monotonic() - started:5.2f}s {threads_of(self.proc.pid)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(0.25)
        if code is None:
            self.proc.kill()
            code = self.proc.wait()
        self.exits.append(code)
        self.proc = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_lines(self) -> list[str]:
        try:
            return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return []

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_lines()[-n:])

    def ready(self) -> bool:
        return probe(self.port, "/readyz")[0] == 200


def parse_json_lines(lines: list[str], source: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object with the structured-log keys."""
    entries = []
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"{source}: line {i + 1} is not JSON ({exc}): {line[:300]!r}") from None
        assert isinstance(entry, dict), (source, i, line)
        missing = {"ts", "level", "logger", "message", "deployment_id"} - entry.keys()
        assert not missing, (source, i, missing, line)
        entries.append(entry)
    return entries
