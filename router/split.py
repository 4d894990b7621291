"""Sticky traffic split: see :mod:`canary.core.split` (several candidates at once, one arc each).

``assign_arm`` is the one-candidate view of it, for callers and tests that think in one deployment.
"""

from __future__ import annotations

from canary.core.models import Arm
from canary.core.split import Arc, bucket, position, preferred_start

__all__ = ["assign_arm", "bucket"]


def assign_arm(routing_key: str, deployment_id: str | None, candidate_weight: float) -> Arm:
    if deployment_id is None or candidate_weight <= 0.0:
        return "last_good"
    arc = Arc(deployment_id, preferred_start(deployment_id), candidate_weight)
    return "candidate" if arc.holds(position(routing_key)) else "last_good"
