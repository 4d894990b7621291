"""The sticky traffic split for one or several candidates at once (A/B/n), as a pure function.

Every user (routing key) has a fixed position on a circle of circumference 1, ``position(key)``. Each
live deployment owns an arc ``[slot_start, slot_start + weight)`` of it; a user inside a running
deployment's arc gets that candidate, everyone else last_good. Arcs never overlap, so **a user belongs to
at most one candidate**; an arc grows only at its end, so raising a weight only moves users last_good →
candidate; an arc never moves, so when one canary ends its users go back to last_good — never into
another running canary. Where an arc starts is chosen when the canary starts (``place``): at a position
drawn from the deployment id (each canary samples a fresh set of users), or the first free gap after it.
The arcs are folded from the control topic by every reader alike (``ControlLedger``), so routers agree.

Requests on last_good are the baseline of exactly one live deployment each (``baseline_of``: an
independent hash picks which), so every outcome lands in one window and each judge gets its own
baseline sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

_SCALE = float(1 << 64)
_EPS = 1e-12


def bucket(routing_key: str, salt: str) -> float:
    """Uniform value in [0, 1) that depends only on (salt, routing_key)."""
    digest = hashlib.blake2b(f"{salt}\x00{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def position(routing_key: str) -> float:
    return bucket(routing_key, "canary-split")


USER_GROUPS = 16
"""Outcomes carry ``user_group`` (docs/contracts.md): the judge counts a window's requests per group to see how
much one user's requests cluster (canary.core.evidence.group_spread). Sixteen: a window of 30 requests from a few
sessions still puts most sessions in groups of their own, and a group's counts stay small integers."""


def user_group(routing_key: str) -> int:
    """The routing key's group in ``[0, USER_GROUPS)``: independent of its split position (another salt), so
    every arm's users spread over all groups."""
    return int(bucket(routing_key, "canary-group") * USER_GROUPS)


@dataclass(frozen=True, slots=True)
class Arc:
    deployment_id: str
    start: float
    weight: float

    def holds(self, pos: float) -> bool:
        return (pos - self.start) % 1.0 < self.weight

    def overlaps(self, other: Arc) -> bool:
        if self.weight <= 0 or other.weight <= 0:
            return False
        a = (other.start - self.start) % 1.0  # other's start seen from self's start
        b = (self.start - other.start) % 1.0
        return a < self.weight - _EPS or b < other.weight - _EPS


def preferred_start(deployment_id: str) -> float:
    return bucket(deployment_id, "slot")


def place(deployment_id: str, weight: float, taken: Sequence[Arc]) -> float | None:
    """Where a new deployment's arc starts: its preferred position if free, else the first gap after it
    (at another arc's end) that fits ``weight``; None if no gap fits."""
    preferred = preferred_start(deployment_id)
    ends = sorted(((a.start + a.weight) % 1.0 for a in taken), key=lambda s: (s - preferred) % 1.0)
    candidates = [preferred, *ends]
    for start in candidates:
        arc = Arc(deployment_id, start, weight)
        if not any(arc.overlaps(t) for t in taken):
            return start
    return None


def candidate_of(routing_key: str, running: Sequence[Arc]) -> str | None:
    """The running deployment whose candidate serves this user, or None (last_good)."""
    if not running:
        return None
    pos = position(routing_key)
    for arc in running:
        if arc.holds(pos):
            return arc.deployment_id
    return None


def baseline_of(routing_key: str, live: Sequence[str]) -> str | None:
    """The live deployment whose baseline (last_good window) a last_good request of this user counts for."""
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return live[int(bucket(routing_key, "baseline") * len(live)) % len(live)]
