"""A stolen worker key cannot walk a rollout plan faster than the plan allows, and a command signed for
another environment is refused — on the real broker (issue #19).

The attacker holds the SLO agent's worker key and may write the control topic. While
``candidate_progressive`` runs (steps 10 → 25 → 50 → 100 %, 2 windows each, promotion ≥ 30 s after the
start) it forges every step and the promotion before their time: the issue's exact attack (step 1, 2, 3
and the promotion within a second, no judged window), then fabricated window citations at each step the
operator moved the canary to. None is applied by the router, a router started afterwards (re-reading the
history), the worker's registry or ``canary status``; each is audited ``success: false`` with its reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from canary.core.models import CommandType, ControlCommand
from canary.core.rollout import candidate_window_id, promote_command_id, step_command_id
from canary.kafka.topics import Topics
from canary.security import Scope
from canary.settings import Settings
from devtools.harness import (
    WorkerProcess,
    make_backend,
    operator_signer,
    preset_ref,
    send_command,
    send_raw,
    start_command,
    worker_signer,
)
from router.service import RouterService, now_ms
from tests.integration.test_cli_ops import _canary, _env, _json

pytestmark = pytest.mark.kafka
CANDIDATE = "candidate_progressive"
W = 5000


def _rollout(dep: str, command_id: str, kind: CommandType, weight: float | None, evidence: Any) -> ControlCommand:
    return ControlCommand(command_id, kind, dep, None, None, None, weight, "forged", evidence, "slo-agent", now_ms())


def _operator(dep: str, kind: CommandType, weight: float | None = None, n: int = 0) -> ControlCommand:
    return ControlCommand(f"{kind}-op-{n}-{dep}", kind, dep, None, None, None, weight, "op", None, "cli:t", now_ms())


def _fabricated(dep: str, began_ms: int, *, before: bool = False) -> dict[str, Any]:
    """The two aligned windows a forger would cite: the first ones of the step (they have not ended yet,
    the step began less than a second ago), or two from before it began."""
    first = -(-began_ms // W) * W
    starts = (first - 3 * W, first - 2 * W) if before else (first, first + W)
    return {"windows": [candidate_window_id(dep, CANDIDATE, s) for s in starts], "window_ms": W}


def _audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _until(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_a_stolen_worker_key_cannot_walk_the_plan_early_nor_a_command_cross_environments(
    settings: Settings, topics: Topics, kafka_bootstrap: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path / "audit.log", tmp_path / "data", tmp_path / "worker.log")
    worker.start()
    router = RouterService(
        kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False, heartbeat_seconds=1.0
    )
    await router.start()
    late: RouterService | None = None
    stolen = worker_signer(topics)
    expected: list[tuple[str, str]] = []  # (record's command id, the reason it is refused or rejected for)

    async def forge(cmd: ControlCommand, reason: str) -> None:
        await send_raw(kafka_bootstrap, topics, stolen.sign_command(cmd), key=cmd.deployment_id)
        expected.append((cmd.command_id, reason))

    try:
        # A start signed for prod with a key this environment trusts: refused, nothing starts.
        prod = start_command(CANDIDATE, weight=0.10)
        prod_signer = operator_signer(topics).for_scope(Scope("prod", f"{topics.prefix}prod.canary_control"))
        await send_raw(kafka_bootstrap, topics, prod_signer.sign_command(prod), key=prod.deployment_id)
        expected.append((prod.command_id, "wrong_scope"))

        start = start_command(CANDIDATE, weight=0.10)
        dep = start.deployment_id
        await send_command(kafka_bootstrap, topics, start)
        await _until(lambda: dep in router.ledger.deployments)
        assert router.stats.rejected_commands == {"wrong_scope": 1}
        assert [t for _, t, _ in router.stats.applied] == ["start"]

        # The attack: weight 1.0 and promoted within a second, citing no judged window.
        await forge(_rollout(dep, step_command_id(dep, 1), "set_weight", 0.25, None), "window_malformed")
        await forge(_rollout(dep, step_command_id(dep, 2), "set_weight", 0.5, None), "skips_step")
        await forge(_rollout(dep, step_command_id(dep, 3), "set_weight", 1.0, None), "skips_step")
        await forge(_rollout(dep, promote_command_id(dep), "promote", None, None), "not_last_step")

        # At every step (the operator moves the canary there), windows fabricated for the step just begun.
        for i, weight in enumerate((0.10, 0.25, 0.5, 1.0)):
            if i > 0:
                await send_command(kafka_bootstrap, topics, _operator(dep, "set_weight", weight, i))
                await _until(lambda w=weight: router.ledger.deployments[dep].weight == w)  # type: ignore[misc]
            began = router.ledger.deployments[dep].weight_set_at_ms
            assert began is not None and router.ledger.deployments[dep].weight == weight
            if i < 3:  # the next step, citing the step's first windows (not ended) or older ones
                nxt, step_id = (0.25, 0.5, 1.0)[i], step_command_id(dep, i + 1)
                await forge(_rollout(dep, step_id, "set_weight", nxt, _fabricated(dep, began)), "window_after_command")
                before = _fabricated(dep, began, before=True)
                await forge(_rollout(dep, step_id, "set_weight", nxt, before), "window_before_step")
            else:  # at 100 %: the promotion, seconds after the start (min_total_duration_s 30)
                cited = _fabricated(dep, began)
                await forge(_rollout(dep, promote_command_id(dep), "promote", None, cited), "before_min_total_duration")

        await _until(lambda: sum(router.ledger.refusals.values()) >= len(expected) - 1)
        final = router.ledger.deployments[dep]
        assert final.status == "running" and final.weight == 1.0  # where the operator put it, nothing more
        assert [t for _, t, _ in router.stats.applied] == ["start", "set_weight", "set_weight", "set_weight"]
        assert all(not i.startswith("rollout-") for i, _, _ in router.stats.applied)
        assert sum(router.ledger.refusals.values()) == len(expected) - 1

        # A router started now re-reads the history (record timestamps) and reaches the same state.
        late = RouterService(kafka_bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
        await late.start()
        assert late.ledger.deployments[dep].weight == 1.0 and late.ledger.deployments[dep].status == "running"
        assert late.ledger.refusals == router.ledger.refusals
        assert late.stats.rejected_commands == {"wrong_scope": 1}

        # The worker's audit: every forgery success false, with its reason.
        deadline = time.monotonic() + 60
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            lines = [e for e in _audit(worker.audit_log) if e["event_id"].startswith("control:")]
            if len(lines) >= 4 + len(expected):  # + the start and the operator's 3 weights
                break
            await asyncio.sleep(0.5)
        failures = [e for e in lines if not e["success"]]
        assert len(failures) == len(expected), (lines, worker.log_tail())
        for (command_id, reason), line in zip(expected, failures, strict=True):
            assert line["details"]["command_id"] == command_id
            if reason == "wrong_scope":
                assert line["error_message"].startswith("rejected (wrong_scope): signed for environment 'prod'")
            else:
                assert line["error_message"].startswith("refused: "), line
                assert f"not the deployment's rollout plan ({reason}: " in line["error_message"], line
        assert all(e["success"] for e in lines if e not in failures)

        # `canary status` agrees: running at the operator's 100 %, the forgeries listed with their reasons.
        status = _json(await _canary("status", "--json", env=_env(settings)))
        assert status["deployment_id"] == dep and status["status"] == "running" and status["weight"] == 1.0
        assert [r["reason"] for r in status["rejected_commands"]] == ["wrong_scope"]
        refused = [(r["command_id"], r["note"]) for r in status["refused_commands"]]
        assert [i for i, _ in refused] == [i for i, _ in expected[1:]]
        for (_, note), (_, reason) in zip(refused, expected[1:], strict=True):
            assert f"not the deployment's rollout plan ({reason}: " in note, note
    finally:
        await router.stop()
        if late is not None:
            await late.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
