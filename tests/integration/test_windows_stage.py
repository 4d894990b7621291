"""The windows stage on a backlog: a worker started after the outcomes were produced counts them all once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from canary.core.models import SearchOutcome
from canary.kafka.topics import Topics, ensure_topics
from canary.pipeline.native import NATIVE
from devtools.harness import WorkerProcess, read_all

pytestmark = pytest.mark.kafka


def _outcome(i: int, base: int, dep: str) -> SearchOutcome:
    arm = "candidate" if i % 5 == 0 else "last_good"
    return SearchOutcome(
        event_id=f"r:{i}",
        request_id=str(i),
        ts=base + i * 15_000 // N,  # N outcomes over 15 s: three windows
        deployment_id=dep,
        config_name="candidate_slow" if arm == "candidate" else "last_good",
        config_version="1",
        config_hash="h",
        arm=arm,  # type: ignore[arg-type]
        latency_ms=100.0 + i % 50,
        recall_at_10=0.5,
        result_count=10,
        error=None,
        router_id="r",
    )


N = 6000  # enough for fetches of more than AHEAD_ROWS records a partition


# Both decoders of the windows stage: the native batch decoder (when built) and the pure-Python reference path.
@pytest.mark.parametrize("native", ["auto", "off"])
async def test_backlog_is_aggregated_completely_and_once(kafka_bootstrap: str, tmp_path: Path, native: str) -> None:
    topics = Topics(f"stage{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics)
    base = (int(time.time() * 1000) // 5000 - 10) * 5000
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=10)
    await producer.start()
    try:
        for i in range(N):
            o = _outcome(i, base, "canary_backlog")
            await producer.send(
                topics.search_results, json.dumps(o.to_dict()).encode(), key=o.window_key.as_str().encode()
            )
        await producer.send_and_wait(topics.search_results, b"{not json")
    finally:
        await producer.stop()
    worker = WorkerProcess(
        kafka_bootstrap,
        topics,
        tmp_path / "audit.log",
        tmp_path / "d",
        tmp_path / "w.log",
        extra_env={"CANARY_NATIVE": native},
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        windows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            windows = [w for w in await read_all(kafka_bootstrap, topics.windows) if w["deployment_id"]]
            if sum(int(w["response_count"]) for w in windows) >= N:  # type: ignore[call-overload]
                break
            await asyncio.sleep(0.5)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    log = worker.log_tail(10_000)
    runs = "fetched bytes read natively into runs" in log
    assert runs == (native == "auto" and NATIVE is not None)  # the consumer of canary.kafka.runs, where it is built
    # A backlog's partitions (~1,000 records each) decode one ahead on the other core with the native decoder.
    assert ("next partition decodes on another core" in log) == (native == "auto" and NATIVE is not None)
    by_id = {w["window_id"]: w for w in windows}
    assert sum(int(w["response_count"]) for w in by_id.values()) == N  # type: ignore[call-overload]
    assert {w["window_start_ms"] for w in by_id.values()} == {base, base + 5000, base + 10000}
    dead = await read_all(kafka_bootstrap, topics.results_dlq)
    assert len(dead) == 1 and dead[0]["reason"] == "not_json" and dead[0]["source_topic"] == topics.search_results
