"""Verifying control records before anything acts on them: accept, or reject with a reason.

Every reader that folds the control topic (routers, the worker's registry — and through it the audit
agent —, the CLI's view) runs its records through one :class:`CommandVerifier`, in topic order. The checks,
in this order (the first that fails is the reason; docs/contracts.md has the table):

``no_value`` … ``not_object``  the bytes are not a bounded JSON object (:mod:`canary.core.wire`'s codes:
                       ``no_value``, ``too_large``, ``too_deep``, ``not_utf8``, ``not_json``, ``not_object``)
``malformed``          a JSON object, but not a ControlCommand (the record is poison)
``unsigned``           no signature fields (and insecure mode is off)
``bad_signature``      signature fields malformed, or the signature does not verify with the named key
``unknown_key``        ``key_id`` is not in the trusted keys directory
``wrong_scope``        signed for another environment / control topic than this reader's, or for none
``key_not_permitted``  the key's role may not sign this command (worker keys: rollback, pause, and set_weight /
                       promote only under ``rollout-`` ids, which the ledger holds to the plan)
``expired``            appended after ``expires_at_ms``; or issued more than 60 s after it was appended;
                       or valid for longer than a day
``replayed``           a command with this ``command_id`` was already accepted earlier in the topic (not for
                       ``rollout-`` ids: the SLO agent issues a step the ledger refused as premature again,
                       under its id; the ledger applies each id once)
``invalid_preset``     a start's candidate or last_good snapshot fails preset validation
``hash_mismatch``      a start's ``candidate_config_hash`` is not the recomputed hash of its snapshot

Time is the record's timestamp — the broker's append time, as the control topic is declared with
``message.timestamp.type=LogAppendTime`` — never the reader's clock, so a router that restarts and re-reads
the history reaches the same verdicts as one that read the records live, and a captured command
re-published after its expiry is refused. The verifier is stateful only through ``replayed`` (the ids it
accepted), which is why records must be checked once each, in topic order.

:meth:`CommandVerifier.check` is total: whatever the record holds, it returns a verdict — a check that
raises on a hostile value (it never should) yields ``unverifiable`` with the error, never an exception
into a reader's loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from canary.config import Preset, PresetValidationError
from canary.core import wire
from canary.core.deployment import snapshot_hash
from canary.core.models import ControlCommand
from canary.core.rollout import is_rollout_command_id
from canary.errors import CanaryError
from canary.security.keys import KeyRing, now_ms
from canary.security.scope import SCOPE, Scope, describe_claimed
from canary.security.signing import is_signed, signature_fields, verify_signature

RejectReason = Literal[
    "no_value",
    "too_large",
    "too_deep",
    "not_utf8",
    "not_json",
    "not_object",
    "malformed",
    "unsigned",
    "bad_signature",
    "unknown_key",
    "wrong_scope",
    "key_not_permitted",
    "expired",
    "replayed",
    "invalid_preset",
    "hash_mismatch",
    "unverifiable",
]
REJECT_REASONS: tuple[RejectReason, ...] = (
    "no_value",
    "too_large",
    "too_deep",
    "not_utf8",
    "not_json",
    "not_object",
    "malformed",
    "unsigned",
    "bad_signature",
    "unknown_key",
    "wrong_scope",
    "key_not_permitted",
    "expired",
    "replayed",
    "invalid_preset",
    "hash_mismatch",
    "unverifiable",
)
POISON_REASONS: frozenset[str] = frozenset(
    {"no_value", "too_large", "too_deep", "not_utf8", "not_json", "not_object", "malformed", "unverifiable"}
)
"""Reasons that say the record is not a command at all (as opposed to a command refused)."""
MAX_SKEW_MS = 60_000
MAX_VALIDITY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the verifier says about one control record."""

    accepted: bool
    reason: RejectReason | None
    detail: str
    command: ControlCommand | None
    key_id: str | None = None
    signer: str | None = None  # the trusted key's name

    @property
    def poison(self) -> bool:
        """Rejected because the record is not a command at all (unreadable or malformed)."""
        return not self.accepted and self.reason in POISON_REASONS

    @property
    def message(self) -> str:
        """One line for logs and the audit's ``error_message``."""
        if self.accepted:
            return f"accepted: {self.detail}"
        return f"rejected ({self.reason}): {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "detail": self.detail,
            "command_id": self.command.command_id if self.command else None,
            "key_id": self.key_id,
            "signer": self.signer,
        }


def _reject(
    reason: RejectReason, detail: str, cmd: ControlCommand | None, key_id: str | None = None, signer: str | None = None
) -> Verdict:
    return Verdict(False, reason, detail, cmd, key_id, signer)


