"""Which applied control commands are alert events, and what they say (Kafka-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canary.core.models import ControlCommand
from canary.core.rollout import is_rollout_command_id


@dataclass(frozen=True, slots=True)
class AlertEvent:
    kind: str  # one of canary.config.environments.ALERT_EVENTS
    command_id: str
    deployment_id: str
    environment: str | None
    text: str
    command: dict[str, Any]

    @property
    def event_id(self) -> str:
        """Stable across redeliveries: receivers may deduplicate by it (header X-Canary-Event-Id)."""
        return f"alert:{self.kind}:{self.command_id}"


def alert_kind(cmd: ControlCommand) -> str | None:
    if cmd.type == "set_weight":
        return "step"
    if cmd.type == "pause":
        return "inconclusive" if cmd.command_id.startswith("pause-insufficient-") else "pause"
    if cmd.type in ("start", "rollback", "promote", "resume", "abort"):
        return cmd.type
    return None


def alert_event(cmd: ControlCommand, environment: str | None, candidate: str | None) -> AlertEvent | None:
    """The alert of an *applied* command (refused ones are audited, not alerted); None if it is none."""
    kind = alert_kind(cmd)
    if kind is None:
        return None
    where = f"[{environment}] " if environment else ""
    who = "the rollout plan" if is_rollout_command_id(cmd.command_id) else cmd.issued_by
    name = candidate or "candidate"
    texts = {
        "start": f"canary {cmd.deployment_id} of {name} started at {cmd.weight or 0:.0%}",
        "step": f"canary {cmd.deployment_id} of {name}: weight → {cmd.weight or 0:.0%} ({who})",
        "pause": f"canary {cmd.deployment_id} of {name} paused by {who}",
        "inconclusive": f"canary {cmd.deployment_id} of {name} paused: not enough data",
        "rollback": f"ROLLED BACK canary {cmd.deployment_id} of {name} ({who})",
        "promote": f"PROMOTED {name} (canary {cmd.deployment_id}, {who})",
        "resume": f"canary {cmd.deployment_id} of {name} resumed",
        "abort": f"canary {cmd.deployment_id} of {name} aborted",
    }
    text = where + texts[kind] + (f": {cmd.reason}" if cmd.reason else "")
    body = cmd.to_dict()
    body.pop("candidate_config", None)  # snapshots are large and not the receiver's business
    body.pop("last_good_config", None)
    return AlertEvent(kind, cmd.command_id, cmd.deployment_id, environment, text, body)
