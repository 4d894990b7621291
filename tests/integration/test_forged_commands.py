"""Forged control commands through the real broker: none is applied, the candidate gets no traffic, every
one is audited with ``success: false`` and its reason, and counted.

Forgeries (issue #11): unsigned (``issued_by: mallory``, weight 1.0); signed with an untrusted key; a
valid signature over a tampered snapshot (hash kept); a snapshot tampered after signing; a replay of an old
command id; a snapshot that is not a valid preset (hash recomputed to match); plus an expired command, a
start signed with the SLO agent's worker key, and one signed for another environment (issue #19). A real
RouterService (live, and a second one started afterwards, which re-verifies the history), a real ``canary
worker`` process (registry + audit agent), and ``canary status``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.core.deployment import snapshot_hash
from canary.kafka.topics import Topics
from canary.security import REJECT_REASONS, CommandSigner, Scope
from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    end_command,
    make_backend,
    operator_signer,
    preset_ref,
    read_all,
    send_command,
    send_raw,
    signed,
    start_command,
    worker_signer,
)
from router.requests import SearchRequest
from router.service import RouterService, now_ms
from tests.integration.test_cli_ops import _canary, _env, _json

pytestmark = pytest.mark.kafka


def _forged_start(**changes: Any) -> dict[str, Any]:
    """A start of candidate_high_recall at 100 % with a fresh command id, as a plain dict."""
    body = start_command("candidate_high_recall", weight=1.0).to_dict()
    body["issued_by"] = "mallory"
    body.update(changes)
    return body


def _forgeries(replayed_start: dict[str, Any], topics: Topics) -> dict[str, tuple[dict[str, Any], str]]:
    """command label → (record as produced, the reason it must be rejected for)."""
    operator = operator_signer(topics)
    worker = worker_signer(topics)
    stranger = CommandSigner(Ed25519PrivateKey.generate(), scope=operator.scope)

    tampered = _forged_start()
    tampered["candidate_config"]["retriever"]["alpha"] = 0.05  # still a valid preset; hash left as it was

    after = operator.sign(_forged_start())
    after["candidate_config"]["retriever"]["top_k"] = 500  # edited after signing

    not_a_preset = _forged_start()
    not_a_preset["candidate_config"]["retriever"]["top_k"] = "fifty"
    not_a_preset["candidate_config_hash"] = snapshot_hash(not_a_preset["candidate_config"])

    old = now_ms() - 10 * 60_000
    return {
        "unsigned": (_forged_start(), "unsigned"),
        "untrusted key": (stranger.sign(_forged_start()), "unknown_key"),
        "signed tampered snapshot": (operator.sign(tampered), "hash_mismatch"),
        "tampered after signing": (after, "bad_signature"),
        "replay of an old command id": (replayed_start, "replayed"),
        "not a valid preset": (operator.sign(not_a_preset), "invalid_preset"),
        "expired": (operator.sign(_forged_start(issued_at_ms=old)), "expired"),
        "worker key signs a start": (worker.sign(_forged_start()), "key_not_permitted"),
        "signed for another environment": (
            operator.for_scope(Scope("prod", f"{topics.prefix}prod.canary_control")).sign(_forged_start()),
            "wrong_scope",
        ),
    }


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_forged_commands_are_never_applied_and_are_audited(
    settings: Settings, topics: Topics, kafka_bootstrap: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path / "audit.log", tmp_path / "data", tmp_path / "worker.log")
    worker.start()
    router = RouterService(
        kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False, heartbeat_seconds=1.0
    )
    await router.start()
    late_router: RouterService | None = None
    try:
        # A real, signed canary that ran and ended: its start is the "old command id" replayed below.
        real = start_command("candidate_high_recall", weight=0.2)
        real_payload = signed(real, topics)
        await send_raw(kafka_bootstrap, topics, real_payload, key=real.deployment_id)
        await send_command(kafka_bootstrap, topics, end_command(real.deployment_id, "abort"))
        deadline = time.monotonic() + 15
        while len(router.stats.applied) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [t for _, t, _ in router.stats.applied] == ["start", "abort"]
        assert router.ledger.current is None

        load = LoadGenerator(router, qps=40, seed=7)
        traffic = asyncio.create_task(load.run(8))
        await asyncio.sleep(0.5)
        candidate_before = router.stats.by_arm["candidate"]
        forged = _forgeries(real_payload, topics)
        for record, _ in forged.values():
            await send_raw(kafka_bootstrap, topics, record, key=str(record.get("deployment_id")))
            await asyncio.sleep(0.3)  # each forgery gets some traffic routed after it
        await traffic
        await load.drain()

        # 0 applied, candidate share stays 0, and the router counted each reason.
        assert [t for _, t, _ in router.stats.applied] == ["start", "abort"]
        assert router.ledger.current is None
        assert router.stats.by_arm["candidate"] == candidate_before
        for i in range(200):  # and right now every request goes to last_good
            _, used = router.route(SearchRequest(request_id=f"probe-{i}", query="q", collection="c", user_id=f"u{i}"))
            assert used.arm == "last_good"
        expected_counts: dict[str, int] = {}
        for _, reason in forged.values():
            expected_counts[reason] = expected_counts.get(reason, 0) + 1
        assert router.stats.rejected_commands == expected_counts
        # …and on /metrics (the registry its endpoint serves): each reason, nothing else, 0 forgeries applied.
        registry = router.metrics.registry
        for reason in REJECT_REASONS:
            value = registry.get_sample_value("canary_router_commands_rejected_total", {"reason": reason})
            assert value == expected_counts.get(reason, 0), reason
        assert registry.get_sample_value("canary_router_commands_applied_total", {"type": "start"}) == 1
        assert registry.get_sample_value("canary_router_requests_total", {"arm": "candidate"}) == candidate_before
        counts = router.verifier.counts()
        assert counts["accepted"] == 2 and all(counts[r] == n for r, n in expected_counts.items())

        # A router started now re-verifies the whole history and reaches the same state.
        late_router = RouterService(
            kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False
        )
        await late_router.start()
        assert late_router.ledger.current is None
        assert late_router.stats.rejected_commands == expected_counts
        assert [t for _, t, _ in late_router.stats.applied] == ["start", "abort"]

        # Each forgery audited with success false and its reason; the real commands with success true.
        control = await read_all(kafka_bootstrap, topics.control)
        assert len(control) == 2 + len(forged)
        deadline = time.monotonic() + 60
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            lines = [e for e in _audit_lines(worker.audit_log) if e["event_id"].startswith("control:")]
            if len(lines) >= len(control):
                break
            await asyncio.sleep(0.5)
        assert len(lines) == len(control), (lines, worker.log_tail())
        by_id = {e["event_id"]: e for e in lines}
        assert by_id[f"control:{real.command_id}"]["success"] is True
        assert by_id[f"control:{real.command_id}"]["details"]["verification"]["accepted"] is True
        failures = [e for e in lines if not e["success"]]
        assert len(failures) == len(forged)
        for label, (record, reason) in forged.items():
            line = next(e for e in failures if e["details"]["command_id"] == record["command_id"])
            assert line["event_id"].startswith(f"control:{record['command_id']}@"), label
            assert line["error_message"].startswith(f"rejected ({reason}): "), (label, line["error_message"])
            assert line["details"]["verification"]["reason"] == reason, label

        # `canary status` agrees: idle, the forgeries listed as rejected.
        status = await _canary("status", "--json", env=_env(settings))
        assert status.returncode == 0, status.stderr
        payload = _json(status)
        assert payload["status"] == "aborted" and payload["traffic_split"]["candidate"] == 0.0
        assert sorted(r["reason"] for r in payload["rejected_commands"]) == sorted(r for _, r in forged.values())
    finally:
        await router.stop()
        if late_router is not None:
            await late_router.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()


async def test_cli_reports_a_start_the_routers_reject(settings: Settings, topics: Topics, tmp_path: Path) -> None:
    """An operator whose key is not trusted by the routers is told so, instead of a bare timeout."""
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
        rogue = tmp_path / f"rogue-{uuid.uuid4().hex[:6]}.key"
        made = await _canary(
            "keys", "init", "--key", str(rogue), "--trusted-dir", str(tmp_path / "own"), env=_env(settings)
        )
        assert made.returncode == 0, made.stderr
        env = _env(settings, CANARY_OPERATOR_KEY=str(rogue))
        result = await _canary("start", "candidate_high_recall", "--timeout", "3", "--json", env=env)
        assert result.returncode == 4, result.stderr
        assert "REJECTED" in result.stderr and "unknown_key" in result.stderr
        assert "own verification would reject" in result.stderr  # warned before sending
        assert _json(result)["rejected"].startswith("rejected (unknown_key)")
        assert router.ledger.current is None and router.stats.rejected_commands == {"unknown_key": 2}  # + its abort
    finally:
        await router.stop()
