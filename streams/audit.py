"""Audit sink: one JSON line per control or state event, in the spec's audit.log shape.

Each line is written, flushed and fsynced before the agent acknowledges the event, and duplicates
(redelivery after a crash) are dropped by ``event_id``, which is rebuilt from the file at start-up, so a
crash and restart neither loses nor repeats a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from canary.core.models import ControlCommand, RouterState, iso_ms

EVENT_TYPES = {
    "start": "canary_start",
    "rollback": "canary_rollback",
    "promote": "canary_promote",
    "abort": "canary_abort",
    "pause": "canary_pause",
    "resume": "canary_resume",
    "set_weight": "canary_set_weight",
}


def control_event(cmd: ControlCommand) -> dict[str, Any]:
    snapshot = cmd.candidate_config or {}
    config_name = snapshot.get("metadata", {}).get("name") or (cmd.evidence or {}).get("config_name")
    details: dict[str, Any] = {
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
    return {
        "event_id": f"control:{cmd.command_id}",
        "event_type": EVENT_TYPES[cmd.type],
        "timestamp": iso_ms(cmd.issued_at_ms),
        "deployment_id": cmd.deployment_id,
        "user_id": cmd.issued_by,
        "config_name": config_name,
        "details": details,
        "success": True,
        "error_message": None,
    }


def state_event(state: RouterState) -> dict[str, Any]:
    return {
        "event_id": f"state:{state.router_id}:{state.seq}:{state.applied_at_ms}",
        "event_type": "router_state",
        "timestamp": iso_ms(state.applied_at_ms),
        "deployment_id": state.deployment_id,
        "user_id": state.router_id,
        "config_name": state.candidate_config,
        "details": {**state.to_dict(), "source": "state"},
        "success": True,
        "error_message": None,
    }


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen = self._load_ids()

    def _load_ids(self) -> set[str]:
        seen: set[str] = set()
        if not self.path.exists():
            return seen
        with self.path.open("rb") as fh:
            for line in fh:
                try:
                    seen.add(json.loads(line)["event_id"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash mid-write is rewritten on redelivery
        return seen

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def append(self, event: dict[str, Any]) -> bool:
        """Durably append ``event`` unless its id was already written. Returns whether it was written."""
        event_id = event["event_id"]
        if event_id in self._seen:
            return False
        line = (json.dumps(event, ensure_ascii=False, sort_keys=False) + "\n").encode()
        with self.path.open("ab") as fh:
            self._repair_torn_tail(fh)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._seen.add(event_id)
        return True

    def _repair_torn_tail(self, fh: Any) -> None:
        """A crash mid-line leaves no trailing newline; start the next event on a fresh line."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb") as reader:
            reader.seek(size - 1)
            if reader.read(1) != b"\n":
                fh.write(b"\n")
