"""Control records as the decision pipeline takes them (:class:`canary.pipeline.run.Record`), verified.

The pipeline sits below the security layer, so it cannot verify what it reads; it takes the verification as
a function (``run_pipeline(..., verify_control=VerifyControl())``), and the readers above it — replay of a
dump, the tests, a notebook — hand it this one: every record verified in topic order by a fresh verifier,
as the live readers do (:func:`canary.control.fold_records`), only the accepted commands kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from canary.control.fold import fold_records
from canary.core.models import ControlCommand, JSONDict
from canary.pipeline.run import ControlParse, Record
from canary.security import CommandVerifier, KeyRing, default_verifier


def verify_control_records(records: Iterable[Record], verifier: CommandVerifier) -> ControlParse:
    """Control records (sorted into topic order here) → the commands ``verifier`` accepts, with their append
    times (the record timestamps), and one ``{topic, partition, offset, reason}`` per record that is not a
    command or was rejected (``rejected (unsigned): …``): never applied."""
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    history = fold_records([r.value for r in ordered], verifier, [r.arrival_ms for r in ordered])
    commands: list[ControlCommand] = []
    times: list[int | None] = []
    invalid: list[JSONDict] = []
    for r, outcome in zip(ordered, history.outcomes, strict=True):
        verdict = outcome.verdict
        if verdict.accepted and verdict.command is not None:
            commands.append(verdict.command)
            times.append(r.arrival_ms)
            continue
        reason = verdict.detail if verdict.poison else verdict.message
        invalid.append({"topic": r.topic, "partition": r.partition, "offset": r.offset, "reason": reason[:300]})
    return commands, times, invalid


def _insecure(_control_topic: str) -> CommandVerifier:
    return CommandVerifier(KeyRing(), insecure=True)


@dataclass(frozen=True, slots=True)
class VerifyControl:
    """What ``run_pipeline`` verifies its control records with. Each call takes a fresh verifier from
    ``new_verifier`` (given the records' topic, which a signature's scope names): a verifier remembers the
    ids it accepted, so one must never see two runs. Default: the process settings' (trusted keys, secure
    unless ``CANARY_INSECURE_CONTROL``)."""

    new_verifier: Callable[[str], CommandVerifier] = default_verifier

    @classmethod
    def insecure(cls) -> VerifyControl:
        """For an unsigned lab topic: signatures are not checked (the content checks still are)."""
        return cls(_insecure)

    def __call__(self, records: Iterable[Record]) -> ControlParse:
        ordered = sorted(records, key=lambda r: (r.partition, r.offset))
        if not ordered:
            return [], [], []
        return verify_control_records(ordered, self.new_verifier(ordered[0].topic))
