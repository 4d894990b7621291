"""Issue #19 on the real broker: a flood of hostile records on every topic while a canary runs.

A worker and two routers run as real processes; a slow candidate is started under load. Right after the
start, 1,000 hostile records (tests/hostile.py: deep nesting, huge strings, non-objects, NaN, wrong types,
bad UTF-8, lone surrogates, nulls, garbage, truncations — only ones the topic's reader must refuse) go to
every topic. Then:

* no process exits; the decision is the one a clean run makes (one rollback, rule p95_ms, after two
  consecutive failing windows — tests/integration/test_rollback_e2e.py asserts the same without a flood);
* every hostile record is accounted for: control → audited ``success: false`` with the verifier's reason;
  requests → dead-lettered with their code and answered with an ``invalid_request`` outcome; outcomes,
  partials, windows, router states → dead-lettered by the worker with ``source_topic``; verdicts → counted
  as invalid by the readers (the report's reader); checkpoints under the stages' own keys → refused at the
  next restore (the worker is SIGKILLed and restarted: "unreadable checkpoint", re-read, ready again);
* requests == outcomes once the load stops; `canary status`, `canary replay` and `canary export` still work
  over topics full of junk.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.core import wire
from canary.core.judge import Judgement
from canary.core.merge import WindowMerger, parse_merge_record
from canary.core.models import RouterState, WindowResult
from canary.kafka.topics import Topics, ensure_topics
from canary.replay.decode import OutcomeDecoder
from router.requests import SearchRequest
from router.service import decode_request
from tests import hostile
from tests.integration.harness import ROOT, read_all, read_judged, send_command, start_command
from tests.integration.services import Service, probe
from tests.security.helpers import verifier

pytestmark = pytest.mark.kafka

PER_TOPIC = 1000
BROKER_MAX = 1_000_000  # the broker's default max.message.bytes: larger records never reach a topic
SEED = 19


def _refused(parse: Callable[[bytes | None], Any]) -> Callable[[bytes | None], bool]:
    def refused(raw: bytes | None) -> bool:
        try:
            parse(raw)
        except Exception:
            return True
        return False

    return refused


def _merge(raw: bytes | None) -> None:
    WindowMerger(6).add(parse_merge_record(wire.decode_object(raw, wire.PARTIAL)))


KINDS: dict[str, tuple[str, Callable[[bytes | None], bool], bool]] = {
    # topic attribute: (sample kind, "the reader refuses it", null values allowed)
    "control": ("control", lambda raw: not verifier().check(raw).accepted, True),
    "search_requests": ("request", _refused(decode_request), True),
    "search_results": ("outcome", _refused(lambda raw: OutcomeDecoder().decode(raw)), True),
    "window_partials": ("partial", _refused(_merge), True),
    "windows": ("window", _refused(lambda raw: WindowResult.from_dict(wire.decode_object(raw, wire.WINDOW))), True),
    "verdicts": ("judgement", _refused(lambda raw: Judgement.from_dict(wire.decode_object(raw, wire.JUDGEMENT))), True),
    # Compacted: a null value is a legitimate delete (a tombstone), not a hostile record.
    "state": ("state", _refused(lambda raw: RouterState.from_dict(wire.decode_object(raw, wire.ROUTER_STATE))), False),
    "requests_dlq": ("dead_letter", lambda raw: True, True),
    "results_dlq": ("dead_letter", lambda raw: True, True),
    "responses": ("request", lambda raw: True, True),
}


def corpus(rng: random.Random) -> dict[str, list[bytes | None]]:
    samples = hostile.samples()
    out: dict[str, list[bytes | None]] = {}
    for attr, (kind, refused, nulls) in KINDS.items():
        records: list[bytes | None] = []
        while len(records) < PER_TOPIC:
            raw = hostile.hostile(rng, rng.choice(samples[kind]))
            if raw is None and not nulls:
                continue
            if raw is not None and len(raw) > BROKER_MAX:
                continue
            if refused(raw):
                records.append(raw)
        out[attr] = records
    return out


async def _flood(
    bootstrap: str, topics: Topics, records: dict[str, list[bytes | None]]
) -> dict[str, list[tuple[int, int]]]:
    """Produce every record; (partition, offset) of each, per topic attribute."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 << 20, linger_ms=5)
    await producer.start()
    where: dict[str, list[tuple[int, int]]] = {}
    try:
        for attr, values in records.items():
            topic = getattr(topics, attr)
            futures = [
                await producer.send(topic, value, key=f"hostile-{i % 7}".encode()) for i, value in enumerate(values)
            ]
            where[attr] = [(md.partition, md.offset) for md in await asyncio.gather(*futures)]
    finally:
        await producer.stop()
    return where


