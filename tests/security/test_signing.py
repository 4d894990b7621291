"""Canonical bytes, signing and signature checks (Kafka-free)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.pipeline.decisions import decision_command
from canary.security import CommandSigner, canonical_bytes
from canary.security.signing import SIGNATURE_FIELDS, signature_fields, verify_signature
from devtools.signing import OPERATOR, STRANGER, T0, rollback, start


def test_canonical_bytes_are_sorted_compact_utf8_without_the_signature() -> None:
    message = {"b": 1, "a": {"z": [1, 2.5, None], "y": "é"}, "signature": "xyz", "key_id": "k"}
    assert canonical_bytes(message) == '{"a":{"y":"é","z":[1,2.5,null]},"b":1,"key_id":"k"}'.encode()


def test_canonical_bytes_do_not_depend_on_key_order_or_python_types() -> None:
    a = {"x": (1, 2), "y": {3: "three"}, "z": 0.1}
    b = {"z": 0.1, "y": {"3": "three"}, "x": [1, 2]}
    assert canonical_bytes(a) == canonical_bytes(b)
    # What a reader parses back from the produced JSON has the same canonical bytes.
    assert canonical_bytes(json.loads(json.dumps(a))) == canonical_bytes(a)


def test_sign_adds_the_signature_fields_and_changes_nothing_else() -> None:
    cmd = rollback()
    signed = OPERATOR.sign_command(cmd)
    added = (*SIGNATURE_FIELDS, "scope")
    assert {k: v for k, v in signed.items() if k not in added} == json.loads(json.dumps(cmd.to_dict()))
    assert signed["key_id"] == OPERATOR.key_id and len(OPERATOR.key_id) == 16
    assert signed["scope"] == {"environment": "staging", "control_topic": "canary.staging.canary_control"}
    assert signed["expires_at_ms"] == cmd.issued_at_ms + OPERATOR.ttl_ms
    fields = signature_fields(signed)
    assert verify_signature(signed, OPERATOR.public_key, fields.signature)
    assert not verify_signature(signed, STRANGER.public_key, fields.signature)
    # Ed25519 is deterministic: the same command signs to the same bytes.
    assert OPERATOR.sign_command(cmd) == signed


def test_re_signing_replaces_old_signature_fields() -> None:
    other = OPERATOR.sign_command(rollback())
    again = STRANGER.sign(other)
    assert again["key_id"] == STRANGER.key_id
    assert verify_signature(again, STRANGER.public_key, signature_fields(again).signature)


@pytest.mark.parametrize(
    "field,value",
    [("weight", 1.0), ("deployment_id", "other"), ("key_id", "0" * 16), ("expires_at_ms", T0 + 10**9), ("extra", 1)],
)
def test_any_change_after_signing_breaks_the_signature(field: str, value: object) -> None:
    signed = OPERATOR.sign_command(start())
    sig = signature_fields(signed).signature
    tampered = {**signed, field: value}
    assert not verify_signature(tampered, OPERATOR.public_key, sig)


def test_tampered_snapshot_breaks_the_signature() -> None:
    signed = OPERATOR.sign_command(start())
    sig = signature_fields(signed).signature
    signed["candidate_config"]["retriever"]["top_k"] = "fifty"
    assert not verify_signature(signed, OPERATOR.public_key, sig)


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"key_id": None}, "key_id"),
        ({"expires_at_ms": "soon"}, "expires_at_ms"),
        ({"expires_at_ms": True}, "expires_at_ms"),
        ({"signature": "%%%"}, "not base64"),
        ({"signature": base64.b64encode(b"short").decode()}, "64 bytes"),
        ({"signature": 5}, "base64 string"),
    ],
)
def test_malformed_signature_fields_are_named(patch: dict[str, object], message: str) -> None:
    signed = {**OPERATOR.sign_command(rollback()), **patch}
    with pytest.raises(ValueError, match=message):
        signature_fields(signed)


def test_signing_keeps_the_pipelines_deterministic_command_id() -> None:
    from canary.core.deployment import ConfigRef, ControlLedger
    from canary.core.slo import Decision

    ledger = ControlLedger(last_good=ConfigRef.from_snapshot({"metadata": {"name": "lg"}}))
    ledger.apply(start(deployment_id="D"))
    decision = Decision(
        type="rollback",
        deployment_id="D",
        rule="p95_ms",
        reason="SLO violation",
        evidence={},
        window_id="w@1",
        command_id="rollback-D",
    )
    cmd = decision_command(decision, ledger, T0)
    signed = CommandSigner(Ed25519PrivateKey.generate()).sign_command(cmd)
    assert signed["command_id"] == cmd.command_id == "rollback-D"


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CommandSigner(Ed25519PrivateKey.generate(), ttl_ms=0)
