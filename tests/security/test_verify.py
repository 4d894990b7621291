"""The verifier's verdicts, table-driven: every reject reason from a literal forged record."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.core.models import ControlCommand
from canary.core.rollout import step_command_id
from canary.security import REJECT_REASONS, CommandSigner, Scope
from devtools.signing import OPERATOR, SCOPE, STRANGER, T0, WORKER, rollback, start, verifier, with_hash

Payload = bytes | dict[str, Any] | list[Any] | Mapping[str, Any] | None


def _tampered_weight() -> dict[str, Any]:
    signed = OPERATOR.sign_command(start())
    signed["weight"] = 1.0
    return signed


def _scope_swapped_after_signing() -> dict[str, Any]:
    signed = OPERATOR.for_scope(Scope("prod", "canary.prod.canary_control")).sign_command(start())
    signed["scope"] = SCOPE.to_dict()
    return signed


def _tampered_snapshot_after_signing() -> dict[str, Any]:
    signed = OPERATOR.sign_command(start())
    signed["candidate_config"]["retriever"]["alpha"] = 0.1
    return signed


class _Exploding(Mapping[str, Any]):
    """A decoded record that raises wherever it is touched: verification must still return a verdict."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")


CASES: list[tuple[str, Callable[[], Payload], int, str | None, str]] = [
    # (case, record, appended at, expected reason, expected detail fragment)
    ("signed start", lambda: OPERATOR.sign_command(start()), T0 + 50, None, "signed by operator:alice"),
    ("worker rollback", lambda: WORKER.sign_command(rollback()), T0 + 30_050, None, "signed by worker:w1"),
    ("not json", lambda: b"{not json", T0, "not_json", ""),
    ("not an object", lambda: b"[1, 2]", T0, "not_object", "expected a JSON object"),
    ("null record", lambda: b"null", T0, "not_object", "expected a JSON object"),
    ("no value", lambda: None, T0, "no_value", "has no value"),
    ("nested 3000 deep", lambda: b"[" * 3000 + b"]" * 3000, T0, "too_deep", "nested 3000 deep, more than 32"),
    (
        "nested inside a command",
        lambda: {**start().to_dict(), "evidence": {"x": [[[[[[[[1]]]]]]]]}},
        T0,
        "unsigned",
        "",
    ),
    ("too large", lambda: b'{"a": "' + b"x" * (2 << 20) + b'"}', T0, "too_large", "more than 1048576"),
    ("not utf-8", lambda: b'{"a": "\xff"}', T0, "not_utf8", "not UTF-8"),
    ("lone surrogate", lambda: b'{"a": "\\ud800"}', T0, "not_utf8", "lone surrogate"),
    ("a list object", lambda: [1], T0, "not_object", "list"),
    ("a record whose checks raise", lambda: _Exploding(), T0, "unverifiable", "RuntimeError"),
    ("not a command", lambda: {"command_id": "x", "type": "start"}, T0, "malformed", "deployment_id"),
    ("unsigned", lambda: start().to_dict(), T0, "unsigned", "carries no signature"),
    ("untrusted key", lambda: STRANGER.sign_command(start()), T0, "unknown_key", f"key {STRANGER.key_id}"),
    ("weight tampered", _tampered_weight, T0, "bad_signature", "does not verify"),
    ("snapshot tampered after signing", _tampered_snapshot_after_signing, T0, "bad_signature", "does not verify"),
    (
        "key id swapped",
        lambda: {**STRANGER.sign_command(start()), "key_id": OPERATOR.key_id},
        T0,
        "bad_signature",
        "does not verify",
    ),
    ("signature fields partial", lambda: {**start().to_dict(), "key_id": "abc"}, T0, "bad_signature", "expires_at_ms"),
    (
        "signed for another environment",
        lambda: OPERATOR.for_scope(Scope("prod", "canary.prod.canary_control")).sign_command(start()),
        T0,
        "wrong_scope",
        "signed for environment 'prod', topic canary.prod.canary_control; this reader is environment 'staging', "
        "topic canary.staging.canary_control",
    ),
    (
        "signed for another prefix",
        lambda: OPERATOR.for_scope(Scope("staging", "other.staging.canary_control")).sign_command(start()),
        T0,
        "wrong_scope",
        "topic other.staging.canary_control",
    ),
    (
        "signed without a scope",
        lambda: CommandSigner(OPERATOR._key).sign_command(start()),
        T0,
        "wrong_scope",
        "signed without a scope",
    ),
    (
        "a worker rollback for another environment",
        lambda: WORKER.for_scope(Scope("prod", "canary.prod.canary_control")).sign_command(rollback()),
        T0 + 30_050,
        "wrong_scope",
        "environment 'prod'",
    ),
    ("scope swapped after signing", _scope_swapped_after_signing, T0, "bad_signature", "does not verify"),
    ("worker key signs a start", lambda: WORKER.sign_command(start()), T0, "key_not_permitted", "role worker"),
    ("expired", lambda: OPERATOR.sign_command(start()), T0 + 300_001, "expired", "after it expired"),
    ("issued in the future", lambda: OPERATOR.sign_command(start()), T0 - 61_000, "expired", "clock skew"),
    (
        "valid for too long",
        lambda: CommandSigner(OPERATOR._key, ttl_ms=2 * 86_400_000, scope=SCOPE).sign_command(start()),
        T0,
        "expired",
        "longer than",
    ),
    (
        "snapshot not a valid preset (hash recomputed)",
        lambda: OPERATOR.sign_command(with_hash(start(retriever={"top_k": "fifty"}))),
        T0,
        "invalid_preset",
        "retriever.top_k",
    ),
    (
        "snapshot not a valid preset (hash kept)",
        lambda: OPERATOR.sign_command(start(retriever={"top_k": "fifty"})),
        T0,
        "invalid_preset",
        "top_k",
    ),
    (
        "last_good snapshot not a valid preset",
        lambda: OPERATOR.sign_command(
            start().__class__.from_dict({**start().to_dict(), "last_good_config": {"metadata": {"name": "x"}}})
        ),
        T0,
        "invalid_preset",
        "last_good_config",
    ),
    (
        "signed over a tampered snapshot",
        lambda: OPERATOR.sign_command(start(retriever={"alpha": 0.1})),
        T0,
        "hash_mismatch",
        "is not the snapshot's content hash",
    ),
    (
        "start without a hash",
        lambda: OPERATOR.sign({**start().to_dict(), "candidate_config_hash": None}),
        T0,
        "hash_mismatch",
        "None",
    ),
]


