"""Issue #22 on the real broker: ``canary export`` verifies the control topic as the routers do.

An unsigned start + promote once exported as ``promoted`` with an audit saying ``success: true``; the routers
had rejected both. Now the export applies only what verification accepts, and the rebuilt audit.log says
``success: false`` with the reason. ``--insecure`` is the switch for an unsigned lab topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from msgspec.structs import replace

from canary.core.models import ControlCommand
from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import ROOT, signed
from devtools.signing import start

pytestmark = pytest.mark.kafka


def _promote(deployment_id: str, at: int) -> ControlCommand:
    return ControlCommand(
        command_id=f"promote-{deployment_id}",
        type="promote",
        deployment_id=deployment_id,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=1.0,
        reason="ship it",
        evidence=None,
        issued_by="cli:mallory",
        issued_at_ms=at,
    )


async def _export(settings: Settings, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CANARY_TOPIC_PREFIX": settings.topic_prefix, "CANARY_HOME": str(settings.home)}
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.effective_bootstrap
    env["CANARY_PROJECT_ROOT"] = str(out.parent / "project")  # no worker audit.log: rebuilt from the topics
    argv = [sys.executable, "-m", "canary.cli", "export", "--output", str(out), "--json", *extra]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


async def test_export_does_not_apply_an_unsigned_start_and_promote(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    lab = replace(start(command_id="start-lab", deployment_id="dep-lab"), issued_at_ms=now - 3000)
    real = replace(start(command_id="start-real", deployment_id="dep-real"), issued_at_ms=now - 2000)
    records: list[dict[str, Any]] = [
        lab.to_dict(),  # unsigned
        _promote("dep-lab", now - 2500).to_dict(),  # unsigned
        signed(real, topics),
        _promote("dep-real", now - 1000).to_dict(),  # unsigned
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.effective_bootstrap, acks="all")
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(topics.control, json.dumps(record).encode(), key=b"k")
    finally:
        await producer.stop()

    # The unsigned deployment never started, as far as the routers are concerned: nothing to export.
    lab_out = await _export(settings, tmp_path / "lab", "--deployment", "dep-lab")
    assert lab_out.returncode == 4, lab_out.stderr
    assert "no deployment 'dep-lab'" in lab_out.stderr

    # The signed one runs: its unsigned promote was not applied, and the audit says why.
    out = tmp_path / "real"
    result = await _export(settings, out)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["deployment_id"] == "dep-real" and payload["status"] == "running"
    assert payload["audit_source"] == "topics"
    audit = {e["details"]["command_id"]: e for e in map(json.loads, (out / "audit.log").read_text().splitlines())}
    assert audit["start-real"]["success"] is True
    for command_id in ("start-lab", "promote-dep-lab", "promote-dep-real"):
        assert audit[command_id]["success"] is False
        assert audit[command_id]["details"]["verification"]["reason"] == "unsigned"
        assert audit[command_id]["error_message"].startswith("rejected (unsigned): ")

    # An unsigned lab topic, read on purpose: --insecure applies what it holds.
    insecure = await _export(settings, tmp_path / "insecure", "--deployment", "dep-lab", "--insecure")
    assert insecure.returncode == 0, insecure.stderr
    assert json.loads(insecure.stdout)["status"] == "promoted"
