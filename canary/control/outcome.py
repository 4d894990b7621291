"""What became of one control record: the verifier's verdict and, if accepted, the ledger's answer.

Every reader of the control topic — routers, the worker's registry (and through it the audit agent), the
CLI's view, the dashboard, and the offline readers (export, reports, replay, the audit rebuild) — gets one
:class:`ControlOutcome` per record from :class:`canary.control.fold.ControlFold`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec.structs

from canary.core.models import ControlCommand
from canary.security import Verdict

OutcomeStatus = Literal["applied", "duplicate", "refused", "rejected"]
OUTCOME_STATUSES: tuple[OutcomeStatus, ...] = ("applied", "duplicate", "refused", "rejected")


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """What a reader made of one control record: the verification verdict and, if accepted, whether the
    ledger applied it (a refused command — e.g. a start while another canary runs — carries the note)."""

    offset: int | None
    verdict: Verdict
    applied: bool
    note: str
    appended_at_ms: int | None = None
    duplicate: bool = False  # a copy of a command the ledger had applied already (redelivery)

    @property
    def error_message(self) -> str | None:
        if not self.verdict.accepted:
            return self.verdict.message
        return None if self.applied else f"refused: {self.note}"

    @property
    def refused(self) -> bool:
        """Verified, but the ledger did not take it (and it is not a copy of one it took)."""
        return self.verdict.accepted and not self.applied and not self.duplicate

    @property
    def status(self) -> OutcomeStatus:
        """``applied``; ``duplicate`` (a copy of a command the ledger applied already); ``refused`` by the
        ledger (``note`` says why); ``rejected`` by verification (``verdict.reason``, a closed set)."""
        if not self.verdict.accepted:
            return "rejected"
        if self.applied:
            return "applied"
        return "duplicate" if self.duplicate else "refused"


SLIM_TEXT = 500  # characters of a rejected command's free-text fields kept for its audit line
SLIM_JSON = 4096  # bytes of a rejected command's evidence kept; larger: only its size


def _bounded(value: Any) -> Any:
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        return {"_omitted": "not JSON-serializable"}
    return value if size <= SLIM_JSON else {"_omitted_bytes": size}


def slim_command(cmd: ControlCommand) -> ControlCommand:
    """A rejected command as its audit line needs it, bounded: the snapshots' metadata only, free text and
    evidence capped. A rejected record is hostile by definition; its full content stays on the topic."""
    meta = cmd.candidate_config.get("metadata") if isinstance(cmd.candidate_config, dict) else None
    return msgspec.structs.replace(
        cmd,
        command_id=cmd.command_id[:SLIM_TEXT],
        candidate_config=None if cmd.candidate_config is None else {"metadata": _bounded(meta)},
        candidate_config_hash=None if cmd.candidate_config_hash is None else cmd.candidate_config_hash[:SLIM_TEXT],
        last_good_config=None,
        reason=None if cmd.reason is None else cmd.reason[:SLIM_TEXT],
        evidence=None if cmd.evidence is None else _bounded(cmd.evidence),
        issued_by=cmd.issued_by[:SLIM_TEXT],
    )


def slimmed(outcome: ControlOutcome) -> ControlOutcome:
    """``outcome`` with a rejected command kept slim (:func:`slim_command`), for readers that keep outcomes."""
    verdict = outcome.verdict
    if verdict.accepted or verdict.command is None:
        return outcome
    return replace(outcome, verdict=replace(verdict, command=slim_command(verdict.command)))
