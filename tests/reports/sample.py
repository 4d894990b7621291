"""A realistic deployment as plain data: start, a weight change, windows of both arms, an SLO rollback.

Verdicts and the rollback evidence come from the real judge (``canary.core.slo``), so the report sees
exactly what the worker would have produced.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec.structs

from canary.config import PresetStore
from canary.core.judge import DeploymentJudge
from canary.core.models import ControlCommand, WindowResult
from canary.core.slo import SLOPolicy, rules_from_slo_section

ROOT = Path(__file__).resolve().parents[2]
PRESETS = PresetStore(ROOT / "configs" / "presets")
BUCKET_MS = 5000

# candidate p95 per bucket: quiet first bucket (inconclusive), healthy, then two failing buckets in a row
CANDIDATE_P95 = [640.0, 780.0, 820.0, 760.0, 1300.0, 790.0, 850.0, 910.0, 1480.0, 1650.0]
CANDIDATE_COUNTS = [8, 24, 26, 30, 28, 52, 55, 50, 54, 57]
LAST_GOOD_P95 = [410.0, 430.0, 425.0, 445.0, 420.0, 415.0, 440.0, 450.0, 430.0, 425.0, 435.0]
LAST_GOOD_COUNTS = [230, 236, 241, 229, 238, 205, 210, 198, 207, 204, 220]


@dataclass
class Scenario:
    deployment_id: str
    t0: int
    commands: list[ControlCommand] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    candidate: str = "candidate_slow"

    @property
    def command_dicts(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.commands]

    @property
    def rollback(self) -> ControlCommand:
        return next(c for c in self.commands if c.type == "rollback")


def command(kind: str, deployment_id: str, at_ms: int, *, weight: float | None = None, **extra: Any) -> ControlCommand:
    return ControlCommand(
        command_id=extra.pop("command_id", f"{kind}-{uuid.uuid4().hex[:10]}"),
        type=kind,  # type: ignore[arg-type]
        deployment_id=deployment_id,
        candidate_config=extra.pop("candidate_config", None),
        candidate_config_hash=extra.pop("candidate_config_hash", None),
        last_good_config=extra.pop("last_good_config", None),
        weight=weight,
        reason=extra.pop("reason", None),
        evidence=extra.pop("evidence", None),
        issued_by=extra.pop("issued_by", "cli:alice"),
        issued_at_ms=at_ms,
    )


def window(
    deployment_id: str | None,
    config_name: str,
    arm: str,
    start_ms: int,
    *,
    p95: float | None,
    count: int,
    recall: float | None = 0.4,
    violations: int = 0,
    emitted_at_ms: int | None = None,
) -> WindowResult:
    return WindowResult(
        deployment_id=deployment_id,
        config_name=config_name,
        arm=arm,
        window_start_ms=start_ms,
        window_end_ms=start_ms + BUCKET_MS,
        duration_sec=BUCKET_MS // 1000,
        response_count=count,
        error_count=0,
        p95_ms=p95 if count else None,
        recall_at_10=recall if count else None,
        recall_samples=count if recall is not None else 0,
        slo_violations=violations,
        verdicts=(),
        late_count=0,
        emitted_at_ms=emitted_at_ms if emitted_at_ms is not None else start_ms + BUCKET_MS + 1000,
    )


def build(t0: int = 1_700_000_000_000, deployment_id: str | None = None, candidate: str = "candidate_slow") -> Scenario:
    dep = deployment_id or f"canary_{uuid.uuid4().hex[:8]}"
    preset, last_good = PRESETS.get(candidate), PRESETS.get("last_good")
    sc = Scenario(dep, t0, candidate=candidate)
    sc.commands.append(
        command(
            "start",
            dep,
            t0,
            weight=0.1,
            candidate_config=preset.to_dict(),
            candidate_config_hash=preset.content_hash,
            last_good_config=last_good.to_dict(),
        )
    )
    sc.commands.append(command("set_weight", dep, t0 + 22_000, weight=0.2))
    # Literal per-window figures (no per-request data): judged by their point estimates.
    rules = [dataclasses.replace(r, method="point") for r in rules_from_slo_section(preset.to_dict()["slo"])]
    judge = DeploymentJudge(dep, SLOPolicy(tuple(rules), inconclusive_limit=0))
    decision = None
    for i, (p95, n) in enumerate(zip(CANDIDATE_P95, CANDIDATE_COUNTS, strict=True)):
        w = window(
            dep,
            candidate,
            "candidate",
            t0 + i * BUCKET_MS,
            p95=p95,
            count=n,
            recall=0.46 - i * 0.004,
            violations=max(0, n // 5 if p95 > 1200 else 1),
        )
        (judged,) = judge.observe(w, w.window_end_ms + 1000)
        sc.windows.append(judged.window)
        decision = decision or judged.decision
    assert decision is not None, "the sample must roll back"
    failing_end = t0 + len(CANDIDATE_P95) * BUCKET_MS
    sc.commands.append(
        command(
            "rollback",
            dep,
            failing_end + 1_150,
            command_id=decision.command_id,
            reason=decision.reason,
            evidence={**decision.evidence, "config_name": candidate, "triggering_window": decision.window_id},
            issued_by="slo-agent",
        )
    )
    for i, (p95, n) in enumerate(zip(LAST_GOOD_P95, LAST_GOOD_COUNTS, strict=True)):
        sc.windows.append(window(dep, "last_good", "last_good", t0 + i * BUCKET_MS, p95=p95, count=n, recall=0.38))
    return sc


def build_with_aftermath(t0: int = 1_700_000_000_000, deployment_id: str | None = None) -> Scenario:
    """:func:`build`, then what the topics hold after the rollback, as live: the bucket open at the rollback
    with the candidate's requests that were in flight (judged again by the judge, which goes on judging),
    three more empty candidate buckets, and last_good's buckets going on (no other deployment started)."""
    sc = build(t0, deployment_id)
    dep, n = sc.deployment_id, len(CANDIDATE_P95)
    assert sc.rollback.issued_at_ms < t0 + (n + 1) * BUCKET_MS  # the rollback falls in slot n
    rules = [
        dataclasses.replace(r, method="point")
        for r in rules_from_slo_section(PRESETS.get(sc.candidate).to_dict()["slo"])
    ]
    judge = DeploymentJudge(dep, SLOPolicy(tuple(rules), inconclusive_limit=0))
    for w in sc.windows:
        if w.arm == "candidate":
            judge.observe(msgspec.structs.replace(w, verdicts=()), w.window_end_ms + 1000)
    for i, count in enumerate([35, 0, 0, 0]):
        start = t0 + (n + i) * BUCKET_MS
        w = window(dep, sc.candidate, "candidate", start, p95=1700.0, count=count, recall=0.4, violations=count)
        (judged,) = judge.observe(w, w.window_end_ms + 1000)
        sc.windows.append(judged.window)
        if i:
            sc.windows.append(window(dep, "last_good", "last_good", start, p95=430.0, count=240, recall=0.38))
    return sc