async def _load(bootstrap: str, topics: Topics, seconds: float, qps: float, sent: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            q = n % 97
            request = SearchRequest(f"load-{n}", f"q{q}", "documents", f"user-{n % 500}", int(time.time() * 1000))
            body = {**request.to_dict(), "relevant_ids": [str(x) for x in _relevant(q)]}
            await producer.send(topics.search_requests, json.dumps(body).encode(), key=request.request_id.encode())
            sent.append(request.request_id)
            n += 1
            await asyncio.sleep(max(0.0, start + n / qps - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()


def _relevant(q: int) -> tuple[str, ...]:
    from router.backends.memory import relevant_for

    return relevant_for(q)


def _cli(bootstrap: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CANARY_TOPIC_PREFIX": prefix,
        "CANARY_PROJECT_ROOT": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def test_a_flood_of_hostile_records_on_every_topic_changes_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"h{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    audit = tmp_path / "audit.log"
    worker_args = ["--audit-log", str(audit), "--data-dir", str(tmp_path / "faust"), "--instance-id", "flood-worker"]
    worker = Service("worker", "flood-worker", kafka_bootstrap, prefix, tmp_path / "worker.log", extra=worker_args)
    routers = [
        Service(
            "router",
            f"flood-router-{i}",
            kafka_bootstrap,
            prefix,
            tmp_path / f"router-{i}.log",
            extra=["--inject-fault", "candidate_slow:latency_ms=1500"],
        )
        for i in range(2)
    ]
    records = corpus(random.Random(SEED))
    services = [worker, *routers]
    sent: list[str] = []
    try:
        for s in services:
            s.start()
        for s in services:
            await _until(lambda s=s: asyncio.to_thread(s.ready), 90, f"{s.name} ready\n{s.tail()}")
        load = asyncio.create_task(_load(kafka_bootstrap, topics, 45, 40, sent))
        await asyncio.sleep(2)
        cmd = start_command("candidate_slow", weight=0.3)
        dep = cmd.deployment_id
        await send_command(kafka_bootstrap, topics, cmd)
        flood_started = time.monotonic()
        where = await _flood(kafka_bootstrap, topics, records)
        flood_s = time.monotonic() - flood_started

        async def rollbacks() -> list[dict[str, Any]]:
            control = await read_all(kafka_bootstrap, topics.control)
            return [
                c
                for c in control
                if isinstance(c, dict) and c.get("deployment_id") == dep and c.get("type") == "rollback"
            ]

        [rollback] = await _until(rollbacks, 90, "the rollback")
        rolled_back_s = time.monotonic() - flood_started
        for w in await read_judged(kafka_bootstrap, topics, dep):
            verdicts = {v["rule"]: v["outcome"] for v in w["verdicts"]}
            print(
                f"window +{(w['window_start_ms'] - cmd.issued_at_ms) / 1000:5.1f} s: n={w['response_count']} "
                f"p95={w['p95_ms']} emitted {(w['emitted_at_ms'] - w['window_end_ms']) / 1000:.1f} s after its end "
                f"{verdicts}"
            )
        print(f"rollback {rolled_back_s:.1f} s after the start (flood produced in {flood_s:.1f} s)")
        await load
        # Every process is still there, and answers.
        for s in services:
            assert s.running, f"{s.name} exited: {s.tail()}"
            assert probe(s.port, "/healthz")[0] == 200

        # The decision a clean run makes.
        assert rollback["issued_by"] == "slo-agent" and rollback["evidence"]["rule"] == "p95_ms"
        assert rollback["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
        assert len(rollback["evidence"]["windows"]) == 2
        assert all(w["outcome"] == "fail" for w in rollback["evidence"]["windows"])

        # Requests == outcomes (hostile requests answered as invalid_request, the load as searched).
        async def answered() -> bool:
            records = await read_all(kafka_bootstrap, topics.search_results, 30)
            ids = Counter(
                o["request_id"] for o in records if isinstance(o, dict) and isinstance(o.get("request_id"), str)
            )
            return all(ids[r] >= 1 for r in sent) and sum(1 for r in ids if str(r).startswith("invalid-")) >= PER_TOPIC

        await _until(answered, 60, "every request answered")

        # Every hostile record accounted for.
        # The DLQ topics hold our hostile records too (written there on purpose): only objects are dead letters.
        dead_requests = [d for d in await read_all(kafka_bootstrap, topics.requests_dlq, 30) if isinstance(d, dict)]
        dead = [d for d in await read_all(kafka_bootstrap, topics.results_dlq, 30) if isinstance(d, dict)]

        def dead_letters(records: list[dict[str, Any]], topic: str) -> dict[tuple[Any, Any], str]:
            """(partition, offset) → reason of the dead letters canary wrote for ``topic``."""
            return {
                (d.get("partition"), d.get("offset")): d["reason"]
                for d in records
                if d.get("source_topic") == topic and isinstance(d.get("reason"), str)
            }

        for attr, records_of in (
            ("search_requests", dead_requests),
            ("search_results", dead),
            ("window_partials", dead),
            ("windows", dead),
            ("state", dead),
        ):
            got = dead_letters(records_of, getattr(topics, attr))
            missing = set(where[attr]) - set(got)
            assert not missing, f"{attr}: {len(missing)} of {len(where[attr])} hostile records not dead-lettered"
            reasons = Counter(got[w] for w in where[attr])
            assert set(reasons) <= set(wire.DEAD_LETTER_REASONS), reasons
            print(f"{attr}: {len(where[attr])} dead-lettered {dict(reasons)}")

        async def audited() -> bool:
            lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
            offsets = {
                line["details"].get("offset")
                for line in lines
                if line.get("success") is False and isinstance(line.get("details"), dict)
            }
            return {o for _, o in where["control"]} <= offsets

        await _until(audited, 60, "every hostile control record audited")
        reasons = Counter(
            line["details"]["verification"]["reason"]
            for line in map(json.loads, audit.read_text().splitlines())
            if line.get("event_type") == "canary_invalid_command"
        )
        assert reasons["too_deep"] > 0 and reasons["not_json"] > 0, reasons

        from canary.reports.export import read_topics_async

        data = await read_topics_async(kafka_bootstrap, prefix, control=True, state=True, windows=True)
        assert data.invalid_windows == PER_TOPIC * 2  # hostile windows and verdicts, each counted once

        # The CLI over topics full of junk.
        status = await asyncio.to_thread(_cli, kafka_bootstrap, prefix, "status", "--json")
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)
        assert view["deployments"] == [] or all(d["status"] != "running" for d in view["deployments"])
        span = (str(cmd.issued_at_ms - 30_000), str(int(time.time() * 1000)))
        replay = await asyncio.to_thread(
            _cli, kafka_bootstrap, prefix, "replay", "--from", span[0], "--to", span[1], "--deployment", dep, "--json"
        )
        assert replay.returncode == 0, replay.stderr

        # Checkpoints: junk under the stages' own keys is refused at the next restore.
        worker.kill()
        keys = [
            f"{prefix}canary-streams-{stage}|{topic}|{p}".encode()
            for stage, topic, parts in (("windows", topics.search_results, 6), ("merge", topics.window_partials, 3))
            for p in range(parts)
        ]
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key in keys:
                await producer.send_and_wait(topics.window_state, b"[" * 5000 + b"]" * 5000, key=key)
        finally:
            await producer.stop()
        worker.start()
        await _until(lambda: asyncio.to_thread(worker.ready), 90, f"the worker ready again\n{worker.tail()}")
        unreadable = [line for line in worker.log_lines() if "is unreadable" in line and "too_deep" in line]
        assert len(unreadable) >= len(keys), worker.tail()
        for s in services:
            assert s.running, f"{s.name} exited: {s.tail()}"
        print(f"flood of {PER_TOPIC} records x {len(records)} topics produced in {flood_s:.1f} s")
    finally:
        for s in services:
            if s.running:
                code, _ = s.terminate()
                assert code == 0, f"{s.name} exited {code}: {s.tail()}"
