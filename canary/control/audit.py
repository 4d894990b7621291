"""The audit line of each control record, as the worker's audit agent writes it and the export rebuilds it.

Honest: a control command is audited with ``success: false`` and an ``error_message`` when it was not
applied — rejected by verification (unsigned, unknown key, bad signature, expired, replayed, hash
mismatch, invalid preset; see ``canary.security.verify``) or refused by the deployment ledger (e.g. a start
while another canary runs). The line is made from the record's :class:`~canary.control.ControlOutcome`, so
the live audit (``streams.audit``) and the rebuilt one (:func:`audit_events`, ``canary export`` without the
worker's file) write the same line for the same record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from canary.control.fold import ControlHistory
from canary.control.outcome import ControlOutcome, slimmed
from canary.core import wire
from canary.core.models import COMMAND_ACTIONS, ControlCommand, RouterState, iso_ms

EVENT_TYPES = {
    "start": "canary_start",
    "rollback": "canary_rollback",
    "promote": "canary_promote",
    "abort": "canary_abort",
    "pause": "canary_pause",
    "resume": "canary_resume",
    "set_weight": "canary_set_weight",
}
INVALID_COMMAND = "canary_invalid_command"


def control_event(
    cmd: ControlCommand,
    *,
    success: bool = True,
    error_message: str | None = None,
    verification: dict[str, Any] | None = None,
    offset: int | None = None,
    rejected: bool = False,
) -> dict[str, Any]:
    """The audit line of a control command. A command rejected by verification or refused by the ledger gets
    the event id ``control:<command_id>@<offset>``, so a forged or replayed copy of a real command id is
    audited beside the real one instead of being dropped as its duplicate — and a rollout step refused as
    premature and applied when issued again has both lines."""
    snapshot = cmd.candidate_config or {}
    config_name = snapshot.get("metadata", {}).get("name") if isinstance(snapshot.get("metadata"), dict) else None
    config_name = config_name or (cmd.evidence or {}).get("config_name")
    details: dict[str, Any] = {
        "action": COMMAND_ACTIONS[cmd.type],
        "command_id": cmd.command_id,
        "command": cmd.type,
        "candidate_config": config_name,
        "candidate_config_hash": cmd.candidate_config_hash,
        "reason": cmd.reason,
        "evidence": cmd.evidence,
        "source": "control",
    }
    if cmd.weight is not None:
        details["traffic_split"] = {"active": round(1 - cmd.weight, 6), "candidate": cmd.weight}
    if verification is not None:
        details["verification"] = verification
    if offset is not None:
        details["offset"] = offset
    event_id = f"control:{cmd.command_id}@{offset}" if rejected and offset is not None else f"control:{cmd.command_id}"
    return {
        "event_id": event_id,
        "event_type": EVENT_TYPES[cmd.type],
        "timestamp": iso_ms(cmd.issued_at_ms),
        "deployment_id": cmd.deployment_id,
        "user_id": cmd.issued_by,
        "config_name": config_name,
        "details": details,
        "success": success,
        "error_message": error_message,
    }


def invalid_control_event(
    offset: int | None, raw: bytes | None, detail: str, reason: str = "malformed", appended_at_ms: int | None = None
) -> dict[str, Any]:
    """A control record that is not a command at all (poison): audited too, never applied, with the
    verifier's reason (``malformed``, ``too_deep``, ``not_json`` …)."""
    text = wire.raw_text(raw, 2000) or ""
    return {
        "event_id": f"control:invalid@{offset}",
        "event_type": INVALID_COMMAND,
        "timestamp": iso_ms(appended_at_ms if appended_at_ms is not None else time.time_ns() // 1_000_000),
        "deployment_id": None,
        "user_id": None,
        "config_name": None,
        "details": {
            "action": "reject_invalid_command",
            "offset": offset,
            "raw": text,
            "source": "control",
            "verification": {"reason": reason},
        },
        "success": False,
        "error_message": f"rejected ({reason}): {detail}",
    }


def outcome_event(outcome: ControlOutcome, raw: bytes | None) -> dict[str, Any]:
    """The audit line of a control record as the worker's registry folded it."""
    verdict = outcome.verdict
    if verdict.command is None:
        return invalid_control_event(
            outcome.offset, raw, verdict.detail, verdict.reason or "malformed", outcome.appended_at_ms
        )
    return control_event(
        verdict.command,
        success=verdict.accepted and outcome.applied,
        error_message=outcome.error_message,
        verification=verdict.to_dict(),
        offset=outcome.offset,
        rejected=not verdict.accepted or not (outcome.applied or outcome.duplicate),
    )


def audit_events(history: ControlHistory, values: Sequence[bytes | None] | None = None) -> list[dict[str, Any]]:
    """The audit lines of a folded control history, one per record in topic order, as the live agent writes
    them; ``values``: the raw records (quoted in the line of one that is not a command). Copies of an
    applied command share its event id: a reader that dedups by id keeps the first, as the live log does."""
    return [
        outcome_event(slimmed(o), values[i] if values is not None and i < len(values) else None)
        for i, o in enumerate(history.outcomes)
    ]


def state_event(state: RouterState) -> dict[str, Any]:
    """The audit line of a router state (``canary_state``): the same for the live agent and a rebuilt audit."""
    return {
        "event_id": f"state:{state.router_id}:{state.seq}:{state.applied_at_ms}",
        "event_type": "router_state",
        "timestamp": iso_ms(state.applied_at_ms),
        "deployment_id": state.deployment_id,
        "user_id": state.router_id,
        "config_name": state.candidate_config,
        "details": {"action": "apply_router_state", **state.to_dict(), "source": "state"},
        "success": True,
        "error_message": None,
    }
