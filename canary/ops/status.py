"""What ``canary status`` shows (and the API's ``get_current_status``): the deployment, the pointers, the
split, every live candidate and the routers, as the control topic folds them (or the last cached view when
Kafka is unreachable)."""

from __future__ import annotations

import asyncio
from typing import Any

from canary.core.rollout import plan_status
from canary.errors import KafkaError
from canary.kafka.topics import Topics
from canary.security import ControlSecurity
from canary.settings import Settings


def status_payload(settings: Settings, allow_cache: bool = True, deployment_id: str | None = None) -> dict[str, Any]:
    """The status ``canary status`` prints: the deployment ``deployment_id`` (default: the most recently
    started live one, else the latest), the pointers, the split, every live candidate and the routers."""
    from canary.config import PresetStore
    from canary.core.deployment import ConfigRef
    from canary.kafka.connect import require_kafka
    from canary.ops.view import cache_path, load_cache, read_view_async, save_cache

    topics = Topics(settings.topic_prefix)
    cache = cache_path(settings.home, topics)
    security = ControlSecurity.operator(settings)
    try:
        bootstrap = require_kafka(settings)
        view = asyncio.run(
            read_view_async(bootstrap, topics, with_windows=True, verifier=security.verifier(topics.control))
        )
        save_cache(view, cache)
    except KafkaError:
        cached = load_cache(cache, security.verifier(topics.control)) if allow_cache else None
        if cached is None:
            raise
        view = cached
    default = PresetStore(settings.presets_dir).get("last_good")
    fallback = ConfigRef.from_snapshot(default.to_dict(), default.content_hash)
    if deployment_id is not None:
        dep = view.ledger.deployments.get(deployment_id)
        if dep is None:
            from canary.errors import DeploymentError

            recent = sorted(view.ledger.deployments.values(), key=lambda d: d.started_at_ms)[-5:]
            known = ", ".join(f"{d.deployment_id} ({d.status})" for d in recent) or "none yet"
            raise DeploymentError(f"no deployment {deployment_id!r} on the control topic (latest: {known})")
    else:
        dep = view.ledger.current or view.ledger.latest
    last_good = view.last_good(fallback)
    weight = dep.candidate_weight if dep is not None else 0.0
    total = sum(w.response_count for w in view.windows if dep is not None and w.deployment_id == dep.deployment_id)
    routers = [
        {**s.to_dict(), "live": s in view.live_routers()}
        for s in sorted(view.routers.values(), key=lambda s: s.router_id)
    ]
    return {
        "source": view.source,
        "read_at_ms": view.read_at_ms,
        "deployment_id": dep.deployment_id if dep else None,
        "status": dep.status if dep else "idle",
        "active_config": last_good.name if last_good else None,
        "last_good": last_good.name if last_good else None,
        "last_good_hash": last_good.content_hash if last_good else None,
        "candidate_config": dep.candidate.name if dep else None,
        "candidate_hash": dep.candidate.content_hash if dep else None,
        "traffic_split": {
            "active": round(1 - sum(d.candidate_weight for d in view.ledger.live), 6),
            "candidate": weight,
        },
        "weight": dep.weight if dep else None,
        # In shadow (weight 0): the share of last_good's requests mirrored to the candidate; 0 otherwise.
        "shadow_mirror": dep.shadow_share if dep else None,
        "rollout": plan_status(dep.candidate.snapshot, dep.weight, dep.weight_set_at_ms) if dep else None,
        # Every running or paused candidate (A/B/n); the fields above describe the most recent one.
        "deployments": [
            {
                "deployment_id": d.deployment_id,
                "status": d.status,
                "candidate_config": d.candidate.name,
                "candidate_hash": d.candidate.content_hash,
                "weight": d.weight,
                "candidate_share": d.candidate_weight,
                "shadow_mirror": d.shadow_share,
                "users_arc": [round(d.arc.start, 6), round(d.arc.weight, 6)],
                "start_time_ms": d.started_at_ms,
                "requests": sum(w.response_count for w in view.windows if w.deployment_id == d.deployment_id),
            }
            for d in view.ledger.live
        ],
        "total_requests": total,
        "start_time_ms": dep.started_at_ms if dep else None,
        "end_time_ms": dep.ended_at_ms if dep else None,
        "reason": dep.reason if dep else None,
        "issued_by": dep.issued_by if dep else None,
        "routers": routers,
        # Control records not applied by verification (forged, unsigned, replayed, …), as the routers see it.
        "rejected_commands": [
            {
                "index": index,
                "command_id": v.command.command_id if v.command else None,
                "type": v.command.type if v.command else None,
                "reason": v.reason,
                "detail": v.detail,
            }
            for index, v in view.rejected
        ],
        # Verified commands the ledger refused (e.g. a rollout step before the plan allows it, audited too).
        "refused_commands": [
            {"index": index, "command_id": cmd.command_id, "type": cmd.type, "note": note}
            for index, cmd, note in view.refused
        ],
    }
