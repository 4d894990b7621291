"""Environments on one real broker (issue #12): separate namespaces, overrides, and staging → prod."""

from __future__ import annotations

import asyncio

import pytest

from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings
from devtools.harness import read_all
from tests.integration.test_cli_ops import _canary, _env, _json

pytestmark = pytest.mark.kafka


async def test_staging_then_prod_each_in_its_own_namespace(settings: Settings, kafka_bootstrap: str) -> None:
    env = _env(settings)
    staging, prod = settings.in_environment("staging"), settings.in_environment("prod")
    for s in (settings, staging, prod):
        await asyncio.to_thread(ensure_topics, kafka_bootstrap, Topics(s.topic_prefix))

    # prod requires the same preset to have passed staging first: refused, nothing written to prod.
    refused = await _canary("--env", "prod", "start", "candidate_high_recall", "--no-router-check", env=env)
    assert refused.returncode == 4, refused.stderr
    assert "has not passed a canary in environment 'staging'" in refused.stderr
    assert await read_all(kafka_bootstrap, Topics(prod.topic_prefix).control, timeout=3) == []

    started = await _canary(
        "--env", "staging", "start", "candidate_high_recall", "--no-router-check", "--json", env=env
    )
    assert started.returncode == 0, started.stderr
    status = _json(await _canary("--env", "staging", "status", "--json", env=env))
    assert "status" in status, status
    assert status["status"] == "running" and status["weight"] == 0.2  # staging's default weight
    for other in (("--env", "prod"), ()):
        other_status = _json(await _canary(*other, "status", "--json", env=env))
        assert other_status.get("status") == "idle", (other, other_status)

    promoted = await _canary("--env", "staging", "stop", "--promote", "--allow-unacked", env=env)
    assert promoted.returncode == 0, promoted.stderr

    started = await _canary("--env", "prod", "start", "candidate_high_recall", "--no-router-check", env=env)
    assert started.returncode == 0, started.stderr
    status = _json(await _canary("--env", "prod", "status", "--json", env=env))
    assert status["status"] == "running" and status["weight"] == 0.05

    prod_commands = await read_all(kafka_bootstrap, Topics(prod.topic_prefix).control)
    staging_commands = await read_all(kafka_bootstrap, Topics(staging.topic_prefix).control)
    assert [c["type"] for c in prod_commands] == ["start"]
    assert [c["type"] for c in staging_commands] == ["start", "promote"]
    start = prod_commands[0]
    assert start["candidate_config"]["slo"]["p95_ms"] == 1000.0  # prod's override
    stamp = start["candidate_config"]["environment"]
    assert stamp == {
        "name": "prod",
        "preset_hash": staging_commands[0]["candidate_config"]["environment"]["preset_hash"],
    }
    assert {c["deployment_id"] for c in prod_commands}.isdisjoint(c["deployment_id"] for c in staging_commands)
    assert await read_all(kafka_bootstrap, Topics(settings.topic_prefix).control, timeout=3) == []

    unknown = await _canary("--env", "qa", "status", env=env)
    assert unknown.returncode == 2 and "unknown environment 'qa'" in unknown.stderr
