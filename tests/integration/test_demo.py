"""The main job: `canary demo` rolls a bad candidate back, promotes a good one, writes the reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from canary.settings import Settings
from tests.integration.harness import ROOT

pytestmark = pytest.mark.kafka


def test_demo_end_to_end(kafka_bootstrap: str, base_settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CANARY_HOME": str(tmp_path / "home")}
    env.pop("CANARY_TOPIC_PREFIX", None)
    result = subprocess.run(
        [sys.executable, "scripts/demo_canary.py", "--output", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "ROLLED BACK automatically: SLO violation: p95_ms failed for 2 consecutive buckets" in out
    assert "PROMOTED candidate_high_recall" in out

    rolled = json.loads((tmp_path / "out" / "canary_result.json").read_text())
    assert rolled["status"] == "rolled_back" and rolled["candidate_config"] == "candidate_slow"
    assert rolled["rollback_reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    promoted = json.loads((tmp_path / "out" / "promoted" / "canary_result.json").read_text())
    assert promoted["status"] == "promoted"
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["bucket_duration_sec"] == 5 and metrics["total_buckets"] == len(metrics["buckets"]) > 0
    audit = [json.loads(line) for line in (tmp_path / "out" / "audit.log").read_text().splitlines()]
    types = {e["event_type"] for e in audit}
    assert {"canary_start", "canary_rollback", "canary_promote", "router_state"} <= types
    assert "<svg" in (tmp_path / "out" / "report.html").read_text()
    # Everything the demo started is gone: no worker or router left behind.
    leftovers = subprocess.run(["pgrep", "-af", "canary.cli"], capture_output=True, text=True)
    assert str(tmp_path) not in leftovers.stdout
