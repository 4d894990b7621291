"""The remaining CLI commands on the real broker: load, weight/pause/resume, watch, router (as a process)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import ROOT, make_backend, preset_ref, read_all, read_outcomes
from router.service import RouterService
from tests.integration.test_cli_ops import _canary, _env, _json

pytestmark = pytest.mark.kafka


async def test_load_produces_labeled_requests_and_rejects_bad_args(settings: Settings, topics: Topics) -> None:
    env = _env(settings)
    result = await _canary("load", "--qps", "50", "--duration", "2", "--users", "7", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = _json(result)
    assert report["sent"] == 100 and report["labeled"] == 100 and report["users"] == 7
    assert report["acked"] == 100 and report["failed"] == 0  # counted from the broker's acks
    requests = await read_all(settings.effective_bootstrap, topics.search_requests)
    assert len(requests) == 100
    assert all(r["relevant_ids"] and r["user_id"].startswith("user-") for r in requests)
    assert len({r["user_id"] for r in requests}) <= 7

    bad = await _canary("load", "--qps", "0", "--duration", "2", env=env)
    assert bad.returncode == 2 and "--qps 0" in bad.stderr


async def test_load_unlabeled_sends_the_queries_without_labels(settings: Settings, topics: Topics) -> None:
    result = await _canary("load", "--qps", "50", "--duration", "1", "--unlabeled", env=_env(settings))
    assert result.returncode == 0, result.stderr
    assert "sent 50 unlabeled queries" in result.stdout
    requests = await read_all(settings.effective_bootstrap, topics.search_requests)
    assert len(requests) == 50 and all(r["relevant_ids"] is None and r["query"] for r in requests)


async def test_weight_pause_resume_and_watch(settings: Settings, topics: Topics) -> None:
    env = _env(settings)
    nothing = await _canary("pause", "--json", env=env)
    assert nothing.returncode == 4 and "nothing to pause" in nothing.stderr

    router = RouterService(
        settings.effective_bootstrap,
        topics,
        make_backend(),
        preset_ref("last_good"),
        consume_requests=False,
        heartbeat_seconds=1.0,
    )
    await router.start()
    try:
        await asyncio.sleep(1.5)
        assert (await _canary("start", "candidate_high_recall", env=env)).returncode == 0
        weight = await _canary("weight", "0.25", "--json", env=env)
        assert weight.returncode == 0 and _json(weight)["ok"], weight.stderr
        assert router.ledger.current is not None and router.ledger.current.weight == 0.25
        paused = await _canary("pause", "--json", env=env)
        assert paused.returncode == 0, paused.stderr
        assert router.ledger.current.status == "paused" and router.ledger.current.candidate_weight == 0.0
        _, used = await router.execute_search("q1", "documents", user_id="anyone")
        assert used["arm"] == "last_good"
        resumed = await _canary("resume", "--json", env=env)
        assert resumed.returncode == 0 and router.ledger.current.status == "running"
        status = _json(await _canary("status", "--json", env=env))
        assert status["traffic_split"] == {"active": 0.75, "candidate": 0.25}

        # watch --json streams last_good windows and judged candidate windows as they are published (here:
        # one of each that we publish ourselves, once it says it is watching: on a loaded machine the
        # process can take seconds to get there, and what came before is not "from now on").
        watcher = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "canary.cli", "watch", "--json", "--seconds", "4"),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watcher.stderr is not None
        ready = await asyncio.wait_for(watcher.stderr.readline(), 60)
        assert ready.startswith(b"watching ") and b"from now on" in ready, ready
        from aiokafka import AIOKafkaProducer

        window = {
            "deployment_id": status["deployment_id"],
            "config_name": "last_good",
            "arm": "last_good",
            "window_start_ms": 1_000_000,
            "window_end_ms": 1_005_000,
            "duration_sec": 5,
            "response_count": 30,
            "error_count": 0,
            "p95_ms": 400.0,
            "recall_at_10": 0.9,
            "recall_samples": 30,
            "slo_violations": 0,
            "verdicts": [],
            "late_count": 0,
            "emitted_at_ms": 1_006_000,
        }
        producer = AIOKafkaProducer(bootstrap_servers=settings.effective_bootstrap)
        await producer.start()
        await producer.send_and_wait(topics.windows, json.dumps(window).encode(), key=b"k")
        judged = {**window, "config_name": "candidate_high_recall", "arm": "candidate", "response_count": 25}
        # An unjudged candidate window is not shown: its judged copy comes from the verdicts topic.
        await producer.send_and_wait(topics.windows, json.dumps(judged).encode(), key=b"k")
        judgement = {"window": judged, "streaks": {"p95_ms": 0}, "insufficient_windows": 0, "decision": None}
        await producer.send_and_wait(topics.verdicts, json.dumps(judgement).encode(), key=b"k")
        await producer.stop()
        out, err = await asyncio.wait_for(watcher.communicate(), 60)
        assert watcher.returncode == 0, err
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        counts = sorted(
            line["window"]["response_count"] if "window" in line else line["response_count"] for line in lines
        )
        assert counts == [25, 30]
    finally:
        await router.stop()


def test_router_command_serves_requests_and_stops_cleanly(settings: Settings, topics: Topics) -> None:
    env = _env(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "canary.cli", "router", "--router-id", "cli-router", "--reply"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        load = subprocess.run(
            [sys.executable, "-m", "canary.cli", "load", "--qps", "20", "--duration", "1", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert load.returncode == 0, load.stderr
        deadline = time.monotonic() + 60
        outcomes: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(outcomes) < 20:
            outcomes = asyncio.run(read_outcomes(settings.effective_bootstrap, topics.search_results))
            time.sleep(0.5)
        assert len(outcomes) == 20
        assert {o["router_id"] for o in outcomes} == {"cli-router"}
        # The bundled hybrid retriever with labels from exhaustive search: last_good's recall is real.
        assert 0.3 < sum(o["recall_at_10"] for o in outcomes) / 20 <= 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode(errors="replace")[-2000:]
    assert b"router stopped cleanly" in output
