"""Rings: targeted traffic on top of the sticky split (docs/contracts.md, "Rings").

A candidate snapshot's ``rings`` section lists who always gets the candidate (``to: candidate`` — internal
users, one tenant: "ring 0") or never gets it (``to: last_good``), by a request attribute or the user id.
A request that matches a ring is routed by it, whatever the hash says, and its outcome carries the ring's
name; the windows keep ring traffic apart (arm ``candidate@<ring>`` / ``last_good@<ring>``), so the judge —
which judges the ``candidate`` series alone — never lets a ring's traffic, chosen and so biased, pass a
candidate, and the report shows ring and random traffic side by side.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

RingTarget = Literal["candidate", "last_good"]
TARGETS: Final = ("candidate", "last_good")
MAX_RINGS: Final = 8
MAX_RING_VALUES: Final = 1000
RING_SEPARATOR: Final = "@"  # in a window's arm: "candidate@internal"
NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# What a ring may match on: the user id, or one of the request's attributes (SearchRequest.attributes).
ATTRIBUTE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True, slots=True)
class Ring:
    name: str
    attribute: str  # "user_id", or a request attribute's name
    values: frozenset[str]
    to: RingTarget

    def matches(self, user_id: str | None, attributes: Mapping[str, str] | None) -> bool:
        value = user_id if self.attribute == "user_id" else (attributes or {}).get(self.attribute)
        return value is not None and value in self.values

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "attribute": self.attribute, "values": sorted(self.values), "to": self.to}


def ring_arm(arm: str, ring: str | None) -> str:
    """The arm a window series of this traffic is keyed by."""
    return arm if ring is None else f"{arm}{RING_SEPARATOR}{ring}"


def split_ring_arm(arm: str) -> tuple[str, str | None]:
    """``candidate@internal`` → (``candidate``, ``internal``); a plain arm → (arm, None)."""
    base, _, ring = arm.partition(RING_SEPARATOR)
    return base, ring or None


def rings_of_snapshot(snapshot: Mapping[str, Any] | None) -> tuple[Ring, ...]:
    """A snapshot's rings (validated when its preset loaded); anything unreadable here: none."""
    raw = (snapshot or {}).get("rings")
    if not isinstance(raw, list):
        return ()
    rings = []
    for entry in raw[:MAX_RINGS]:
        if not isinstance(entry, Mapping):
            return ()
        name, attribute, values, to = entry.get("name"), entry.get("attribute"), entry.get("values"), entry.get("to")
        if (
            not isinstance(name, str)
            or not NAME.fullmatch(name)
            or not isinstance(attribute, str)
            or not ATTRIBUTE.fullmatch(attribute)
            or to not in TARGETS
            or not isinstance(values, list)
            or not all(isinstance(v, str) for v in values)
        ):
            return ()
        rings.append(Ring(name, attribute, frozenset(values[:MAX_RING_VALUES]), to))
    return tuple(rings)


def match_ring(rings: tuple[Ring, ...], user_id: str | None, attributes: Mapping[str, str] | None) -> Ring | None:
    """The first ring (in the section's order) the request belongs to."""
    return next((r for r in rings if r.matches(user_id, attributes)), None)
