"""Signed control commands (Kafka-free): key files, canonical bytes and signatures, verification.

See docs/contracts.md ("Control command" and "Verification") for the wire format and the rules.
"""

from canary.security.context import INSECURE_WARNING, ControlSecurity, default_verifier
from canary.security.keys import ROLES, KeyInit, KeyRing, Role, TrustedKey, init_key, load_private_key
from canary.security.scope import Scope
from canary.security.signing import SIGNATURE_FIELDS, CommandSigner, canonical_bytes
from canary.security.verify import REJECT_REASONS, CommandVerifier, RejectReason, Verdict

__all__ = [
    "INSECURE_WARNING",
    "REJECT_REASONS",
    "ROLES",
    "SIGNATURE_FIELDS",
    "CommandSigner",
    "CommandVerifier",
    "ControlSecurity",
    "KeyInit",
    "KeyRing",
    "RejectReason",
    "Role",
    "Scope",
    "TrustedKey",
    "Verdict",
    "canonical_bytes",
    "default_verifier",
    "init_key",
    "load_private_key",
]