@pytest.mark.parametrize(("case", "record", "at", "reason", "detail"), CASES, ids=[c[0] for c in CASES])
def test_verdicts(case: str, record: Callable[[], Payload], at: int, reason: str | None, detail: str) -> None:
    v = verifier()
    verdict = v.check(record(), at)
    assert verdict.reason == reason, verdict.message
    assert verdict.accepted is (reason is None)
    assert detail in verdict.detail
    counts = v.counts()
    assert counts["accepted"] == (1 if reason is None else 0)
    if reason is not None:
        assert counts[reason] == 1 and sum(counts.values()) == 1
        assert verdict.message.startswith(f"rejected ({reason}): ")


def test_the_table_covers_every_reason_but_replayed() -> None:
    # replayed needs history: see below.
    assert {c[3] for c in CASES} | {"replayed"} == {*REJECT_REASONS, None}


def test_raw_bytes_and_dicts_verify_alike() -> None:
    signed = OPERATOR.sign_command(start())
    assert verifier().check(json.dumps(signed).encode(), T0).accepted
    assert verifier().check(json.dumps(signed), T0).accepted


def test_replayed_command_id_is_rejected_after_it_was_accepted() -> None:
    v = verifier()
    first = OPERATOR.sign_command(start())
    assert v.check(first, T0 + 10).accepted
    replay = v.check(first, T0 + 20)  # the very same record, published again
    assert replay.reason == "replayed" and "already accepted" in replay.detail
    same_id = OPERATOR.sign_command(start(deployment_id="dep-2"))  # a different command reusing the id
    assert v.check(same_id, T0 + 30).reason == "replayed"
    assert v.counts()["replayed"] == 2 and v.counts()["accepted"] == 1


def test_a_rollout_id_may_come_again_after_the_ledger_refused_it() -> None:
    """The SLO agent issues a step the ledger refused as premature again, under its deterministic id (the
    ledger applies an id at most once); every other id is still a replay."""
    step = ControlCommand(
        step_command_id("dep-1", 1), "set_weight", "dep-1", None, None, None, 0.25, None, None, "slo-agent", T0
    )
    v = verifier()
    assert v.check(WORKER.sign_command(step), T0 + 10).accepted
    again = WORKER.sign_command(ControlCommand.from_dict({**step.to_dict(), "issued_at_ms": T0 + 5000}))
    assert v.check(again, T0 + 5010).accepted
    assert v.check(WORKER.sign_command(rollback()), T0 + 30_010).accepted
    assert v.check(WORKER.sign_command(rollback()), T0 + 30_020).reason == "replayed"


def test_an_unbound_or_insecure_verifier_checks_no_scope() -> None:
    unscoped = CommandSigner(OPERATOR._key).sign_command(start())
    assert verifier(scope=None).check(unscoped, T0).accepted  # Kafka-free tests only
    assert verifier(insecure=True).check(start().to_dict(), T0).accepted


def test_a_rejected_forgery_does_not_block_the_real_command_id() -> None:
    """The SLO agent's rollback id is predictable (rollback-D); an unsigned copy published first must not
    make the real one look like a replay."""
    v = verifier()
    assert v.check(rollback().to_dict(), T0 + 30_010).reason == "unsigned"
    assert v.check(WORKER.sign_command(rollback()), T0 + 30_020).accepted


def test_inspect_without_recording_does_not_count_or_remember() -> None:
    v = verifier()
    signed = OPERATOR.sign_command(start())
    assert v.check(signed, T0, record=False).accepted
    assert v.check(signed, T0).accepted  # not a replay: the first check was not recorded
    assert v.counts()["accepted"] == 1


def test_insecure_mode_skips_signatures_but_still_checks_content() -> None:
    v = verifier(insecure=True)
    assert v.check(start().to_dict(), T0).accepted
    assert v.check(STRANGER.sign_command(start(command_id="s2")), T0 + 10**9).accepted  # expiry not checked
    assert v.check(start(command_id="s3", retriever={"alpha": 0.2}).to_dict(), T0).reason == "hash_mismatch"
    assert v.check(start().to_dict(), T0).reason == "replayed"


def test_a_key_trusted_by_no_one_is_unknown_even_if_well_formed() -> None:
    lonely = CommandSigner(Ed25519PrivateKey.generate())
    verdict = verifier().check(lonely.sign_command(rollback()), T0 + 30_000)
    assert verdict.reason == "unknown_key" and verdict.key_id == lonely.key_id
