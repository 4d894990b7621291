"""A broker outage under a running canary is visible in the verdicts and the report (issue #19).

A dedicated broker (the session broker is not disturbed) serves a worker and a router — real processes —
while a healthy canary runs under steady load. The broker is stopped for a few seconds and started again
on the same port and data dir (≈ 15 s without a broker: a controlled shutdown, 1 s, a JVM start). Then:

* the worker logged the outage twice (began, ended), never once per probe;
* every judgement of a candidate window overlapping the outage says ``phase: outage``, every one in the
  assumed drain after it ``phase: drain``, with the outage's times (as this test measured them, within
  the probe's resolution) and the window's own p95; judgements before the outage carry no note;
* the report built from the topics draws the outage on its charts and lists its buckets with both arms'
  p95; ``canary_result.json`` carries it.

Nothing here asserts a decision: the note is informational, and the judge's handling of shocks both arms
share is a later change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from canary.core.judge import Judgement
from canary.core.outages import OutageNote
from canary.kafka.topics import Topics, ensure_topics
from canary.reports.export import read_topics_async
from canary.reports.files import canary_result
from canary.reports.html import render_report
from canary.reports.model import build_report
from canary.settings import Settings
from devtools.broker import LocalBroker
from devtools.harness import read_all, send_command, start_command
from devtools.services import Service, free_port, probe
from tests.reports.dom import parse, select

pytestmark = pytest.mark.kafka

PAUSE_S = 1.0  # between the broker's stop (a few s: controlled shutdown) and its start (~9 s: a JVM start)


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory, base_settings: Settings) -> Iterator[LocalBroker]:
    b = LocalBroker(base_settings.home, free_port(), data_dir=tmp_path_factory.mktemp("outage-notes-kafka"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def _load(bootstrap: str, topics: Topics, stop: asyncio.Event, qps: float = 25.0) -> None:
    """Clients keep sending through the outage: a producer that waits for the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, request_timeout_ms=120_000)
    await producer.start()
    try:
        n, start = 0, time.monotonic()
        while not stop.is_set():
            body = {
                "request_id": f"req-{n}",
                "query": f"query {n % 97}",
                "collection": "documents",
                "user_id": f"user-{n % 500}",
                "ts": int(time.time() * 1000),
            }
            with contextlib.suppress(Exception):
                await producer.send(topics.search_requests, json.dumps(body).encode(), key=b"%d" % n)
            n += 1
            await asyncio.sleep(max(0.0, start + n / qps - time.monotonic()))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


async def _judgements(bootstrap: str, topics: Topics, dep: str) -> list[Judgement]:
    out: dict[str, Judgement] = {}
    for raw in await read_all(bootstrap, topics.verdicts, timeout=15):
        j = Judgement.from_dict(raw)
        if j.deployment_id == dep:
            out.setdefault(j.window_id, j)
    return sorted(out.values(), key=lambda j: j.window.window_start_ms)


def _keep_running(services: list[Service], exits: list[tuple[str, int, str]]) -> None:
    """What a supervisor would do; every exit is recorded (the test reports them)."""
    for s in services:
        if not s.running:
            code = s.poll()
            if code is not None:
                exits.append((s.name, code, s.tail(3)))
            s.start()


def _stalled(judged: list[Judgement], wanted: float, worker: Service, exits: list[tuple[str, int, str]]) -> str:
    """Why no judgement came past ``wanted``, shortest facts first (a CI summary keeps a message's start)."""
    last = judged[-1].window.window_start_ms if judged else None
    status, ready = probe(worker.port, "/readyz")
    warnings = []
    for line in worker.log_lines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("level") in ("WARNING", "ERROR", "CRITICAL") and entry.get("logger", "").startswith("canary"):
                warnings.append(f"{entry.get('ts', '')[11:23]} {entry.get('message', '')[:160]}")
    return (
        f"last judged window starts {(last or 0) - wanted:+.0f} ms from the wanted one; worker readyz {status} "
        f"{json.dumps(ready)[:600]}; exits {exits}; worker's warnings: {' | '.join(warnings[-25:])}"
    )


