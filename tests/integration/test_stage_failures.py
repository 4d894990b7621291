"""The failure paths of the windows stage and the merge step, on the real broker, with a real worker process.

Each test runs a deployment whose candidate is slow (it must be rolled back after two failing windows) under
steady load and breaks the worker in between the two failing windows:

- SIGKILL between produce and commit, in the windows stage and in the merge step. The kill is placed exactly
  by the stage itself (``CANARY_FAULT_KILL_FILE``, streams/transactional.py): once the test writes the stage's
  name into that file, the stage kills its own process in its next transaction that holds window output —
  the output acknowledged by the broker, the transaction not committed. Timing a SIGKILL from outside could
  not tell which side of the commit it hit.
- an unreadable state record: junk is written over every state record of both stages while the worker is
  stopped; the restarted worker dead-letters it and restores the state committed with each partition's
  offset under it (docs/adr/0004-*.md).
- a rebalance mid-window: a second worker joins the group while windows are open, and leaves again.

Then: every merged window counts exactly the outcomes whose time falls into it (none late), a window seen
twice on ``canary_windows`` is the same window (with transactions none is: the count is printed), and the
deployment is rolled back exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    make_backend,
    preset_ref,
    read_all,
    read_outcomes,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka

EMITTED_AT = ("emitted_at", "emitted_at_ms")
APP_ID = "canary-streams"  # StreamsConfig.app_id: the stages' groups are <prefix><app_id>-windows / -merge


def _topics(bootstrap: str, name: str) -> Topics:
    topics = Topics(f"{name}{uuid.uuid4().hex[:6]}.")
    ensure_topics(bootstrap, topics)
    return topics


def _worker(bootstrap: str, topics: Topics, tmp_path: Path, n: int = 0, **kw: Any) -> WorkerProcess:
    return WorkerProcess(
        bootstrap, topics, tmp_path / f"audit{n}.log", tmp_path / f"data{n}", tmp_path / f"worker{n}.log", **kw
    )


async def _failing_windows(bootstrap: str, topics: Topics, dep: str, want: int, timeout: float) -> int:
    """Tails the verdicts until ``want`` distinct failing candidate windows of ``dep`` were judged."""
    consumer = AIOKafkaConsumer(topics.verdicts, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    failing: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(failing) < want:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    w = json.loads(record.value).get("window") or {}
                    if w.get("deployment_id") == dep and any(v["outcome"] == "fail" for v in w.get("verdicts", [])):
                        failing.add(w["window_id"])
        return len(failing)
    finally:
        await consumer.stop()


class Scenario:
    """A router under load on a deployment whose candidate fails its SLO (rolled back after 2 failing windows)."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        backend = make_backend({"candidate_slow": Fault(added_latency_ms=1500)})
        self.router = RouterService(bootstrap, topics, backend, preset_ref("last_good"), consume_requests=False)
        self.cmd = start_command("candidate_slow", weight=0.3)
        self.load = LoadGenerator(self.router, qps=50)
        self.traffic: asyncio.Task[None] | None = None

    async def start(self, seconds: float) -> None:
        await self.router.start()
        await send_command(self.bootstrap, self.topics, self.cmd)
        self.traffic = asyncio.create_task(self.load.run(seconds))

    async def first_failing_window(self) -> None:
        n = await _failing_windows(self.bootstrap, self.topics, self.cmd.deployment_id, 1, 40)
        assert n == 1, "no failing candidate window judged"
        assert not await self.rollbacks(), "rolled back before the fault: the test would prove nothing"

    async def rollbacks(self) -> list[dict[str, Any]]:
        control = await read_all(self.bootstrap, self.topics.control)
        return [c for c in control if c.get("type") == "rollback" and c.get("deployment_id") == self.cmd.deployment_id]

    async def finish(self, timeout: float = 40) -> dict[str, dict[str, Any]]:
        """Traffic done, the deployment ended, every outcome counted in a merged window: windows by id."""
        assert self.traffic is not None
        await self.traffic
        await self.load.drain()
        await send_command(self.bootstrap, self.topics, end_command(self.cmd.deployment_id))
        produced = len(await read_outcomes(self.bootstrap, self.topics.search_results))
        deadline = time.monotonic() + timeout
        windows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            windows = await self.windows()
            if sum(int(w["response_count"]) for w in windows.values()) >= produced:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # a window emitted twice would reach the topic by now
        return await self.windows()

    async def windows(self) -> dict[str, dict[str, Any]]:
        """Merged windows by id, as a reader sees them; a window on the topic twice must be the same window."""
        by_id: dict[str, dict[str, Any]] = {}
        self.repeats = 0
        for w in await read_all(self.bootstrap, self.topics.windows):
            body = {k: v for k, v in w.items() if k not in EMITTED_AT}
            if w["window_id"] in by_id:
                self.repeats += 1
                assert by_id[w["window_id"]] == body, ("a window emitted twice with different contents", w)
            by_id[w["window_id"]] = body
        return by_id

    async def check(self, windows: dict[str, dict[str, Any]]) -> None:
        outcomes = await read_outcomes(self.bootstrap, self.topics.search_results)
        truth = Counter(
            (f"{o['deployment_id'] or '-'}|{o['config_name']}|{o['arm']}", o["ts"] - o["ts"] % 5000) for o in outcomes
        )
        seen: Counter[tuple[str, int]] = Counter()
        for w in windows.values():
            key = (f"{w['deployment_id'] or '-'}|{w['config_name']}|{w['arm']}", w["window_start_ms"])
            seen[key] += 1
            assert w["late_count"] == 0, w
            assert w["response_count"] == truth.get(key, 0), (w["window_id"], w["response_count"], truth.get(key, 0))
        assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1]  # one window per (key, slot)
        assert sum(int(w["response_count"]) for w in windows.values()) == len(outcomes)
        assert sum(1 for w in windows.values() if w["deployment_id"] == self.cmd.deployment_id) >= 4
        rollbacks = await self.rollbacks()
        assert len(rollbacks) == 1, rollbacks
        assert rollbacks[0]["reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"


@pytest.mark.parametrize("stage", ["windows", "merge"])
async def test_sigkill_between_output_and_checkpoint(kafka_bootstrap: str, tmp_path: Path, stage: str) -> None:
    topics = await asyncio.to_thread(_topics, kafka_bootstrap, f"kill{stage[0]}")
    armed = tmp_path / "kill"
    worker = _worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        instance_id=f"worker-{topics.prefix}",  # static membership: the restarted worker takes its partitions back
        extra_env={"CANARY_FAULT_KILL_FILE": str(armed)},
    )
    worker.start()
    run = Scenario(kafka_bootstrap, topics)
    try:
        await run.start(30)
        await run.first_failing_window()
        armed.write_text(stage)
        assert worker.proc is not None
        code = await asyncio.to_thread(worker.proc.wait, 20)
        assert code == -9, worker.log_tail()
        assert f"{stage}: fault injection: SIGKILL after output was acknowledged" in worker.log_tail(), (
            worker.log_tail()
        )
        worker.kill()  # already dead: closes its log
        armed.unlink()
        await asyncio.sleep(1)  # traffic goes on while the worker is down
        worker.start()
        windows = await run.finish()
    finally:
        await run.router.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
    await run.check(windows)
    print(f"{stage}: {run.repeats} window record(s) emitted again after the kill")


