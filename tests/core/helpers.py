"""Builders for literal test inputs."""

from __future__ import annotations

from typing import Any

from canary.core.models import Arm, SearchOutcome

_seq = 0


def outcome(
    ts: int,
    latency_ms: float = 100.0,
    *,
    arm: Arm = "candidate",
    deployment_id: str | None = "dep-1",
    config_name: str = "cand",
    recall_at_10: float | None = 0.5,
    error: str | None = None,
    event_id: str | None = None,
    user_group: int | None = None,
    request_id: str | None = None,
    router_id: str = "router-1",
    config_hash: str = "abc",
) -> SearchOutcome:
    global _seq
    _seq += 1
    return SearchOutcome(
        event_id=event_id or f"e{_seq}",
        request_id=request_id or f"r{_seq}",
        ts=ts,
        deployment_id=deployment_id,
        config_name=config_name,
        config_version="1",
        config_hash=config_hash,
        arm=arm,
        latency_ms=latency_ms,
        recall_at_10=recall_at_10,
        result_count=10,
        error=error,
        user_group=user_group,
        router_id=router_id,
    )


def outcome_dict(**overrides: Any) -> dict[str, Any]:
    d = outcome(1_700_000_000_000, event_id="e-fixed").to_dict()
    d.update(overrides)
    return d
