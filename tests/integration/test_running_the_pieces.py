"""README's "Running the pieces" on the real broker: `canary router` with its defaults — the Cranfield collection
and the real model, every query encoded by all-MiniLM-L6-v2 — serves `canary load` at the README's --qps
with 0 errors, and its outcomes carry recall from the human judgments (issue #25)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

from canary.kafka.topics import Topics, ensure_topics_async
from devtools.harness import ROOT, read_all, read_outcomes

QPS = 60  # README: canary load --qps 60
SECONDS = 15


def _router(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "canary.cli", "router", "--router-id", "pieces-router"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


# It measures what one router serves on this machine's 2 cores: another full stack beside it would change that.
@pytest.mark.solo
async def test_the_default_router_serves_the_readme_load_with_the_real_model(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(f"pieces{uuid.uuid4().hex[:6]}.")
    await ensure_topics_async(kafka_bootstrap, topics.specs())
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CANARY_TOPIC_PREFIX": topics.prefix,
        "CANARY_PROJECT_ROOT": str(ROOT),
    }
    for name in ("CANARY_RERANK", "CANARY_CORPUS"):  # the README's defaults, not the suite's choice
        env.pop(name, None)
    log = (tmp_path / "router.log").open("wb")
    router = _router(env, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = await read_all(kafka_bootstrap, topics.state)
            if any(s.get("router_id") == "pieces-router" for s in states):
                break
            assert router.poll() is None, (tmp_path / "router.log").read_text()[-3000:]
            await asyncio.sleep(0.5)
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "canary.cli",
            "load",
            "--qps",
            str(QPS),
            "--duration",
            str(SECONDS),
            "--json",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(load.communicate(), 90)
        report = json.loads(out)
        assert report["acked"] == QPS * SECONDS
        deadline = time.monotonic() + 60
        outcomes: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            outcomes = await read_outcomes(kafka_bootstrap, topics.search_results)
            if len(outcomes) >= QPS * SECONDS:
                break
            await asyncio.sleep(1)
    finally:
        router.terminate()
        router.wait(30)
        log.close()
    text = (tmp_path / "router.log").read_text()
    assert len(outcomes) == QPS * SECONDS, text[-3000:]
    errors = [o["error"] for o in outcomes if o.get("error")]
    assert errors == [], f"{len(errors)} errors: {sorted(set(map(str, errors)))}\n{text[-3000:]}"
    latencies = sorted(float(str(o["latency_ms"])) for o in outcomes)
    assert latencies[int(0.95 * len(latencies))] < 1200  # the SLO's p95, with room to spare on a quiet box
    recall = statistics.fmean(float(str(o["recall_at_10"])) for o in outcomes)
    assert 0.35 < recall < 0.6  # last_good against Cranfield's human judgments (docs/presets.md: ~0.44)
    assert {o["config_name"] for o in outcomes} == {"last_good"}