async def test_unreadable_checkpoints_are_recovered_by_lookback(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = await asyncio.to_thread(_topics, kafka_bootstrap, "unread")
    worker = _worker(kafka_bootstrap, topics, tmp_path, instance_id=f"worker-{topics.prefix}")
    worker.start()
    run = Scenario(kafka_bootstrap, topics)
    try:
        await run.start(30)
        await run.first_failing_window()
        assert worker.stop() == 0, worker.log_tail()  # its last transactions are committed on the way out
        keys = [
            f"{topics.prefix}{APP_ID}-{stage}|{source}|{p}".encode()
            for stage, source, partitions in (
                ("windows", topics.search_results, 6),
                ("merge", topics.window_partials, 3),
            )
            for p in range(partitions)
        ]
        state = await _records(kafka_bootstrap, topics.window_state)
        assert {r.key for r in state} & set(keys), state
        # Spread by key over the state topic's partitions: each restore reads only the ones holding its keys.
        assert len({r.partition for r in state}) > 1, sorted({r.partition for r in state})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key in keys:  # a corrupt, a truncated and a mistyped state record
                await producer.send_and_wait(
                    topics.window_state, [b"\x00junk", b'{"partition": 1, "wind', b"[]"][key[-1] % 3], key=key
                )
        finally:
            await producer.stop()
        worker.start()
        windows = await run.finish()
    finally:
        await run.router.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
    log = worker.log_path.read_text(errors="replace")
    assert "windows: checkpoint of partition" in log and "merge: checkpoint of partition" in log, worker.log_tail()
    assert "is unreadable" in log
    await run.check(windows)
    print(f"unreadable: {run.repeats} window record(s) emitted again after the restore")


async def test_rebalance_mid_window(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = await asyncio.to_thread(_topics, kafka_bootstrap, "rebal")
    first = _worker(kafka_bootstrap, topics, tmp_path, 0)
    second = _worker(kafka_bootstrap, topics, tmp_path, 1)
    first.start()
    run = Scenario(kafka_bootstrap, topics)
    try:
        await run.start(30)
        await run.first_failing_window()
        # Mid-window (a window closes every 5 s, the failing one just did): partitions with open windows
        # move to the newcomer with their state, and back when it leaves.
        await asyncio.sleep(1.5)
        second.start()
        deadline = time.monotonic() + 30
        while "windows: acquired partitions" not in second.log_tail(400) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert "windows: acquired partitions" in second.log_tail(400), second.log_tail()
        await asyncio.sleep(4)
        assert second.stop() == 0, second.log_tail()
        windows = await run.finish()
    finally:
        await run.router.stop()
        code = first.stop()
        second.stop()
    assert code == 0, first.log_tail()
    await run.check(windows)
    print(f"rebalance: {run.repeats} window record(s) emitted again")


async def _records(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out
