"""Two workers share the windows stage; one is SIGKILLed: its partitions move over with their state and
every window still counts exactly the outcomes that fell into it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

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


async def test_windows_survive_losing_one_of_two_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(f"two{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    workers = [
        WorkerProcess(kafka_bootstrap, topics, tmp_path / f"audit{i}.log", tmp_path / f"d{i}", tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    for w in workers:
        w.start()
    router = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    await router.start()
    try:
        cmd = start_command("candidate_high_recall", weight=0.3)
        await send_command(kafka_bootstrap, topics, cmd)
        await asyncio.sleep(8)  # both workers joined and share the partitions
        load = LoadGenerator(router, qps=60)
        traffic = asyncio.create_task(load.run(30))
        await asyncio.sleep(9)
        shares = [_acquired(w) for w in workers]
        workers[0].kill()  # its partitions move to the survivor after the session timeout
        # The candidate breaks after the crash: the survivor alone must roll it back, exactly once.
        router.backend.faults = {"candidate_high_recall": Fault(added_latency_ms=1500)}  # type: ignore[attr-defined]
        await traffic
        await load.drain()
        await send_command(kafka_bootstrap, topics, end_command(cmd.deployment_id))
        # Every outcome is on the topic once the load drained (acknowledged): wait until the windows
        # account for all of them (the last slot of every key), not just until one key's last window.
        produced = len(await read_outcomes(kafka_bootstrap, topics.search_results))
        deadline = time.monotonic() + 45
        windows: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            for w in await read_all(kafka_bootstrap, topics.windows):
                windows[str(w["window_id"])] = w
            if sum(int(w["response_count"]) for w in windows.values()) >= produced:  # type: ignore[call-overload]
                break
            await asyncio.sleep(1)
    finally:
        await router.stop()
        for w in workers:
            w.stop()
    outcomes = await read_outcomes(kafka_bootstrap, topics.search_results)
    truth = Counter(
        (f"{o['deployment_id'] or '-'}|{o['config_name']}|{o['arm']}", o["ts"] - o["ts"] % 5000) for o in outcomes
    )
    checked = 0
    logs = "\n".join(f"--- worker {i}\n{w.log_tail(60)}" for i, w in enumerate(workers))
    for w in windows.values():
        key = (f"{w['deployment_id'] or '-'}|{w['config_name']}|{w['arm']}", w["window_start_ms"])
        assert w["late_count"] == 0, w
        assert w["response_count"] == truth.get(key, 0), (w["window_id"], w["response_count"], truth.get(key, 0), logs)
        checked += 1
    counted = sum(int(w["response_count"]) for w in windows.values())  # type: ignore[call-overload]
    assert counted == len(outcomes), (counted, len(outcomes))
    assert checked >= 8
    # Six search_results partitions, two workers: each held a share of the windows stage before the crash.
    assert all(shares) and shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(6)), shares
    rollbacks = [c for c in await read_all(kafka_bootstrap, topics.control) if c["type"] == "rollback"]
    assert len(rollbacks) == 1, workers[1].log_tail()


def _acquired(worker: WorkerProcess) -> set[int]:
    """The search_results partitions the worker's windows stage holds now (from its log)."""
    held: set[int] = set()
    for line in worker.log_tail(400).splitlines():
        if "windows: acquired partitions" in line:
            listed = line.split("holding [", 1)[1].split("]", 1)[0]
            held = {int(p) for p in listed.split(",") if p.strip()}
    return held
