"""The operator CLI against the real broker: list, status, start, stop — success and failure paths."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from canary.settings import Settings
from devtools.harness import ROOT, make_backend, preset_ref
from router.service import RouterService

pytestmark = pytest.mark.kafka


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CANARY_TOPIC_PREFIX": settings.topic_prefix, "CANARY_HOME": str(settings.home)}
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.effective_bootstrap
    env.update(extra)
    return env


async def _canary(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "canary.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


async def test_list_shows_shipped_presets_valid() -> None:
    result = await _canary("list", "--json", env={**os.environ})
    assert result.returncode == 0, result.stderr
    presets = {p["name"]: p for p in _json(result)["presets"]}
    assert set(presets) >= {"last_good", "candidate_high_recall", "candidate_slow", "candidate_low_recall"}
    assert all(p["valid"] and len(p["hash"]) == 16 for p in presets.values())


async def test_list_marks_invalid_preset(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "configs", root / "configs")
    shutil.copy(ROOT / "tests/fixtures/bad_presets/alpha_out_of_range.yaml", root / "configs/presets/")
    result = await _canary("list", "--json", env={**os.environ, "CANARY_PROJECT_ROOT": str(root)})
    assert result.returncode == 2
    bad = next(p for p in _json(result)["presets"] if p["name"] == "alpha_out_of_range")
    assert bad["valid"] is False and "retriever.alpha" in bad["error"]


async def test_start_status_stop_cycle_with_router_acks(settings: Settings, topics: Any) -> None:
    env = _env(settings)
    idle = await _canary("status", "--json", env=env)
    assert idle.returncode == 0, idle.stderr
    assert _json(idle)["status"] == "idle" and _json(idle)["last_good"] == "last_good"

    # No live router yet: refusing beats a canary nobody serves.
    refused = await _canary("start", "candidate_high_recall", env=env)
    assert refused.returncode == 4 and "no live router" in refused.stderr

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
        started = await _canary("start", "candidate_high_recall", "--json", env=env)
        assert started.returncode == 0, started.stderr
        ack = _json(started)
        assert ack["ok"] and ack["acked_by"] == [router.router_id]
        assert router.ledger.current is not None and router.ledger.current.candidate.name == "candidate_high_recall"

        # One canary at a time: a second start is refused, naming the running one and how to proceed …
        dep = ack["deployment_id"]
        again = await _canary("start", "candidate_slow", "--json", env=env)
        assert again.returncode == 4 and _json(again)["error"] == "DeploymentError"
        assert f"canary: error: a canary is already running: {dep} (candidate_high_recall, weight 0.1, running)" in (
            again.stderr
        )
        assert "End it first (canary stop --promote | --rollback), or ask for" in again.stderr
        assert "--parallel" in again.stderr
        # … the same preset never twice, even when several are asked for …
        twice = await _canary("start", "candidate_high_recall", "--parallel", env=env)
        assert twice.returncode == 4
        assert f"candidate_high_recall is already running as {dep} (weight 0.1, running)" in twice.stderr
        assert f"End it first: canary stop --deployment {dep} --promote | --rollback" in twice.stderr
        # … and with --parallel a second candidate is allowed (A/B/n) only while last_good keeps its minimum share.
        crowded = await _canary("start", "candidate_slow", "--weight", "0.45", "--parallel", "--json", env=env)
        assert crowded.returncode == 4
        assert "would leave last_good 0.45 of traffic, under the minimum 0.5" in crowded.stderr
        assert _json(crowded)["error"] == "DeploymentError"
        assert [d.deployment_id for d in router.ledger.live] == [dep]  # none of them reached the topic

        status = _json(await _canary("status", "--json", env=env))
        assert status["status"] == "running"
        assert status["candidate_config"] == "candidate_high_recall"
        assert status["traffic_split"] == {"active": 0.9, "candidate": 0.1}
        assert status["deployment_id"] == ack["deployment_id"]
        assert {"total_requests", "active_config", "last_good"} <= set(status)

        promoted = await _canary("stop", "--promote", "--json", env=env)
        assert promoted.returncode == 0, promoted.stderr
        status = _json(await _canary("status", "--json", env=env))
        assert status["status"] == "promoted"
        assert status["last_good"] == "candidate_high_recall" and status["active_config"] == "candidate_high_recall"
        assert router.ledger.last_good is not None and router.ledger.last_good.name == "candidate_high_recall"
        one = await _canary("status", "--deployment", dep, "--json", env=env)
        assert one.returncode == 0 and _json(one)["deployment_id"] == dep and _json(one)["status"] == "promoted"
        unknown = await _canary("status", "--deployment", "nope", env=env)
        assert unknown.returncode == 4 and f"no deployment 'nope' on the control topic (latest: {dep} (promoted))" in (
            unknown.stderr
        )

        nothing = await _canary("stop", "--rollback", env=env)
        assert nothing.returncode == 4 and "nothing to stop" in nothing.stderr
    finally:
        await router.stop()


async def test_unknown_preset_lists_known_ones(settings: Settings) -> None:
    result = await _canary("start", "no_such_preset", env=_env(settings))
    assert result.returncode == 2
    assert "no_such_preset" in result.stderr and "candidate_high_recall" in result.stderr
    baseline = await _canary("start", "last_good", "--json", env=_env(settings))
    assert baseline.returncode == 2 and _json(baseline)["error"] == "ConfigError"
    assert "'last_good' is the baseline; start a candidate preset instead" in baseline.stderr


async def test_invalid_preset_cannot_start(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "configs", root / "configs")
    shutil.copy(ROOT / "tests/fixtures/bad_presets/negative_top_k.yaml", root / "configs/presets/")
    result = await _canary("start", "negative_top_k", env=_env(settings, CANARY_PROJECT_ROOT=str(root)))
    assert result.returncode == 2
    assert "negative_top_k.yaml" in result.stderr and "top_k" in result.stderr


async def test_kafka_unreachable_names_address_and_status_falls_back_to_cache(settings: Settings, topics: Any) -> None:
    env = _env(settings)
    assert (await _canary("status", "--json", env=env)).returncode == 0  # populates the cache
    down = _env(settings, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    cached = await _canary("status", "--json", env=down)
    assert cached.returncode == 0, cached.stderr
    assert _json(cached)["source"] == "cache"
    start = await _canary("start", "candidate_high_recall", env=down)
    assert start.returncode == 3 and "127.0.0.1:1" in start.stderr


async def test_commands_no_router_acknowledged_fail_unless_accepted(settings: Settings, topics: Any) -> None:
    env = _env(settings)
    started = await _canary("start", "candidate_high_recall", "--no-router-check", "--json", env=env)
    assert started.returncode == 0, started.stderr  # the operator said so with --no-router-check
    paused = await _canary("pause", "--json", env=env)
    assert paused.returncode == 4
    assert "no live router acknowledged it" in paused.stderr and "--allow-unacked" in paused.stderr
    assert _json(paused)["ok"] is False
    resumed = await _canary("resume", "--allow-unacked", "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    stopped = await _canary("stop", "--rollback", "--allow-unacked", env=env)
    assert stopped.returncode == 0, stopped.stderr
