"""Issue #22: what the routers reject is not applied offline either (Kafka-free).

An unsigned start + promote on the control topic is rejected live; export, the reports, replay and the
rebuilt audit once applied them anyway — the export said ``promoted``, the audit ``success: true``. Every
offline reader now verifies through :mod:`canary.control` with the trusted keys; ``--insecure`` (an insecure
verifier) is the one switch for unsigned lab topics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from canary.control import fold_records
from canary.control.audit import audit_events, outcome_event
from canary.control.records import VerifyControl, verify_control_records
from canary.core.models import ControlCommand
from canary.errors import ConfigError, DeploymentError
from canary.pipeline.run import Record, run_pipeline
from canary.replay.dumpfile import envelope, load_span
from canary.reports.files import rebuild_audit
from canary.reports.model import build_report
from devtools.signing import OPERATOR, SCOPE, STRANGER, T0, WORKER, rollback, start, verifier
from streams.registry import DeploymentRegistry

CONTROL = SCOPE.control_topic


def promote(command_id: str = "promote-dep-1", deployment_id: str = "dep-1", at: int = T0 + 60_000) -> ControlCommand:
    return ControlCommand(
        command_id=command_id,
        type="promote",
        deployment_id=deployment_id,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=1.0,
        reason="ship it",
        evidence=None,
        issued_by="cli:alice",
        issued_at_ms=at,
    )


def _unsigned(cmd: ControlCommand) -> bytes:
    return json.dumps(cmd.to_dict()).encode()


def _signed(cmd: ControlCommand, signer: Any = OPERATOR) -> bytes:
    return bytes(signer.encode(cmd))


# The reproduction: an unsigned start, then an unsigned promote, appended a few seconds after issue.
UNSIGNED = [_unsigned(start()), _unsigned(promote())]
UNSIGNED_TIMES = [T0 + 10, T0 + 60_010]


def test_reports_do_not_apply_an_unsigned_start_and_promote() -> None:
    dicts = [json.loads(v) for v in UNSIGNED]
    # Without a verifier the commands are taken as verified (the dashboard's, a replay's): applied.
    assert build_report(commands=dicts, command_times=UNSIGNED_TIMES).status == "promoted"
    # Read from the topic, they are verified as the routers verify them: nothing was ever started.
    with pytest.raises(DeploymentError, match="no canary deployment has ever been started"):
        build_report(commands=dicts, command_times=UNSIGNED_TIMES, verifier=verifier())
    # A signed start with an unsigned promote: running, and the promote is not among its commands.
    mixed = [json.loads(_signed(start())), dicts[1]]
    report = build_report(commands=mixed, command_times=UNSIGNED_TIMES, verifier=verifier())
    assert report.status == "running"
    assert [c.type for c in report.commands] == ["start"]
    # The explicit switch for an unsigned lab topic applies them.
    assert build_report(commands=dicts, command_times=UNSIGNED_TIMES, verifier=verifier(insecure=True)).status == (
        "promoted"
    )


def test_the_rebuilt_audit_marks_them_success_false_with_the_reason() -> None:
    history = fold_records(UNSIGNED, verifier(), UNSIGNED_TIMES, [0, 1])
    events = rebuild_audit(history, (), UNSIGNED)
    assert [e["event_type"] for e in events] == ["canary_start", "canary_promote"]
    assert all(e["success"] is False for e in events)
    assert [e["details"]["verification"]["reason"] for e in events] == ["unsigned", "unsigned"]
    assert events[0]["error_message"] == "rejected (unsigned): start start-1 carries no signature"
    assert events[1]["error_message"] == "rejected (unsigned): promote promote-dep-1 carries no signature"


def test_the_rebuilt_audit_is_line_for_line_what_the_worker_writes() -> None:
    """Applied, refused by the ledger, unsigned, forged, replayed, poison: the same lines as the live agent."""
    values = [
        _signed(start()),  # applied
        _signed(promote("promote-dep-9", "dep-9", at=T0 + 20)),  # refused by the ledger: no such deployment
        _unsigned(promote()),  # unsigned
        _signed(rollback(), STRANGER),  # unknown_key
        _signed(start()),  # replayed
        b"[[[",  # not a command at all
        _signed(rollback(), WORKER),  # applied
    ]
    times = [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50, T0 + 60, T0 + 30_010]
    registry = DeploymentRegistry("unused:9092", CONTROL, verifier=verifier())
    live = [outcome_event(registry.apply_raw(v, i, t), v) for i, (v, t) in enumerate(zip(values, times, strict=True))]
    history = fold_records(values, verifier(), times, list(range(len(values))))
    assert [o.status for o in history.outcomes] == [
        "applied",
        "refused",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "applied",
    ]
    rebuilt = audit_events(history, values)
    assert rebuilt == live
    assert [e["success"] for e in rebuilt] == [True, False, False, False, False, False, True]
    reasons = [(e["details"].get("verification") or {}).get("reason") for e in rebuilt]
    assert reasons == [None, None, "unsigned", "unknown_key", "replayed", "not_json", None]
    assert rebuilt[1]["error_message"].startswith("refused: ")
    # rebuild_audit: the same lines, a copy of an applied command's id kept once, in time order.
    assert {
        e["event_id"] for e in rebuild_audit(fold_records(values, verifier(), times, list(range(7))), (), values)
    } == {e["event_id"] for e in live}


def _records(values: list[bytes], times: list[int]) -> list[Record]:
    return [Record(CONTROL, 0, i, t, b"dep-1", v) for i, (v, t) in enumerate(zip(values, times, strict=True))]


def test_replay_does_not_apply_them() -> None:
    records = _records(UNSIGNED, UNSIGNED_TIMES)
    commands, times, invalid = verify_control_records(records, verifier())
    assert commands == [] and times == []
    assert [i["reason"].split(":")[0] for i in invalid] == ["rejected (unsigned)", "rejected (unsigned)"]
    trusted = VerifyControl(lambda _topic: verifier())  # a fresh verifier per run, bound to the test's keys
    result = run_pipeline(records, control_topic=CONTROL, horizon_ms=T0 + 120_000, verify_control=trusted)
    assert result.commands == [] and len(result.invalid_commands) == 2
    assert result.decisions == []
    # Verified commands are applied; the insecure switch applies unsigned ones.
    signed = _records([_signed(start()), _signed(promote())], UNSIGNED_TIMES)
    assert [c.type for c in run_pipeline(signed, control_topic=CONTROL, verify_control=trusted).commands] == [
        "start",
        "promote",
    ]
    insecure = run_pipeline(records, control_topic=CONTROL, verify_control=VerifyControl.insecure())
    assert [c.type for c in insecure.commands] == ["start", "promote"]
    # The pipeline cannot verify (it sits below the verifier): control records without a way to verify
    # them are refused, never applied as they are.
    with pytest.raises(ConfigError, match="no verify_control="):
        run_pipeline(records, control_topic=CONTROL)


def test_a_dump_replay_does_not_apply_them(tmp_path: Path) -> None:
    lines = [envelope(CONTROL, 0, i, t, v) for i, (v, t) in enumerate(zip(UNSIGNED, UNSIGNED_TIMES, strict=True))]
    lines.append(envelope("canary.staging.search_results", 0, 0, T0 + 1000, b'{"ts": 1800000001000}'))
    path = tmp_path / "dump.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def bound(control_topic: str) -> Any:
        assert control_topic == CONTROL  # bound to the dump's own control topic
        return verifier()

    span = load_span(path, T0, T0 + 65_000, topic_prefix="canary.staging.", verifier=bound)
    assert span.data.commands == [] and span.data.invalid_commands == 2
    reasons = [c["reason"] for c in span.section["invalid_control_commands"]]
    assert all(r.startswith("rejected (unsigned)") for r in reasons), reasons
    lab = load_span(path, T0, T0 + 65_000, topic_prefix="canary.staging.", verifier=verifier(insecure=True))
    assert [c.type for c in lab.data.commands] == ["start", "promote"]


def test_the_view_shows_only_accepted_commands() -> None:
    """A forged copy of a real command id, appended before the real one, is not what a story shows."""
    from canary.ops.view import ControlView, fold

    forged = replace(rollback(), reason="forged: looks like the agent's")
    values = [_signed(start()), _signed(forged, STRANGER), _signed(rollback(), WORKER)]
    folded = fold(values, verifier(), [T0 + 10, T0 + 20, T0 + 30_010])
    view = ControlView(folded.ledger, [json.loads(v) for v in values], {}, "kafka", 0, rejected=folded.rejected)
    assert [c["reason"] for c in view.accepted_commands()] == [None, rollback().reason]
    assert view.ledger.current is None and "rollback-dep-1" in view.ledger.applied_ids