def build_promotion(t0: int = 1_700_000_000_000, deployment_id: str | None = None) -> Scenario:
    """A rollout plan walked to its end by the real SLO agent's loop (canary.pipeline.loop): candidate_progressive
    started by an operator, stepped 10 → 25 → 50 → 100 % and promoted by slo-agent (``rollout-<dep>-promote``),
    every command as the loop issued it; then one empty candidate bucket after the promotion."""
    from canary.pipeline.loop import fold_commands, run_loop
    from canary.pipeline.policies import PolicyBook

    dep = deployment_id or f"canary_{uuid.uuid4().hex[:8]}"
    name = "candidate_progressive"
    preset, last_good = PRESETS.get(name), PRESETS.get("last_good")
    start = command(
        "start",
        dep,
        t0 + 1_200,
        weight=0.1,
        candidate_config=preset.to_dict(),
        candidate_config_hash=preset.content_hash,
        last_good_config=last_good.to_dict(),
    )
    # Traffic follows the plan's weights (set at 16, 31 and 46 s by the loop below): 600 requests a bucket.
    weights = [0.1] * 3 + [0.25] * 3 + [0.5] * 3 + [1.0] * 4
    windows = []
    for i, weight in enumerate(weights):
        s = t0 + i * BUCKET_MS
        cand = round(600 * weight)
        windows.append(window(dep, name, "candidate", s, p95=780.0 + 5 * (i % 3), count=cand, recall=0.9))
        if cand < 600:
            windows.append(window(dep, "last_good", "last_good", s, p95=420.0, count=600 - cand, recall=0.7))
    ledger = fold_commands([start])
    loop = run_loop(windows, PolicyBook(lambda: ledger), [start])
    issued = [d.command for d in loop.decisions if d.command is not None and d.applied]
    assert [c.type for c in issued] == ["set_weight", "set_weight", "set_weight", "promote"], loop.decisions
    sc = Scenario(dep, t0, candidate=name)
    sc.commands = [start, *issued]
    sc.windows = [loop.judged.get(w.window_id, w) for w in windows]
    after = t0 + len(weights) * BUCKET_MS
    sc.windows.append(window(dep, name, "candidate", after, p95=None, count=0))
    return sc