async def test_judgements_and_report_show_a_broker_outage(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # This process's own clients retry through the outage; their hundreds of connection errors would bury a
    # failure's report (CI keeps the tail of it).
    caplog.set_level(logging.CRITICAL, logger="aiokafka")
    bootstrap = f"127.0.0.1:{broker.port}"
    topics = Topics(f"on{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    worker = Service(
        "worker",
        "notes-worker",
        bootstrap,
        topics.prefix,
        tmp_path / "worker.log",
        extra=["--audit-log", str(tmp_path / "audit.log"), "--data-dir", str(tmp_path / "faust")],
    )
    router = Service("router", "notes-router", bootstrap, topics.prefix, tmp_path / "router.log")
    services = [worker, router]
    exits: list[tuple[str, int, str]] = []
    stop_load = asyncio.Event()
    load: asyncio.Task[None] | None = None
    for s in services:
        s.start()
    try:
        deadline = time.monotonic() + 90
        while not all(s.ready() for s in services):
            assert time.monotonic() < deadline, [s.tail() for s in services]
            await asyncio.sleep(0.5)
        cmd = start_command("candidate_high_recall", weight=0.3)
        dep = cmd.deployment_id
        await send_command(bootstrap, topics, cmd)
        load = asyncio.create_task(_load(bootstrap, topics, stop_load))
        deadline = time.monotonic() + 60
        while len([j for j in await _judgements(bootstrap, topics, dep) if j.window.response_count]) < 2:
            assert time.monotonic() < deadline, worker.tail()
            await asyncio.sleep(1)

        stopped_at = time.time()
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(PAUSE_S)
        await asyncio.to_thread(broker.start)  # same port, same data dir; returns once it answers
        back_at = time.time()

        # A few windows into the drain (twice the outage after it): where the shock shows (what lies past the
        # drain is the unit tests' business, tests/core/test_outages.py).
        wanted = (back_at + 12) * 1000
        deadline = time.monotonic() + 90
        while True:
            _keep_running(services, exits)
            judged = await _judgements(bootstrap, topics, dep)
            if judged and judged[-1].window.window_start_ms > wanted:
                break
            assert time.monotonic() < deadline, _stalled(judged, wanted, worker, exits)
            await asyncio.sleep(1)
        stop_load.set()
        await load

        noted = [(j, OutageNote.from_context(j.context)) for j in judged]
        notes = [n for _, n in noted if n is not None]
        assert notes, (exits, worker.tail())
        outage = notes[-1].outage
        assert all(n.outage.start_ms == outage.start_ms for n in notes)  # one outage, noted alike
        assert outage.end_ms is not None and outage.drain_until_ms is not None
        # The probe's resolution is a second (and a stop takes a moment to refuse connections).
        assert stopped_at * 1000 - 1500 <= outage.start_ms <= stopped_at * 1000 + 4000, (stopped_at, outage)
        assert back_at * 1000 - 2500 <= outage.end_ms <= back_at * 1000 + 3000, (back_at, outage)
        assert outage.drain_until_ms == outage.end_ms + max(2 * (outage.end_ms - outage.start_ms), 10_000)
        for j, note in noted:
            w = j.window
            phase = outage.phase(w.window_start_ms, w.window_end_ms)
            if phase is None:
                assert note is None, (w.window_id, note)
                continue
            # A judgement written while the outage was still going on names it without an end.
            assert note is not None and note.phase == phase, (w.window_id, phase, note)
            assert note.candidate_p95_ms == w.p95_ms
        phases = [n.phase for n in notes]
        assert "drain" in phases and phases.count("drain") >= 2, phases
        assert any(j.window.response_count > 0 and n is not None for j, n in noted)

        lines = worker.log_lines()
        assert sum("broker unreachable since" in line for line in lines) == 1, worker.tail()
        assert sum("broker reachable again after" in line for line in lines) == 1, worker.tail()

        data = await read_topics_async(bootstrap, topics.prefix, control=True, windows=True)
        report = build_report(commands=data.commands, windows=data.windows, deployment_id=dep, outages=data.outages)
        assert [o.start_ms for o in report.outages] == [outage.start_ms]
        dom = parse(render_report(report))
        assert select(dom, "svg.chart-p95 rect.outage-band") and select(dom, "svg.chart-p95 rect.drain-band")
        rows = select(dom, "section.panel-outages tr.outage-slot")
        assert {r.attrs["data-phase"] for r in rows} == {"outage", "drain"}
        assert any(select(r, "td.lg-p95")[0].all_text() != "–" for r in rows)  # last_good measured alongside
        (entry,) = canary_result(report)["broker_outages"]
        assert entry["start_ms"] == outage.start_ms and entry["buckets"]
        print(
            f"outage {outage.duration_s} s (test: {back_at - stopped_at:.1f} s), {len(notes)} noted judgements "
            f"({phases.count('outage')} outage, {phases.count('drain')} drain), exits {exits}"
        )
    finally:
        stop_load.set()
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 15)
        for s in services:
            if s.running:
                s.terminate()
