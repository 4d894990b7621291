"""Bake after promotion (docs/contracts.md, "Bake after promotion"): a promoted config keeps being judged.

A candidate snapshot's ``bake`` section — ``{duration_s: N}`` — keeps the deployment under watch for N seconds
after its promotion: the previous last_good stays the rollback target, the promoted config's windows (arm
``last_good`` now, config = the promoted one, still tagged with the deployment) are judged with the
preset's absolute rules, and a breach reverts the promotion (``rollback`` with id ``bake-<D>-revert``,
signed and audited like any rollback). A preset with a rollout plan bakes for ``DEFAULT_BAKE_S`` unless its
section says otherwise (``bake: null`` or ``duration_s: 0``: no bake); one without a plan bakes only when
it asks. Relative rules need last_good beside the candidate, which a promoted config no longer has: they
are left out of the bake (the absolute ones guard it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from canary.core.policy import SLOPolicy, deployment_policy

DEFAULT_BAKE_S: Final = 300.0
MAX_BAKE_S: Final = 7 * 86_400.0
BAKE_PREFIX: Final = "bake-"


def revert_command_id(deployment_id: str) -> str:
    return f"{BAKE_PREFIX}{deployment_id}-revert"


def bake_seconds(snapshot: Mapping[str, Any] | None) -> float | None:
    """How long the promoted config of this candidate snapshot is baked; None: not at all. A snapshot's
    section was validated when its preset loaded; anything unreadable here means no bake."""
    if snapshot is None:
        return None
    if "bake" not in snapshot:
        return DEFAULT_BAKE_S if snapshot.get("rollout") is not None else None
    section = snapshot["bake"]
    if not isinstance(section, Mapping):
        return None
    seconds = section.get("duration_s")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return None
    return float(seconds) if 0 < seconds <= MAX_BAKE_S else None


def bake_policy(snapshot: Mapping[str, Any] | None) -> SLOPolicy:
    """What a baking config is judged with: the deployment's policy without its relative rules, and without
    the low-traffic pause (a promoted config serves everyone: a pause has nothing to stop)."""
    policy = deployment_policy(snapshot)
    rules = tuple(r for r in policy.rules if not r.relative)
    return SLOPolicy(rules, 0, policy.min_samples, policy.custom_metrics, policy.horizon_s, policy.regimes)
