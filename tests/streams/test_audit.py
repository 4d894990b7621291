"""The audit log loses nothing: failing writes are retried (never skipped, never half-written), a torn last
line is repaired on restart; and its lines say honestly what became of each control record."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from msgspec.structs import replace

from canary.control.audit import outcome_event, state_event
from canary.core.deployment import ConfigRef, ControlLedger
from canary.core.models import COMMAND_ACTIONS, COMMAND_TYPES, AuditAction, ControlCommand, RouterState
from canary.core.rollout import candidate_window_id, step_command_id
from canary.security import CommandVerifier
from devtools.signing import OPERATOR, PRESETS, T0, TRUSTED, WORKER, rollback, start
from streams import audit as audit_module
from streams.audit import AuditLog
from streams.registry import DeploymentRegistry


def event(i: int, pad: int = 0) -> dict[str, Any]:
    return {"event_id": f"control:c{i}", "event_type": "canary_start", "success": True, "pad": "x" * pad}


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_bytes()
    assert text == b"" or text.endswith(b"\n"), f"torn last line: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def _is(path: Path, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


class Faults:
    """OSError injection into os.write / os.fsync for one file: the next ``n`` calls fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.path = path
        self.write_failures = 0
        self.fsync_failures = 0
        self.partial_first = False
        self.code = errno.ENOSPC
        self.calls = 0
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: Any) -> int:
            if _is(self.path, fd) and self.write_failures > 0:
                self.calls += 1
                if self.partial_first:  # half the line reaches the file, then the disk is full
                    self.partial_first = False
                    return real_write(fd, bytes(data)[: len(data) // 2])
                self.write_failures -= 1
                raise OSError(self.code, os.strerror(self.code))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if _is(self.path, fd) and self.fsync_failures > 0:
                self.calls += 1
                self.fsync_failures -= 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        monkeypatch.setattr(audit_module.os, "write", write)
        monkeypatch.setattr(audit_module.os, "fsync", fsync)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.log"


async def test_enospc_is_retried_until_written_and_the_event_is_held_meanwhile(
    log_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(log_path, retry_initial_s=0.01, retry_max_s=0.05)
    assert await audit.append_durably(event(1))
    faults = Faults(monkeypatch, log_path)
    faults.write_failures = 10**9  # the disk is full until we say otherwise
    with caplog.at_level(logging.WARNING, logger="canary.streams.audit"):
        pending = asyncio.create_task(audit.append_durably(event(2)))
        deadline = time.monotonic() + 10  # a busy machine may take a while to run the first write threads
        while audit.write_failures < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not pending.done(), "the event must be held while its line cannot be written"
        assert audit.stuck_since is not None and audit.write_failures >= 3
        assert [e["event_id"] for e in lines(log_path)] == ["control:c1"]  # nothing half-written
        faults.write_failures = 0  # space freed
        assert await asyncio.wait_for(pending, 5)
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]
    assert audit.stuck_since is None
    stuck = [r for r in caplog.records if "AUDIT LOG STUCK" in r.getMessage()]
    assert len(stuck) == 1 and "ENOSPC" in stuck[0].getMessage() and "control:c2" in stuck[0].getMessage()
    assert any("writable again" in r.getMessage() for r in caplog.records)


async def test_a_partial_write_is_undone_before_the_retry(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = AuditLog(log_path, retry_initial_s=0.01)
    assert await audit.append_durably(event(1))
    faults = Faults(monkeypatch, log_path)
    faults.partial_first = True
    faults.write_failures = 2
    assert await audit.append_durably(event(2, pad=5000))
    assert faults.calls == 3
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]


async def test_fsync_eio_and_read_only_errors_are_retried(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = AuditLog(log_path, retry_initial_s=0.01)
    faults = Faults(monkeypatch, log_path)
    faults.fsync_failures = 1
    assert await audit.append_durably(event(1))
    faults.code = errno.EROFS
    faults.write_failures = 3
    assert await audit.append_durably(event(2))
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]
    assert audit.write_failures == 4


async def test_single_attempt_append_leaves_the_file_clean_and_raises(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(log_path)
    audit.append(event(1))
    faults = Faults(monkeypatch, log_path)
    faults.partial_first = True
    faults.write_failures = 1
    with pytest.raises(OSError):
        audit.append(event(2, pad=3000))
    assert "control:c2" not in audit
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1"]


async def test_duplicates_are_dropped_across_restarts(log_path: Path) -> None:
    audit = AuditLog(log_path)
    assert await audit.append_durably(event(1))
    assert not await audit.append_durably(event(1))
    again = AuditLog(log_path)
    assert "control:c1" in again
    assert not await again.append_durably(event(1))
    assert await again.append_durably(event(2))
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]


def test_a_torn_partial_last_line_is_cut_off_at_restart(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    whole = json.dumps(event(1)) + "\n"
    log_path.write_text(whole + json.dumps(event(2))[:25])
    audit = AuditLog(log_path)
    assert log_path.read_text() == whole
    assert "control:c1" in audit and "control:c2" not in audit  # c2 was never acknowledged: redelivered
    assert audit.repairs and "cut off" in audit.repairs[0]


def test_a_whole_last_event_without_its_newline_is_completed(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    log_path.write_text(json.dumps(event(1)) + "\n" + json.dumps(event(2)))
    audit = AuditLog(log_path)
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]
    assert "control:c2" in audit and "completed" in audit.repairs[0]


async def test_a_torn_tail_that_could_not_be_truncated_is_repaired_before_the_next_write(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(log_path, retry_initial_s=0.01)
    assert await audit.append_durably(event(1))
    faults = Faults(monkeypatch, log_path)
    faults.partial_first = True
    faults.write_failures = 1
    real_truncate = os.ftruncate
    broken = {"n": 1}

    def ftruncate(fd: int, size: int) -> None:
        if broken["n"]:
            broken["n"] -= 1
            raise OSError(errno.EROFS, "read-only")
        real_truncate(fd, size)

    monkeypatch.setattr(audit_module.os, "ftruncate", ftruncate)
    assert await audit.append_durably(event(2, pad=4000))
    assert [e["event_id"] for e in lines(log_path)] == ["control:c1", "control:c2"]


# -- a real small file system ---------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(where: Path, size: str = "256k") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    return filler


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, capture_output=True)


async def test_on_a_full_then_read_only_tmpfs_every_event_lands_exactly_once(tmp_path: Path) -> None:
    with tmpfs(tmp_path / f"mnt-{uuid.uuid4().hex[:6]}") as mnt:
        path = mnt / "audit.log"
        audit = AuditLog(path, retry_initial_s=0.01, retry_max_s=0.05)
        for i in range(5):
            assert await audit.append_durably(event(i, pad=200))
        filler = _fill(mnt)
        held = asyncio.create_task(audit.append_durably(event(5, pad=3000)))
        await asyncio.sleep(0.3)
        assert not held.done() and audit.write_failures > 0
        filler.unlink()  # space freed
        assert await asyncio.wait_for(held, 5)

        _remount(mnt, "ro")
        try:
            held = asyncio.create_task(audit.append_durably(event(6)))
            await asyncio.sleep(0.3)
            assert not held.done()
        finally:
            _remount(mnt, "rw")
        assert await asyncio.wait_for(held, 5)
        ids = [e["event_id"] for e in lines(path)]
        assert ids == [f"control:c{i}" for i in range(7)]
        assert AuditLog(path).repairs == []


# -- what the lines say ---------------------------------------------------------------------------------------
def _registry() -> DeploymentRegistry:
    from canary.security import KeyRing

    registry = DeploymentRegistry("unused:9092", "control", verifier=CommandVerifier(KeyRing(keys=TRUSTED)))
    lg = PRESETS.get("last_good")
    registry.ledger = ControlLedger(last_good=ConfigRef.from_snapshot(lg.to_dict(), lg.content_hash))
    return registry


def _record(payload: dict[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


Build = Callable[[], dict[str, Any] | bytes]


@pytest.mark.parametrize(
    ("build", "event_id", "success", "error"),
    [
        (lambda: OPERATOR.sign_command(start()), "control:start-1", True, None),
        (lambda: start().to_dict(), "control:start-1@0", False, "rejected (unsigned)"),
        (lambda: b"garbage", "control:invalid@0", False, "rejected (not_json)"),
    ],
)
def test_outcome_events_are_honest(build: Build, event_id: str, success: bool, error: str | None) -> None:
    registry = _registry()
    raw = _record(build())
    outcome = registry.apply_raw(raw, 0, T0 + 10)
    entry = outcome_event(outcome, raw)
    assert entry["event_id"] == event_id
    assert entry["success"] is success
    assert (entry["error_message"] or "").startswith(error or "")
    assert entry["details"].get("verification", {}).get("reason") == (None if success else error.split("(")[1][:-1])  # type: ignore[union-attr]


# The spec's audit.log example (canary-seed.md, "审计日志"), verbatim: every field it shows, ours too.
SPEC_EXAMPLE = {
    "event_id": "audit_1234567890_1234",
    "event_type": "canary_start",
    "timestamp": "2024-01-01T12:00:00Z",
    "deployment_id": "canary_1234567890_1234",
    "user_id": "admin",
    "config_name": "candidate_high_recall",
    "details": {
        "candidate_config": "candidate_high_recall",
        "traffic_split": {"active": 0.9, "candidate": 0.1},
        "action": "start_canary_deployment",
    },
    "success": True,
    "error_message": None,
}


def test_audit_lines_have_the_spec_fields_and_details_action() -> None:
    registry = _registry()
    started = _record(OPERATOR.sign_command(start()))
    line = outcome_event(registry.apply_raw(started, 0, T0 + 10), started)
    assert set(line) == set(SPEC_EXAMPLE)
    assert set(line["details"]) >= set(SPEC_EXAMPLE["details"])
    assert {k: line["details"][k] for k in SPEC_EXAMPLE["details"]} == SPEC_EXAMPLE["details"]
    assert (line["event_type"], line["config_name"], line["success"]) == ("canary_start", "candidate_high_recall", True)
    # Automatic or not, a rollback is the same action; user_id says who decided it.
    rolled = _record(WORKER.sign_command(rollback()))
    line = outcome_event(registry.apply_raw(rolled, 1, T0 + 30_010), rolled)
    assert (line["details"]["action"], line["user_id"], line["success"]) == (
        "rollback_canary_deployment",
        "slo-agent",
        True,
    )
    # Refused or rejected, a line still says what was attempted.
    again = _record(start(command_id="start-2", deployment_id="dep-2").to_dict())
    line = outcome_event(registry.apply_raw(again, 2, T0 + 30_020), again)
    assert (line["details"]["action"], line["success"]) == ("start_canary_deployment", False)
    junk = outcome_event(registry.apply_raw(b"[[[", 3, T0 + 30_030), b"[[[")
    assert (junk["event_type"], junk["details"]["action"]) == ("canary_invalid_command", "reject_invalid_command")
    state = RouterState(
        router_id="router-1",
        deployment_id="dep-1",
        status="running",
        active_config="last_good",
        last_good="last_good",
        candidate_config="candidate_high_recall",
        weight=0.1,
        answers_command_id="start-1",
        applied_at_ms=T0 + 20,
        seq=1,
    )
    assert state_event(state)["details"]["action"] == "apply_router_state"


def test_every_command_type_has_its_audit_action() -> None:
    assert set(COMMAND_ACTIONS) == set(COMMAND_TYPES)
    assert set(COMMAND_ACTIONS.values()) <= set(get_args(AuditAction))
    assert len(set(COMMAND_ACTIONS.values())) == len(COMMAND_TYPES)


def test_a_refused_command_and_a_replay_are_audited_as_failures() -> None:
    registry = _registry()
    first = _record(OPERATOR.sign_command(start()))
    assert outcome_event(registry.apply_raw(first, 0, T0 + 10), first)["success"] is True
    # A second start that does not fit beside the first: signed and valid, but the ledger refuses it.
    too_big = replace(start(command_id="start-2", deployment_id="dep-2"), weight=0.95)
    other = _record(OPERATOR.sign_command(too_big))
    refused = outcome_event(registry.apply_raw(other, 1, T0 + 20), other)
    assert refused["event_id"] == "control:start-2@1" and refused["success"] is False
    assert refused["error_message"].startswith("refused: start: weight 0.95 does not fit beside the running canaries")
    # The first start published again: rejected as a replay, audited beside the original (distinct id).
    replay = outcome_event(registry.apply_raw(first, 2, T0 + 30), first)
    assert replay["event_id"] == "control:start-1@2" and replay["success"] is False
    assert "replayed" in replay["error_message"]
    # An unsigned rollback of the running deployment changes nothing.
    forged = _record(rollback().to_dict())
    assert outcome_event(registry.apply_raw(forged, 3, T0 + 30_010), forged)["success"] is False
    assert registry.ledger.current is not None and registry.ledger.current.status == "running"
    assert registry.verifier.counts() == {**registry.verifier.counts(), "accepted": 2, "replayed": 1, "unsigned": 1}


def test_a_premature_step_and_its_later_application_are_both_audited() -> None:
    registry = _registry()
    first = _record(OPERATOR.sign_command(start("candidate_progressive")))
    assert outcome_event(registry.apply_raw(first, 0, T0), first)["success"] is True

    def step_at(issued_at_ms: int) -> bytes:
        windows = [candidate_window_id("dep-1", "candidate_progressive", T0 + k * 5000) for k in (0, 1)]
        cmd = ControlCommand(
            step_command_id("dep-1", 1), "set_weight", "dep-1", None, None, None, 0.25, "rollout",
            {"windows": windows, "window_ms": 5000}, "slo-agent", issued_at_ms,
        )  # fmt: skip
        return _record(WORKER.sign_command(cmd))

    early = step_at(T0 + 8000)  # its second window ends at T0 + 10 s: not yet, by the broker's clock
    refused = outcome_event(registry.apply_raw(early, 1, T0 + 8000), early)
    assert refused["event_id"] == "control:rollout-dep-1-step-1@1" and refused["success"] is False
    assert "(window_after_command: " in refused["error_message"]
    again = step_at(T0 + 11_000)  # the SLO agent issues it again on its next window
    applied = outcome_event(registry.apply_raw(again, 2, T0 + 11_000), again)
    assert applied["event_id"] == "control:rollout-dep-1-step-1" and applied["success"] is True
    copy = outcome_event(registry.apply_raw(again, 3, T0 + 11_050), again)  # a redelivered copy: deduplicated
    assert copy["event_id"] == "control:rollout-dep-1-step-1" and copy["success"] is False
    assert registry.ledger.current is not None and registry.ledger.current.weight == 0.25


async def test_outcome_at_waits_for_the_registry_to_reach_the_offset() -> None:
    registry = _registry()
    waiter = asyncio.create_task(registry.outcome_at(1))
    await asyncio.sleep(0.01)
    registry.apply_raw(_record(OPERATOR.sign_command(start())), 0, T0)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    registry.apply_raw(b"junk", 1, T0)
    outcome = await asyncio.wait_for(waiter, 1)
    assert outcome is not None and outcome.verdict.reason == "not_json"


def test_rejected_commands_are_kept_slim_and_handed_out_once() -> None:
    """10,000 junk control records of up to 1 MB once grew the worker by 100 MB for good: what the registry
    keeps of a rejected command for its audit line is bounded, and the audit agent takes it away."""
    registry = _registry()
    huge = {**start().to_dict(), "reason": "x" * 500_000, "evidence": {"blob": "y" * 500_000}}
    outcome = registry.apply_raw(json.dumps(huge).encode(), 0, T0)  # unsigned: rejected
    assert outcome.verdict.reason == "unsigned"
    kept = registry.outcomes[0].verdict.command
    assert kept is not None and len(json.dumps(kept.to_dict())) < 10_000
    assert kept.command_id == "start-1" and kept.candidate_config == {"metadata": start().candidate_config["metadata"]}  # type: ignore[index]
    line = outcome_event(registry.outcomes[0], json.dumps(huge).encode())
    assert len(json.dumps(line)) < 20_000 and line["success"] is False
    assert asyncio.run(registry.outcome_at(0)) is not None
    assert 0 not in registry.outcomes
    rechecked = registry.recheck(0, json.dumps(huge).encode(), T0)
    assert rechecked.verdict.reason == "unsigned" and not rechecked.applied
