"""Verify, then fold: THE path from a control record to the ledger, for every reader online and offline.

:class:`ControlFold` runs each record through the reader's :class:`~canary.security.CommandVerifier` (in
topic order, once each: the verifier remembers accepted ids for ``replayed``) and hands an accepted command
to its :class:`~canary.core.deployment.ControlLedger`; the result is one :class:`ControlOutcome` per record.
It never raises, whatever a record holds: a verified command the ledger chokes on is refused, not fatal.

Live readers keep a fold for their lifetime (routers, the worker's registry, the dashboard); offline readers
(the CLI's view, export, reports, replay, the audit rebuild) fold a whole history at once with
:func:`fold_records`, with a verifier built as the services build theirs (:func:`canary.control.verifier_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from canary.control.outcome import ControlOutcome
from canary.core.deployment import ControlLedger
from canary.core.models import ControlCommand
from canary.security import CommandVerifier

RawControl = bytes | str | Mapping[str, Any] | None
log = logging.getLogger("canary.control")


class ControlFold:
    """One reader's verifier and ledger. ``who`` names the reader in its log lines (a router's id);
    ``rejected_log``: where a rejected record is said (a rate-limited logger — anyone with Write on the topic
    can append thousands); None: not logged (offline folds report rejections in their results instead)."""

    def __init__(
        self,
        verifier: CommandVerifier,
        ledger: ControlLedger | None = None,
        *,
        who: str = "",
        rejected_log: logging.Logger | None = None,
        error_log: logging.Logger = log,
    ) -> None:
        self.verifier = verifier
        self.ledger = ledger if ledger is not None else ControlLedger()
        self.who = who
        self.rejected_log = rejected_log
        self.error_log = error_log
        self.invalid = 0  # records that were not commands at all (poison)

    def apply(self, raw: RawControl, offset: int | None = None, appended_at_ms: int | None = None) -> ControlOutcome:
        """Verify and fold one control record appended at ``appended_at_ms`` (its record timestamp).
        Never raises on its content."""
        verdict = self.verifier.check(raw, appended_at_ms)  # total: never raises
        if not verdict.accepted or verdict.command is None:
            if verdict.poison:
                self.invalid += 1
            if self.rejected_log is not None:
                who = f"{self.who} " if self.who else ""
                self.rejected_log.warning("%sREJECTED control record at offset %s: %s", who, offset, verdict.message)
            return ControlOutcome(offset, verdict, False, verdict.message, appended_at_ms)
        duplicate = verdict.command.command_id in self.ledger.applied_ids
        try:
            transition = self.ledger.apply(verdict.command, appended_at_ms)
        except Exception as exc:  # a verified command the fold cannot take: refused and audited, not fatal
            who = f"{self.who}: " if self.who else ""
            self.error_log.error("%scontrol record at offset %s not applied: the ledger raised %r", who, offset, exc)
            return ControlOutcome(offset, verdict, False, f"not applied: {type(exc).__name__}", appended_at_ms)
        return ControlOutcome(offset, verdict, transition.applied, transition.note, appended_at_ms, duplicate)


@dataclass
class ControlHistory:
    """A control topic (or a dump's, or a cached copy of one) folded from its beginning: the ledger, and
    what became of every record, in topic order (``outcomes[i]`` is record ``i``)."""

    ledger: ControlLedger
    outcomes: list[ControlOutcome] = field(default_factory=list)
    invalid: int = 0  # records that are not commands at all

    @property
    def accepted(self) -> list[ControlOutcome]:
        """The records verification accepted (applied by the ledger or not), in topic order."""
        return [o for o in self.outcomes if o.verdict.accepted]

    def accepted_commands(self) -> tuple[list[ControlCommand], list[int | None]]:
        """The verified commands and their append times, in topic order: what a fold that trusts its input
        (the replay's recomputation, :func:`canary.pipeline.loop.fold_commands`) may take."""
        kept = [(o.verdict.command, o.appended_at_ms) for o in self.accepted if o.verdict.command is not None]
        return [c for c, _ in kept], [t for _, t in kept]

    @property
    def rejected(self) -> list[tuple[int, ControlOutcome]]:
        """(record index, outcome) of every record verification rejected: never applied."""
        return [(i, o) for i, o in enumerate(self.outcomes) if not o.verdict.accepted]

    @property
    def refused(self) -> list[tuple[int, ControlOutcome]]:
        """(record index, outcome) of every verified command the ledger refused (copies of applied ones aside)."""
        return [(i, o) for i, o in enumerate(self.outcomes) if o.refused]


def fold_records(
    values: Iterable[RawControl],
    verifier: CommandVerifier,
    times: Sequence[int | None] | None = None,
    offsets: Sequence[int | None] | None = None,
) -> ControlHistory:
    """Verify and fold control records — raw record values or already decoded objects — appended at
    ``times`` (their record timestamps), in topic order, with a fresh ledger. Total: no record can make it
    raise. ``offsets``: each record's offset (None: unknown), carried into its outcome (the audit's
    event ids of rejected records name it)."""
    fold = ControlFold(verifier)
    outcomes: list[ControlOutcome] = []
    for i, raw in enumerate(values):
        at = times[i] if times is not None and i < len(times) else None
        offset = offsets[i] if offsets is not None and i < len(offsets) else None
        outcomes.append(fold.apply(raw, offset, at))
    return ControlHistory(fold.ledger, outcomes, fold.invalid)
