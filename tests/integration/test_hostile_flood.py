"""Issue #19 on the real broker: a flood of hostile records on every topic while a canary runs.

A worker and two routers run as real processes; a slow candidate is started under load. Right after the
start, 1,000 hostile records (devtools/hostile.py: deep nesting, huge strings, non-objects, NaN, wrong types,
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from canary.control import read_records
from canary.core import wire
from canary.core.judge import Judgement
from canary.core.merge import WindowMerger, parse_merge_record
from canary.core.models import RouterState, WindowResult, parse_time
from canary.kafka.topics import Topics, ensure_topics
from canary.pipeline.decode import OutcomeDecoder
from devtools import hostile
from devtools.harness import ROOT, read_all, read_judged, send_command, start_command
from devtools.services import Service, probe
from devtools.signing import verifier
from router.requests import SearchRequest
from router.service import decode_request
from streams.transactional import state_key, transactional_id

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


async def _until(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str]) -> Any:
    """``what`` may be a callable: then it describes the state at the timeout (a log tail), not at the call."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")


@dataclass
class Fleet:
    """A worker and two routers (real processes) on topics of their own, shared by this module's tests."""

    bootstrap: str
    topics: Topics
    audit: Path
    worker: Service
    routers: list[Service]

    @property
    def services(self) -> list[Service]:
        return [self.worker, *self.routers]

    def assert_running(self) -> None:
        for s in self.services:
            assert s.running, f"{s.name} exited: {s.tail()}"
            assert probe(s.port, "/healthz")[0] == 200


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("hostile")
    topics = Topics(f"h{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka_bootstrap, topics)
    audit = tmp / "audit.log"
    worker_args = ["--audit-log", str(audit), "--data-dir", str(tmp / "faust"), "--instance-id", "hostile-worker"]
    worker = Service("worker", "hostile-worker", kafka_bootstrap, topics.prefix, tmp / "worker.log", extra=worker_args)
    routers = [
        Service(
            "router",
            f"hostile-router-{i}",
            kafka_bootstrap,
            topics.prefix,
            tmp / f"router-{i}.log",
            extra=["--inject-fault", "candidate_slow:latency_ms=1500"],
        )
        for i in range(2)
    ]
    f = Fleet(kafka_bootstrap, topics, audit, worker, routers)
    try:
        for s in f.services:
            s.start()
        deadline = time.monotonic() + 90
        while not all(s.ready() for s in f.services):
            assert time.monotonic() < deadline, "\n".join(s.tail() for s in f.services)
            time.sleep(0.5)
        yield f
    finally:
        for s in f.services:
            if s.running:
                code, _ = s.terminate()
                assert code == 0, f"{s.name} exited {code}: {s.tail()}"


async def _rollback(fleet: Fleet, dep: str, timeout: float) -> tuple[dict[str, Any], int]:
    """The deployment's rollback and its append time (the broker's clock)."""

    async def find() -> tuple[dict[str, Any], int] | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=fleet.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            for raw, ts in await read_records(consumer, fleet.topics.control):
                value = wire.as_json(raw, wire.CONTROL)
                if isinstance(value, dict) and value.get("deployment_id") == dep and value.get("type") == "rollback":
                    assert ts is not None
                    return value, ts
        finally:
            await consumer.stop()
        return None

    found = await _until(find, timeout, f"the rollback of {dep}")
    assert isinstance(found, tuple)
    return found


def _decided_after_s(rollback: dict[str, Any], appended_ms: int) -> float:
    """Seconds from the end of the second failing window to the rollback on the control topic."""
    ends = [parse_time(w["window_end"]) for w in rollback["evidence"]["windows"]]
    return (appended_ms - max(ends)) / 1000


def _assert_the_clean_decision(rollback: dict[str, Any]) -> None:
    """What a run without hostile records decides (tests/integration/test_rollback_e2e.py)."""
    assert rollback["issued_by"] == "slo-agent" and rollback["evidence"]["rule"] == "p95_ms"
    assert rollback["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert len(rollback["evidence"]["windows"]) == 2
    assert all(w["outcome"] == "fail" for w in rollback["evidence"]["windows"])


async def _audited(fleet: Fleet, offsets: set[int]) -> dict[int, dict[str, Any]]:
    """The audit lines of the control records at ``offsets``, once they are all written."""

    async def lines() -> dict[int, dict[str, Any]] | None:
        got: dict[int, dict[str, Any]] = {}
        # split("\n"), not splitlines(): the raw text of a hostile record may hold U+2028 and the like.
        for raw in fleet.audit.read_text().split("\n"):
            if not raw.strip():
                continue
            line = json.loads(raw)
            offset = line.get("details", {}).get("offset")
            if offset in offsets:
                got[offset] = line
        return got if set(got) == offsets else None

    found = await _until(lines, 60, f"audit lines of control offsets {sorted(offsets)[:5]}…")
    assert isinstance(found, dict)
    return found


NESTED = b"[" * 3000 + b"]" * 3000


async def test_a_deeply_nested_record_stops_nothing_and_the_rollback_is_on_time(fleet: Fleet) -> None:
    """The reported 6 kB record: on the control topic it stopped both routers, the worker and the CLI for good;
    on search_results the worker crash-looped."""
    sent: list[str] = []
    load = asyncio.create_task(_load(fleet.bootstrap, fleet.topics, 30, 40, sent))
    await asyncio.sleep(2)
    cmd = start_command("candidate_slow", weight=0.3)
    await send_command(fleet.bootstrap, fleet.topics, cmd)
    where = await _flood(fleet.bootstrap, fleet.topics, {"control": [NESTED], "search_results": [NESTED]})
    rollback, appended = await _rollback(fleet, cmd.deployment_id, 60)
    load.cancel()
    await asyncio.gather(load, return_exceptions=True)
    fleet.assert_running()
    _assert_the_clean_decision(rollback)
    decided = _decided_after_s(rollback, appended)
    print(f"nested record: rollback {decided:.2f} s after its second failing window ended")
    assert decided < 3.0, "the SLO agent decides within ~0.1 s on a quiet machine (bench_detection)"
    [(_, control_offset)] = where["control"]
    line = (await _audited(fleet, {control_offset}))[control_offset]
    assert line["success"] is False and line["details"]["verification"]["reason"] == "too_deep"
    [(partition, offset)] = where["search_results"]
    dead = [d for d in await read_all(fleet.bootstrap, fleet.topics.results_dlq, 30) if isinstance(d, dict)]
    assert [d["reason"] for d in dead if (d.get("partition"), d.get("offset")) == (partition, offset)] == ["too_deep"]
    status = await asyncio.to_thread(_cli, fleet.bootstrap, fleet.topics.prefix, "status", "--json")
    assert status.returncode == 0, status.stderr
    stop = await asyncio.to_thread(_cli, fleet.bootstrap, fleet.topics.prefix, "stop", "--rollback", "--json")
    assert stop.returncode in (0, 4), stop.stderr  # 4: nothing running any more (the SLO agent rolled it back)


async def test_a_flood_of_hostile_records_on_every_topic_changes_nothing(fleet: Fleet) -> None:
    kafka_bootstrap, topics, worker = fleet.bootstrap, fleet.topics, fleet.worker
    prefix = topics.prefix
    records = corpus(random.Random(SEED))
    sent: list[str] = []
    load = asyncio.create_task(_load(kafka_bootstrap, topics, 120, 40, sent))  # until the rollback, below
    await asyncio.sleep(2)
    cmd = start_command("candidate_slow", weight=0.3)
    dep = cmd.deployment_id
    await send_command(kafka_bootstrap, topics, cmd)
    flood_started = time.monotonic()
    where = await _flood(kafka_bootstrap, topics, records)
    flood_s = time.monotonic() - flood_started
    rollback, appended = await _rollback(fleet, dep, 90)
    rolled_back_s = time.monotonic() - flood_started
    for w in await read_judged(kafka_bootstrap, topics, dep):
        verdicts = {v["rule"]: v["outcome"] for v in w["verdicts"]}
        print(
            f"window +{(w['window_start_ms'] - cmd.issued_at_ms) / 1000:5.1f} s: n={w['response_count']} "
            f"p95={w['p95_ms']} emitted {(w['emitted_at_ms'] - w['window_end_ms']) / 1000:.1f} s after its end "
            f"{verdicts}"
        )
    print(
        f"flood of {PER_TOPIC} records x {len(records)} topics produced in {flood_s:.1f} s; rollback "
        f"{rolled_back_s:.1f} s after the start, {_decided_after_s(rollback, appended):.2f} s after its second "
        "failing window ended"
    )
    load.cancel()
    await asyncio.gather(load, return_exceptions=True)
    fleet.assert_running()
    _assert_the_clean_decision(rollback)

    # Requests == outcomes (hostile requests answered as invalid_request, the load as searched).
    async def answered() -> bool:
        records = await read_all(kafka_bootstrap, topics.search_results, 30)
        ids = Counter(o["request_id"] for o in records if isinstance(o, dict) and isinstance(o.get("request_id"), str))
        invalid = sum(1 for r in ids if r.startswith("invalid-"))
        return all(ids[r] >= 1 for r in sent) and invalid >= PER_TOPIC

    await _until(answered, 60, "every request answered")

    # Every hostile record accounted for. The DLQ topics hold hostile records too (written there on purpose):
    # only objects naming the source topic and a string reason are canary's dead letters.
    def dead_letters(records: list[Any], topic: str) -> dict[tuple[Any, Any], str]:
        """(partition, offset) → reason of the dead letters canary wrote for ``topic``."""
        return {
            (d.get("partition"), d.get("offset")): d["reason"]
            for d in records
            if isinstance(d, dict) and d.get("source_topic") == topic and isinstance(d.get("reason"), str)
        }

    dead_lettered = {
        "search_requests": topics.requests_dlq,
        **dict.fromkeys(("search_results", "window_partials", "windows", "state"), topics.results_dlq),
    }
    accounting_started = time.monotonic()

    async def all_dead_lettered() -> dict[str, dict[tuple[Any, Any], str]] | None:
        dlqs = {t: await read_all(kafka_bootstrap, t, 30) for t in set(dead_lettered.values())}
        got = {attr: dead_letters(dlqs[dlq], getattr(topics, attr)) for attr, dlq in dead_lettered.items()}
        return got if all(set(where[attr]) <= set(got[attr]) for attr in got) else None

    try:
        got = await _until(all_dead_lettered, 60, "every hostile record dead-lettered")
    except AssertionError:
        got = await all_dead_lettered() or {}
        raise AssertionError({attr: len(set(where[attr]) - set(got.get(attr, {}))) for attr in dead_lettered}) from None
    print(f"dead letters complete {time.monotonic() - accounting_started:.1f} s after the rollback was seen")
    for attr, by_place in got.items():
        reasons = Counter(by_place[w] for w in where[attr])
        assert set(reasons) <= set(wire.DEAD_LETTER_REASONS), reasons
        print(f"{attr}: {len(where[attr])} dead-lettered {dict(reasons)}")

    lines = await _audited(fleet, {o for _, o in where["control"]})
    assert all(line["success"] is False for line in lines.values())
    reasons = Counter(line["details"]["verification"]["reason"] for line in lines.values())
    print(f"control: {len(lines)} audited success: false {dict(reasons)}")
    assert reasons["too_deep"] > 0 and reasons["not_json"] > 0, reasons

    from canary.reports.export import read_topics_async

    data = await read_topics_async(kafka_bootstrap, prefix, control=True, state=True, windows=True)
    assert data.invalid_windows == PER_TOPIC * 2  # hostile windows and verdicts, each counted once

    # The CLI over topics full of junk.
    status = await asyncio.to_thread(_cli, kafka_bootstrap, prefix, "status", "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert all(d["status"] != "running" for d in view["deployments"])
    span = (str(cmd.issued_at_ms - 30_000), str(int(time.time() * 1000)))
    replay = await asyncio.to_thread(
        _cli, kafka_bootstrap, prefix, "replay", "--from", span[0], "--to", span[1], "--deployment", dep, "--json"
    )
    assert replay.returncode == 0, replay.stderr

    # Checkpoints: junk under the stages' own keys is refused at the next restore.
    worker.kill()
    owners = [
        (f"{prefix}canary-streams-{stage}", topic, p)
        for stage, topic, parts in (("windows", topics.search_results, 6), ("merge", topics.window_partials, 3))
        for p in range(parts)
    ]
    keys = [state_key(*owner) for owner in owners]
    # The killed worker may have left a transaction open on canary_window_state; read_committed stops short of
    # it, so junk appended after it would stay invisible to a restore until it is aborted. The restarted stage
    # aborts its own at once, but one stage may restore while the other's is still open (then the junk is
    # simply not read at this restore). Fencing every owner id first aborts them all, as a restart does.
    for owner in owners:
        fencer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id(*owner))
        await fencer.start()
        await fencer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key in keys:
            await producer.send_and_wait(topics.window_state, NESTED, key=key)
    finally:
        await producer.stop()
    worker.start()

    async def refused_and_ready() -> bool:
        unreadable = [line for line in worker.log_lines() if "is unreadable" in line and "too_deep" in line]
        return len(unreadable) >= len(keys) and await asyncio.to_thread(worker.ready)

    await _until(
        refused_and_ready,
        90,
        lambda: f"every junk checkpoint refused, the worker ready again\n{worker.tail(80)}",
    )
    fleet.assert_running()
