"""Signing a control command: Ed25519 over its canonical bytes.

A signed command is the command's JSON object plus four fields (docs/contracts.md, "Signature"):
``key_id`` (which trusted key signed it), ``expires_at_ms`` (it is refused when appended to the control
topic after that), ``scope`` (the environment and control topic it is for, :mod:`canary.security.scope`)
and ``signature`` (standard base64 of the 64-byte Ed25519 signature). The signed bytes are the whole object
**without** ``signature`` — so ``key_id``, ``expires_at_ms``, ``scope`` and ``issued_at_ms`` are signed
too — written as JSON with sorted keys, compact separators and UTF-8 (no ASCII escaping), after one
JSON round trip (tuples become lists, non-string keys strings), exactly as a reader re-serializes the
object it parsed. Any field changed, added or removed after signing breaks the signature.

Signing adds fields and never changes any: the SLO agent's deterministic ``command_id`` stays what the
Kafka-free pipeline decided.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from canary.core.models import ControlCommand
from canary.security.keys import key_id_for, load_private_key, now_ms
from canary.security.scope import SCOPE, Scope

SIGNATURE = "signature"
KEY_ID = "key_id"
EXPIRES_AT_MS = "expires_at_ms"
SIGNATURE_FIELDS = (KEY_ID, EXPIRES_AT_MS, SIGNATURE)
DEFAULT_TTL_MS = 300_000  # five minutes from issued_at_ms to the broker's append time


def _plain(message: Mapping[str, Any]) -> Any:
    # One round trip makes the object exactly what a reader parses back (lists, string keys).
    return json.loads(json.dumps(dict(message), ensure_ascii=False))


def canonical_bytes(message: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: ``message`` without ``signature``, sorted keys, compact, UTF-8."""
    body = {k: v for k, v in _plain(message).items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def is_signed(message: Mapping[str, Any]) -> bool:
    return any(f in message for f in SIGNATURE_FIELDS)


@dataclass(frozen=True, slots=True)
class SignatureFields:
    key_id: str
    expires_at_ms: int
    signature: bytes


def signature_fields(message: Mapping[str, Any]) -> SignatureFields:
    """The signature fields, checked; ValueError naming the field that is missing or malformed."""
    key_id, expires, sig = (message.get(f) for f in SIGNATURE_FIELDS)
    if not isinstance(key_id, str) or not key_id:
        raise ValueError(f"key_id: expected a non-empty string, got {key_id!r:.80}")
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise ValueError(f"expires_at_ms: expected an integer, got {expires!r:.80}")
    if not isinstance(sig, str):
        raise ValueError(f"signature: expected a base64 string, got {sig!r:.80}")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"signature: not base64: {sig!r:.80}") from None
    if len(raw) != 64:
        raise ValueError(f"signature: expected 64 bytes, got {len(raw)}")
    return SignatureFields(key_id, expires, raw)


def verify_signature(message: Mapping[str, Any], public: Ed25519PublicKey, signature: bytes) -> bool:
    try:
        public.verify(signature, canonical_bytes(message))
    except InvalidSignature:
        return False
    return True


class CommandSigner:
    """Signs command payloads with one private key (an operator's or the SLO agent's worker key), for the
    control topic of ``scope`` (the topic it writes to; None only in Kafka-free tests: every reader bound to
    a scope refuses an unscoped command)."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        ttl_ms: int = DEFAULT_TTL_MS,
        path: Path | None = None,
        scope: Scope | None = None,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        self._key = private_key
        self.ttl_ms = ttl_ms
        self.key_id = key_id_for(private_key.public_key())
        self.path = path
        self.scope = scope

    @classmethod
    def from_file(cls, path: Path, ttl_ms: int = DEFAULT_TTL_MS, scope: Scope | None = None) -> CommandSigner:
        return cls(load_private_key(path), ttl_ms, path, scope)

    def for_scope(self, scope: Scope) -> CommandSigner:
        """The same key signing for another control topic (e.g. a promotion pipeline's other environment)."""
        return CommandSigner(self._key, self.ttl_ms, self.path, scope)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, message: Mapping[str, Any], now: int | None = None) -> dict[str, Any]:
        """``message`` plus ``key_id``, ``expires_at_ms`` (issued_at_ms + ttl), ``scope`` and ``signature``."""
        out = {k: v for k, v in _plain(message).items() if k not in SIGNATURE_FIELDS and k != SCOPE}
        issued = out.get("issued_at_ms")
        base = issued if isinstance(issued, int) and not isinstance(issued, bool) else (now or now_ms())
        out[KEY_ID] = self.key_id
        out[EXPIRES_AT_MS] = base + self.ttl_ms
        if self.scope is not None:
            out[SCOPE] = self.scope.to_dict()
        out[SIGNATURE] = base64.b64encode(self._key.sign(canonical_bytes(out))).decode()
        return out

    def sign_command(self, cmd: ControlCommand) -> dict[str, Any]:
        return self.sign(cmd.to_dict())

    def encode(self, cmd: ControlCommand) -> bytes:
        """The record value to produce: the signed command as JSON."""
        return json.dumps(self.sign_command(cmd)).encode()