def _decode(raw: object) -> dict[str, Any]:
    """The record as a JSON object, bounded (canary.core.wire): raises wire.Rejected with its code."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or isinstance(raw, bytes | bytearray | memoryview | str):
        return wire.decode_object(raw, wire.CONTROL)
    raise wire.Rejected("not_object", f"expected a control record, got a {type(raw).__name__}")


def _snapshot_problem(label: str, snapshot: dict[str, Any]) -> str | None:
    try:
        Preset.from_snapshot(snapshot)
    except PresetValidationError as exc:
        return f"{label} is not a valid preset: {exc}"
    except Exception as exc:  # whatever a hostile snapshot makes the parser raise, it is not a preset
        return f"{label} is not a valid preset: {type(exc).__name__}: {exc}"
    return None


class CommandVerifier:
    """Accepts or rejects control records, in topic order; counts both (for logs and metrics). Bound to the
    ``scope`` of the control topic it reads (None, unbound, only in Kafka-free tests)."""

    def __init__(
        self, keys: KeyRing, *, insecure: bool = False, max_skew_ms: int = MAX_SKEW_MS, scope: Scope | None = None
    ) -> None:
        self.keys = keys
        self.scope = scope
        self.insecure = insecure
        self.max_skew_ms = max_skew_ms
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self._accepted_ids: dict[str, int | None] = {}  # command id → append time of the accepted copy

    def check(
        self, raw: bytes | str | Mapping[str, Any] | None, appended_at_ms: int | None = None, *, record: bool = True
    ) -> Verdict:
        """Verify one record appended at ``appended_at_ms`` (the record timestamp; now if unknown). With
        ``record`` (the default) the verdict is counted and an accepted id is remembered for ``replayed``.
        Never raises, whatever ``raw`` holds."""
        try:
            verdict = self._check(raw, now_ms() if appended_at_ms is None else appended_at_ms)
        except Exception as exc:  # a check that raised on a hostile value: refuse the record, never crash
            verdict = _reject("unverifiable", f"verification raised {type(exc).__name__}: {exc}"[:500], None)
        if record:
            if verdict.accepted:
                self.accepted += 1
                assert verdict.command is not None
                self._accepted_ids[verdict.command.command_id] = appended_at_ms
            else:
                assert verdict.reason is not None
                self.rejected[verdict.reason] += 1
        return verdict

    def counts(self) -> dict[str, int]:
        """``accepted`` and every reject reason (zeros included): the shape a metrics endpoint exports."""
        return {"accepted": self.accepted, **{r: self.rejected.get(r, 0) for r in REJECT_REASONS}}

    def _check(self, raw: bytes | str | Mapping[str, Any] | None, at_ms: int) -> Verdict:
        try:
            message = _decode(raw)
        except wire.Rejected as exc:
            return _reject(exc.code if exc.code != "invalid" else "malformed", exc.detail[:500], None)
        try:
            cmd = ControlCommand.from_dict(message)
        except (ValueError, TypeError, CanaryError) as exc:
            return _reject("malformed", str(exc)[:500], None)
        key_id: str | None = None
        signer: str | None = None
        if not self.insecure:
            if not is_signed(message):
                return _reject("unsigned", f"{cmd.type} {cmd.command_id} carries no signature", cmd)
            try:
                fields = signature_fields(message)
            except ValueError as exc:
                return _reject("bad_signature", f"malformed signature fields: {exc}", cmd)
            key_id = fields.key_id
            key = self.keys.get(key_id)
            if key is None:
                where = f" in {self.keys.trusted_dir}" if self.keys.trusted_dir is not None else ""
                return _reject("unknown_key", f"key {key_id} is not trusted{where}", cmd, key_id)
            signer = key.name
            if not verify_signature(message, key.public_key, fields.signature):
                return _reject(
                    "bad_signature", f"signature does not verify with key {key_id} ({key.name})", cmd, key_id, signer
                )
            if self.scope is not None and message.get(SCOPE) != self.scope.to_dict():
                claimed = message.get(SCOPE)
                detail = f"signed for {describe_claimed(claimed)}" if claimed is not None else "signed without a scope"
                return _reject("wrong_scope", f"{detail}; this reader is {self.scope.describe()}", cmd, key_id, signer)
            if not key.permits(cmd.type, cmd.command_id):
                return _reject(
                    "key_not_permitted",
                    f"key {key_id} ({key.name}) has role {key.role}, which may not sign {cmd.type}"
                    + (
                        " (worker keys: rollback, pause, rollout-… steps of the plan, resume-shared-…)"
                        if key.role == "worker"
                        else ""
                    ),
                    cmd,
                    key_id,
                    signer,
                )
            problem = self._time_problem(cmd.issued_at_ms, fields.expires_at_ms, at_ms)
            if problem is not None:
                return _reject("expired", problem, cmd, key_id, signer)
        if cmd.command_id in self._accepted_ids and not is_rollout_command_id(cmd.command_id):
            return _reject(
                "replayed",
                f"command id {cmd.command_id} was already accepted earlier on the topic",
                cmd,
                key_id,
                signer,
            )
        if cmd.type == "start":
            for label, snapshot in (
                ("candidate_config", cmd.candidate_config),
                ("last_good_config", cmd.last_good_config),
            ):
                problem = None if snapshot is None else _snapshot_problem(label, snapshot)
                if problem is not None:
                    return _reject("invalid_preset", problem[:1000], cmd, key_id, signer)
            if cmd.candidate_config is not None:
                actual = snapshot_hash(cmd.candidate_config)
                if cmd.candidate_config_hash != actual:
                    detail = (
                        f"candidate_config_hash {cmd.candidate_config_hash} is not the snapshot's content hash {actual}"
                    )
                    return _reject("hash_mismatch", detail, cmd, key_id, signer)
        how = "insecure mode, signature not checked" if self.insecure else f"signed by {signer} ({key_id})"
        return Verdict(True, None, f"{cmd.type} {cmd.command_id} {how}", cmd, key_id, signer)

    def _time_problem(self, issued_at_ms: int, expires_at_ms: int, at_ms: int) -> str | None:
        if at_ms > expires_at_ms:
            return f"appended at {at_ms}, {at_ms - expires_at_ms} ms after it expired (expires_at_ms {expires_at_ms})"
        if issued_at_ms > at_ms + self.max_skew_ms:
            return f"issued_at_ms {issued_at_ms} is {issued_at_ms - at_ms} ms after it was appended (clock skew)"
        if expires_at_ms - issued_at_ms > MAX_VALIDITY_MS:
            return f"valid for {(expires_at_ms - issued_at_ms) // 1000} s, longer than {MAX_VALIDITY_MS // 1000} s"
        return None
