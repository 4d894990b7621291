"""Bake after promotion (docs/contracts.md, "Bake after promotion"): a promoted config keeps being judged.

A candidate snapshot's ``bake`` section — ``{duration_s: N}`` — keeps the deployment under watch for N seconds
after its promotion: the previous last_good stays the rollback target, the promoted config's windows (arm
``last_good`` now, config = the promoted one, still tagged with the deployment) are judged with the
preset's absolute rules, and a breach reverts the promotion (``rollback`` with id ``bake-<D>-revert``,
signed and audited like any rollback). A preset with a rollout plan bakes for ``DEFAULT_BAKE_S`` unless its
section says otherwise (``bake: null`` or ``duration_s: 0``: no bake); one without a plan bakes only when
it asks. Relative rules need last_good beside the candidate, which a promoted config no longer has: they
are judged against the previous config's figures recorded before the promotion (its pooled windows) — an
absolute threshold derived from them (a ratio times its p95, an offset from its rate) — and left out when
there is no such figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from canary.core.policy import QUANTILE_METRICS, SLOPolicy, SLORule, deployment_policy

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


def bake_policy(snapshot: Mapping[str, Any] | None, previous: Mapping[str, float] | None = None) -> SLOPolicy:
    """What a baking config is judged with: the deployment's absolute rules, its relative rules made absolute
    against ``previous`` (the previous last_good's figure per metric, recorded before the promotion; a rule
    without one is left out), and no low-traffic pause (a promoted config serves everyone)."""
    policy = deployment_policy(snapshot)
    rules = []
    for rule in policy.rules:
        if not rule.relative:
            rules.append(rule)
        elif previous is not None and rule.metric in previous:
            rules.append(_against(rule, previous[rule.metric]))
    return SLOPolicy(tuple(rules), 0, policy.min_samples, policy.custom_metrics, policy.horizon_s, policy.regimes)


def _against(rule: SLORule, value: float) -> SLORule:
    """A relative rule as an absolute one against a recorded last_good figure."""
    if rule.metric in QUANTILE_METRICS:
        threshold = max(rule.threshold * value, 1e-9)
    else:
        low, high = (rule.custom.low, rule.custom.high) if rule.custom is not None else (0.0, 1.0)
        threshold = min(max(value + rule.threshold, low), high)
    return replace(rule, threshold=threshold, relative_to=None)
