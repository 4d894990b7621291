"""The ledger and the keys around a shock both arms share: the SLO agent lifts only its own pause."""

from __future__ import annotations

from canary.core.deployment import ControlLedger
from canary.core.models import ControlCommand
from canary.core.slo import shock_pause_command_id, shock_resume_command_id
from canary.security import KeyRing, TrustedKey
from canary.security.verify import CommandVerifier
from devtools.signing import OPERATOR, T0, WORKER, start


def _cmd(kind: str, command_id: str, at: int) -> ControlCommand:
    return ControlCommand(command_id, kind, "dep-1", None, None, None, None, "test", None, "slo-agent", at)  # type: ignore[arg-type]


def _ledger() -> ControlLedger:
    ledger = ControlLedger()
    assert ledger.apply(start(), T0).applied
    return ledger


def test_a_shock_resume_lifts_the_shock_pause() -> None:
    ledger = _ledger()
    assert ledger.apply(_cmd("pause", shock_pause_command_id("dep-1", T0 + 5000), T0 + 5100), T0 + 5100).applied
    assert ledger.deployments["dep-1"].paused_by == shock_pause_command_id("dep-1", T0 + 5000)
    t = ledger.apply(_cmd("resume", shock_resume_command_id("dep-1", T0 + 15000), T0 + 15100), T0 + 15100)
    assert t.applied and ledger.deployments["dep-1"].status == "running"
    assert ledger.deployments["dep-1"].paused_by is None


def test_a_shock_resume_never_lifts_another_pause() -> None:
    for pause_id in ("pause-ops-1", f"pause-insufficient-dep-1-{T0}", shock_pause_command_id("dep-2", T0)):
        ledger = _ledger()
        assert ledger.apply(_cmd("pause", pause_id, T0 + 5100), T0 + 5100).applied
        t = ledger.apply(_cmd("resume", shock_resume_command_id("dep-1", T0 + 15000), T0 + 15100), T0 + 15100)
        assert not t.applied and "lifts a shared-shock pause" in t.note
        assert ledger.deployments["dep-1"].status == "paused"
    # An operator's own resume lifts any pause.
    assert ledger.apply(_cmd("resume", "resume-ops-1", T0 + 16000), T0 + 16000).applied


def test_worker_keys_sign_only_the_shock_resume() -> None:
    verifier = CommandVerifier(
        KeyRing(
            keys=(
                TrustedKey.from_public(OPERATOR.public_key, "operator:alice", "operator"),
                TrustedKey.from_public(WORKER.public_key, "worker:w1", "worker"),
            )
        )
    )
    ok = verifier.check(WORKER.sign_command(_cmd("resume", shock_resume_command_id("dep-1", T0), T0)), T0 + 10)
    assert ok.accepted, ok.message
    other = verifier.check(WORKER.sign_command(_cmd("resume", "resume-anything", T0)), T0 + 10)
    assert other.reason == "key_not_permitted" and "resume-shared-" in other.detail
