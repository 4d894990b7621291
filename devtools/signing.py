"""Keys, signers and commands for the Kafka-free security tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.config import PresetStore
from canary.core.deployment import snapshot_hash
from canary.core.models import ControlCommand
from canary.security import CommandSigner, CommandVerifier, KeyRing, Scope, TrustedKey

ROOT = Path(__file__).resolve().parents[1]
PRESETS = PresetStore(ROOT / "configs" / "presets")
T0 = 1_800_000_000_000

# The readers under test are staging's; the signers sign for it unless a test says otherwise.
SCOPE = Scope("staging", "canary.staging.canary_control")
OPERATOR = CommandSigner(Ed25519PrivateKey.generate(), scope=SCOPE)
WORKER = CommandSigner(Ed25519PrivateKey.generate(), scope=SCOPE)
STRANGER = CommandSigner(Ed25519PrivateKey.generate(), scope=SCOPE)
TRUSTED = (
    TrustedKey.from_public(OPERATOR.public_key, "operator:alice", "operator"),
    TrustedKey.from_public(WORKER.public_key, "worker:w1", "worker"),
)


def verifier(insecure: bool = False, scope: Scope | None = SCOPE) -> CommandVerifier:
    return CommandVerifier(KeyRing(keys=TRUSTED), insecure=insecure, scope=scope)


def start(
    candidate: str = "candidate_high_recall", command_id: str = "start-1", deployment_id: str = "dep-1", **snapshot: Any
) -> ControlCommand:
    snap = PRESETS.get(candidate).to_dict()
    for section, values in snapshot.items():
        snap[section] = {**snap[section], **values}
    return ControlCommand(
        command_id=command_id,
        type="start",
        deployment_id=deployment_id,
        candidate_config=snap,
        candidate_config_hash=PRESETS.get(candidate).content_hash,
        last_good_config=PRESETS.get("last_good").to_dict(),
        weight=0.1,
        reason=None,
        evidence=None,
        issued_by="cli:alice",
        issued_at_ms=T0,
    )


def with_hash(cmd: ControlCommand) -> ControlCommand:
    """The same command with its hash recomputed from its (possibly edited) snapshot."""
    assert cmd.candidate_config is not None
    d = cmd.to_dict()
    d["candidate_config_hash"] = snapshot_hash(cmd.candidate_config)
    return ControlCommand.from_dict(d)


def rollback(command_id: str = "rollback-dep-1", deployment_id: str = "dep-1") -> ControlCommand:
    return ControlCommand(
        command_id=command_id,
        type="rollback",
        deployment_id=deployment_id,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=0.0,
        reason="SLO violation: p95_ms failed for 2 consecutive buckets",
        evidence={"rule": "p95_ms", "windows": [{"window_id": "w@1", "value": 1650.5}]},
        issued_by="slo-agent",
        issued_at_ms=T0 + 30_000,
    )
