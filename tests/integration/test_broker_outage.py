"""Issues #11 (item 6) and #19 (item 5) on real brokers: an outage is ridden through in-process.

Two dedicated brokers (the session broker is not disturbed), each with its own fleet — a worker and two
routers as real processes — mid-canary under load, at the same time:

* broker A is SIGSTOPped for 40 s (connections stay open, nothing answers), then continued;
* broker B is stopped for 60 s, then restarted on the same port with the same data dir; 30 s into that
  outage a router and the worker get SIGTERM and must exit within 10 s (an operator stops them; they are
  started again once B is back).

60 s is longer than the producers' request timeout (40 s): batches expire while B is away, so after its
restart the idempotent producers meet ``OutOfOrderSequenceNumber`` / ``LeaderNotAvailable`` — the case a
router used to exit on. Nothing restarts a process here: every process must still be running at the end
(no exit but the two SIGTERMs); requests produced == distinct outcomes once B is back; readiness flips
off during the outage and back on after it; reconnect errors stay bounded in the logs; and ``canary stop
--rollback`` is then acknowledged by every router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings
from devtools.broker import LocalBroker
from devtools.harness import ROOT, read_all, send_raw, start_command
from devtools.services import Service, free_port, metric, parse_json_lines, probe, scrape

pytestmark = pytest.mark.kafka

SIGSTOP_S = 40.0
STOPPED_S = 60.0
SIGTERM_BOUND_S = 10.0
LOG_LINES_BOUND = 200  # per process, during an outage


def _ts(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class Fleet:
    name: str
    broker: LocalBroker
    topics: Topics
    tmp: Path
    worker: Service = field(init=False)
    routers: list[Service] = field(init=False)
    held: set[str] = field(default_factory=set)  # deliberately stopped by the test
    unexpected_exits: list[tuple[str, int, str]] = field(default_factory=list)  # (name, code, last log line)
    load: asyncio.Task[None] | None = None
    produced: dict[str, int] = field(default_factory=lambda: {"sent": 0, "acked": 0, "failed": 0})

    def __post_init__(self) -> None:
        boot = f"127.0.0.1:{self.broker.port}"
        prefix = self.topics.prefix
        self.worker = Service(
            "worker",
            f"{self.name}-worker",
            boot,
            prefix,
            self.tmp / f"{self.name}-worker.log",
            extra=["--audit-log", str(self.tmp / f"{self.name}-audit.log"), "--data-dir", str(self.tmp / "faust")],
        )
        self.routers = [
            Service("router", f"{self.name}-router-{i}", boot, prefix, self.tmp / f"{self.name}-router-{i}.log")
            for i in range(2)
        ]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    @property
    def services(self) -> list[Service]:
        return [self.worker, *self.routers]

    def watch(self) -> None:
        """Note any process that ended on its own (nothing restarts it: there is no supervisor)."""
        for s in self.services:
            if s.name in self.held or s.running or s.proc is None:
                continue
            code = s.poll()
            assert code is not None
            lines = s.log_lines()
            self.unexpected_exits.append((s.name, code, lines[-1] if lines else ""))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CANARY_TOPIC_PREFIX": self.topics.prefix,
            "CANARY_PROJECT_ROOT": str(ROOT),
        }
        return subprocess.run(
            [sys.executable, "-m", "canary.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_load(self, seconds: float, qps: float = 25.0) -> None:
        self.load = asyncio.create_task(self._produce(seconds, qps))

    async def _produce(self, seconds: float, qps: float) -> None:
        """Clients keep sending requests through the outage (a plain producer that waits for the broker);
        what counts is what reached ``search_requests``."""
        # A request timeout beyond the outage: batches wait for the broker instead of expiring.
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, request_timeout_ms=150_000
        )
        await producer.start()

        def count(fut: asyncio.Future[Any]) -> None:
            self.produced["failed" if fut.cancelled() or fut.exception() is not None else "acked"] += 1

        try:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                body = {
                    "request_id": f"{self.name}-req-{n}",
                    "query": f"query {n % 97}",
                    "collection": "documents",
                    "user_id": f"user-{n % 500}",
                    "ts": int(time.time() * 1000),
                }
                try:
                    ack = await producer.send(self.topics.search_requests, json.dumps(body).encode(), key=b"%d" % n)
                    ack.add_done_callback(count)
                except Exception:
                    self.produced["failed"] += 1
                self.produced["sent"] += 1
                n += 1
                await asyncio.sleep(max(0.0, start + n / qps - time.monotonic()))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.flush(), 30)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory, base_settings: Settings) -> Iterator[list[LocalBroker]]:
    pair = [
        LocalBroker(base_settings.home, free_port(), data_dir=tmp_path_factory.mktemp(f"outage-kafka-{n}"))
        for n in ("a", "b")
    ]
    try:
        # Started side by side: each takes ~10 s.
        with contextlib.ExitStack():
            errors: list[BaseException] = []

            def start(b: LocalBroker) -> None:
                try:
                    b.start()
                except BaseException as exc:
                    errors.append(exc)

            import threading

            threads = [threading.Thread(target=start, args=(b,)) for b in pair]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        yield pair
    finally:
        for b in pair:
            with contextlib.suppress(Exception):
                info = b.info()
                if info is not None:
                    os.kill(info.pid, signal.SIGCONT)
            b.stop()


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def _answered(fleet: Fleet) -> tuple[set[str], set[str]]:
    requests = {r["request_id"] for r in await read_all(fleet.bootstrap, fleet.topics.search_requests, timeout=20)}
    outcomes = {
        o["request_id"]
        for o in await read_all(fleet.bootstrap, fleet.topics.search_results, timeout=20)
        if isinstance(o, dict) and "kind" not in o
    }
    return requests, outcomes


async def test_broker_sigstop_and_restart_mid_canary(brokers: list[LocalBroker], tmp_path: Path) -> None:
    prefix = f"o{uuid.uuid4().hex[:6]}."
    fleets = [Fleet(name, broker, Topics(prefix), tmp_path) for name, broker in zip(("a", "b"), brokers, strict=True)]
    b = fleets[1]
    for f in fleets:
        await asyncio.to_thread(ensure_topics, f.bootstrap, f.topics)
        for s in f.services:
            s.start()
    sigterm: list[tuple[str, int, float]] = []
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    not_ready_during: dict[str, int] = {}
    Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
    before: dict[str, Samples] = {}
    during: dict[str, Samples] = {}
    after: dict[str, Samples] = {}
    try:
        for f in fleets:
            for s in f.services:
                await _wait(s.ready, 90, f"{s.name} ready\n{s.tail()}")
        phase("ready")
        deps = {}
        starts = await asyncio.gather(
            *(asyncio.to_thread(f.cli, "start", "candidate_high_recall", "--weight", "0.3", "--json") for f in fleets)
        )
        for f, started in zip(fleets, starts, strict=True):
            assert started.returncode == 0, started.stderr
            deps[f.name] = json.loads(started.stdout)["deployment_id"]
            f.start_load(seconds=STOPPED_S + 10)
            # A forged (unsigned) start: refused everywhere, counted by reason.
            await send_raw(f.bootstrap, f.topics, start_command("candidate_slow", weight=1.0).to_dict())

        async def flowing(f: Fleet) -> bool:
            requests, outcomes = await _answered(f)
            return len(requests) >= 100 and len(outcomes) >= 100

        deadline = time.monotonic() + 60
        while not all([await flowing(f) for f in fleets]) and time.monotonic() < deadline:
            await asyncio.sleep(1)  # canary under load before the outage
        before = {s.name: scrape(s.port) for f in fleets for s in f.services}
        phase("outage")
        info_a = brokers[0].info()
        assert info_a is not None
        outage_start = time.time()
        os.kill(info_a.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        # A clean broker stop takes seconds (controlled shutdown); the outage runs from its beginning.
        b_stopping = asyncio.ensure_future(asyncio.to_thread(brokers[1].stop))

        async def until(offset: float) -> None:
            """Watch both fleets until ``offset`` seconds into the outage."""
            while time.monotonic() - t0 < offset:
                for f in fleets:
                    f.watch()
                await asyncio.sleep(min(1.0, max(0.0, offset - (time.monotonic() - t0))))

        await until(20)
        for f in fleets:
            for s in f.services:
                not_ready_during[s.name] = probe(s.port, "/readyz")[0]
                during[s.name] = scrape(s.port)
        await until(30)  # SIGTERM with the broker down
        for s in (b.routers[1], b.worker):
            b.held.add(s.name)
            code, took = await asyncio.to_thread(s.terminate)
            sigterm.append((s.name, code, took))
            if took > SIGTERM_BOUND_S:
                trace = "\n".join(s.stop_trace)
                print(f"{s.name} took {took:.1f} s to exit:\n{s.tail(12)}\nits threads meanwhile:\n{trace}")
        await until(SIGSTOP_S)
        os.kill(info_a.pid, signal.SIGCONT)
        a_outage_end = time.time()
        await until(STOPPED_S)
        assert await b_stopping
        b_outage_end = time.time()
        await asyncio.to_thread(brokers[1].start)  # same port, same data dir
        for s in b.services:
            if s.name in b.held:
                s.start()  # the operator starts again what it stopped
        b.held.clear()
        phase("b_restarted")

        # Back: every request gets its outcome, from the processes that rode the outage through.
        async def converged(f: Fleet) -> bool:
            if f.load is not None and not f.load.done():
                return False
            requests, outcomes = await _answered(f)
            return bool(requests) and requests == outcomes

        deadline = time.monotonic() + 90
        pending = list(fleets)
        while pending and time.monotonic() < deadline:
            for f in fleets:
                f.watch()
            pending = [f for f in pending if not await converged(f)]
            await asyncio.sleep(1)
        phase("converged")
        for f in fleets:
            requests, outcomes = await _answered(f)
            assert requests == outcomes, (
                f.name,
                f.produced,
                len(requests),
                len(outcomes),
                sorted(requests - outcomes)[:10],
                [s.tail(15) for s in f.services],
            )
            assert len(requests) >= 0.9 * f.produced["sent"], f.produced  # the load went on through the outage

        for f in fleets:
            for s in f.services:

                def ready_again(f: Fleet = f, s: Service = s) -> bool:
                    f.watch()
                    return s.ready()

                await _wait(ready_again, 60, f"{s.name} ready again\n{s.tail()}")
        phase("ready_again")
        # Every outcome is in; the windows of the last slots close a window and its grace later, and reach the
        # SLO agent at the merge step's next commit: a worker that rode the outage through judges them.
        for f in fleets:
            if f.worker.starts == 1:

                def judged_again(f: Fleet = f) -> bool:
                    name = "canary_worker_judgements_total"
                    return metric(scrape(f.worker.port), name) > metric(before[f.worker.name], name)

                await _wait(judged_again, 60, f"{f.worker.name} judging again\n{f.worker.tail()}")
        phase("judged_again")
        after = {s.name: scrape(s.port) for f in fleets for s in f.services}
        # Afterwards a rollback is acknowledged by every router.
        for f in fleets:
            done = await asyncio.to_thread(f.cli, "stop", "--rollback", "--timeout", "20", "--json")
            assert done.returncode == 0, (done.stdout, done.stderr)
            ack = json.loads(done.stdout)
            assert set(ack["acked_by"]) >= {r.name for r in f.routers}, ack
        phase("rolled_back")
    finally:
        final = {}
        for f in fleets:
            if f.load is not None and not f.load.done():
                f.load.cancel()
                with contextlib.suppress(BaseException):
                    await f.load
            for s in f.services:
                if s.running:
                    final[s.name] = s.terminate()[0]
                else:
                    s.kill()

    # SIGTERM with the broker down: out within the bound.
    assert len(sigterm) == 2
    for name, code, took in sigterm:
        assert took <= SIGTERM_BOUND_S, (name, code, took)
        assert code in (0, 75), (name, code)
    # Readiness was off during the outage, and the metrics said why.
    assert all(status == 503 for status in not_ready_during.values()), not_ready_during
    for f in fleets:
        for r in f.routers:
            if r.name in during:
                assert metric(during[r.name], "canary_router_failsafe") == 1, r.name
                assert metric(during[r.name], "canary_router_control_lag_seconds") > 5, r.name
    # /metrics moved: requests and acknowledged outcomes by arm, windows, verdicts; commands by type and
    # reason (a restarted process re-reads the control topic, so those hold across restarts too).
    moved = []
    for f in fleets:
        for s in f.services:
            prior, now = before[s.name], after[s.name]
            prefix = f"canary_{s.kind}"
            assert metric(now, f"{prefix}_commands_applied_total", type="start") == 1, s.name
            assert metric(now, f"{prefix}_commands_rejected_total", reason="unsigned") == 1, s.name
            if s.starts > 1:
                continue  # its counters started again from 0 (and it may have had nothing left to do)
            moved.append(s.kind)
            if s.kind == "router":
                # Requests moved; which arm depends on whether the SLO agent rolled the canary back over
                # errors during the outage (legitimately), so the arms are summed.
                arms = ("last_good", "candidate")
                assert sum(metric(now, "canary_router_requests_total", arm=a) for a in arms) > sum(
                    metric(prior, "canary_router_requests_total", arm=a) for a in arms
                ), s.name
                ok = sum(
                    metric(now, "canary_router_outcomes_total", arm=a, result="ok") for a in ("last_good", "candidate")
                )
                assert ok > sum(
                    metric(prior, "canary_router_outcomes_total", arm=a, result="ok")
                    for a in ("last_good", "candidate")
                ), s.name
            else:
                for name in ("outcomes_total", "windows_emitted_total", "judgements_total"):
                    assert metric(now, f"canary_worker_{name}") > metric(prior, f"canary_worker_{name}"), (s.name, name)
                assert metric(now, "canary_worker_window_emit_lag_seconds_count") == metric(
                    now, "canary_worker_windows_emitted_total"
                )
                assert (
                    sum(
                        metric(now, "canary_worker_verdicts_total", outcome=o) for o in ("pass", "fail", "inconclusive")
                    )
                    > 0
                )
                assert metric(now, "canary_worker_audit_lines_total", source="control") >= 2  # start, forgery
    # Nothing exited on its own: the outage was ridden through in-process, without a supervisor.
    assert {f.name: f.unexpected_exits for f in fleets} == {"a": [], "b": []}
    assert all(code == 0 for code in final.values()), final
    assert moved.count("router") >= 2 and moved.count("worker") >= 1, moved
    # Every log line parses; reconnect noise during the outages is bounded.
    windows = {"a": (outage_start, a_outage_end), "b": (outage_start, b_outage_end)}
    for f in fleets:
        start, end = windows[f.name]
        for s in f.services:
            entries = parse_json_lines(s.log_lines(), s.name)
            in_outage = [e for e in entries if start <= _ts(e) <= end]
            assert len(in_outage) < LOG_LINES_BOUND, (s.name, len(in_outage), [e["message"] for e in in_outage[:40]])
            if s.starts == 1:  # once the process knows the deployment, every later line names it
                first = next(i for i, e in enumerate(entries) if e["deployment_id"] is not None)
                assert {e["deployment_id"] for e in entries[first:]} == {deps[f.name]}, s.name
    _report = {f.name: f.unexpected_exits for f in fleets}
    print(json.dumps({"phases": phases, "unexpected_exits": _report, "sigterm": sigterm}, indent=1))
