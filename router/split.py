"""Sticky traffic split: a stable hash of the user (or request) id picks the arm.

The hash is salted with the deployment id so each canary samples a fresh 10 % of users, and the bucket
is compared with the weight, so raising the weight only moves users last_good → candidate (never back).
"""

from __future__ import annotations

import hashlib

from canary.core.models import Arm

_SCALE = float(1 << 64)


def bucket(routing_key: str, salt: str) -> float:
    """Uniform value in [0, 1) that depends only on (salt, routing_key)."""
    digest = hashlib.blake2b(f"{salt}\x00{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign_arm(routing_key: str, deployment_id: str | None, candidate_weight: float) -> Arm:
    if deployment_id is None or candidate_weight <= 0.0:
        return "last_good"
    return "candidate" if bucket(routing_key, deployment_id) < candidate_weight else "last_good"
