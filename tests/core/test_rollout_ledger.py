"""The ledger holds rollout commands to the operator-signed plan by the broker's clock (issue #19).

Every step and promotion a worker key could forge before its time is refused with a reason; the walk the
SLO agent's tracker makes (canary.pipeline.decisions.DecisionStep) is applied as it goes, because tracker
and ledger count from the same instants.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from canary.core.deployment import ControlLedger
from canary.core.judge import Judgement
from canary.core.models import ControlCommand, WindowResult
from canary.core.rollout import (
    RolloutPlan,
    RolloutStep,
    candidate_window_id,
    gate_command_id,
    promote_command_id,
    step_command_id,
)
from canary.pipeline.decisions import DecisionStep
from canary.pipeline.policies import PolicyBook

W = 5000
T0 = 1_000_000  # a window boundary
S = 1000  # ms per s

PLAN = RolloutPlan(
    (RolloutStep(0.1, 2, 12.0), RolloutStep(0.5, 2), RolloutStep(1.0, 1)),
    min_total_duration_s=40.0,
    max_duration_s=None,
)
SNAPSHOT: dict[str, Any] = {"metadata": {"name": "cand", "version": "1.0.0"}, "rollout": PLAN.to_dict()}


def command(
    command_id: str,
    type_: str,
    weight: float | None = None,
    *,
    issued_at_ms: int = T0,
    evidence: dict[str, Any] | None = None,
    snapshot: dict[str, Any] | None = None,
) -> ControlCommand:
    return ControlCommand(
        command_id=command_id,
        type=type_,  # type: ignore[arg-type]
        deployment_id="dep",
        candidate_config=snapshot,
        candidate_config_hash=None,
        last_good_config={"metadata": {"name": "lg", "version": "1.0.0"}} if snapshot else None,
        weight=weight,
        reason=None,
        evidence=evidence,
        issued_by="slo-agent",
        issued_at_ms=issued_at_ms,
    )


def cites(*starts: int, window_ms: int = W, dep: str = "dep", config: str = "cand") -> dict[str, Any]:
    return {"windows": [candidate_window_id(dep, config, s) for s in starts], "window_ms": window_ms}


def step(i: int, weight: float, evidence: dict[str, Any] | None, issued_at_ms: int = T0) -> ControlCommand:
    return command(step_command_id("dep", i), "set_weight", weight, issued_at_ms=issued_at_ms, evidence=evidence)


def promote(evidence: dict[str, Any] | None, issued_at_ms: int = T0) -> ControlCommand:
    return command(promote_command_id("dep"), "promote", issued_at_ms=issued_at_ms, evidence=evidence)


def started(snapshot: dict[str, Any] = SNAPSHOT, at: int = T0) -> ControlLedger:
    ledger = ControlLedger()
    assert ledger.apply(command("start-1", "start", 0.1, issued_at_ms=at, snapshot=snapshot), at).applied
    return ledger


def at_last_step(ledger: ControlLedger) -> ControlLedger:
    """Walk the plan legitimately to its last step (weight 1.0, begun at T0 + 25 s)."""
    assert ledger.apply(step(1, 0.5, cites(T0, T0 + W)), T0 + 12 * S).applied
    assert ledger.apply(step(2, 1.0, cites(T0 + 15 * S, T0 + 20 * S)), T0 + 25 * S).applied
    return ledger


# -- every step and promotion forged before its time ------------------------------------------------------------
# (command, append time) → the refusal's reason; step 1 began at T0 (min_windows 2, min_duration_s 12).
EARLY_STEP = [
    ("too early by duration", step(1, 0.5, cites(T0, T0 + W)), T0 + 11 * S, "step_too_short"),
    ("no windows cited", step(1, 0.5, None), T0 + 12 * S, "window_malformed"),
    ("too few windows", step(1, 0.5, cites(T0 + W)), T0 + 12 * S, "too_few_windows"),
    ("windows from before the step", step(1, 0.5, cites(T0 - W, T0)), T0 + 12 * S, "window_before_step"),
    ("duplicated windows", step(1, 0.5, cites(T0, T0)), T0 + 12 * S, "window_duplicated"),
    ("windows of another deployment", step(1, 0.5, cites(T0, T0 + W, dep="other")), T0 + 12 * S, "window_foreign"),
    ("windows of another config", step(1, 0.5, cites(T0, T0 + W, config="lg")), T0 + 12 * S, "window_foreign"),
    (
        "windows of the last_good arm",
        step(1, 0.5, {"windows": [f"dep|cand|last_good@{T0}", f"dep|cand|last_good@{T0 + W}"], "window_ms": W}),
        T0 + 12 * S,
        "window_foreign",
    ),
    ("windows not yet ended", step(1, 0.5, cites(T0 + W, T0 + 2 * W)), T0 + 12 * S, "window_after_command"),
    ("unaligned windows", step(1, 0.5, cites(T0 + 500, T0 + 5500)), T0 + 12 * S, "window_unaligned"),
    (
        "1 s windows claimed",
        step(1, 0.5, cites(T0, T0 + 1000, window_ms=1000)),
        T0 + 12 * S,
        "window_malformed",
    ),
    (
        "window id without a start",
        step(1, 0.5, {"windows": ["dep|cand|candidate", "x"], "window_ms": W}),
        T0 + 12 * S,
        "window_malformed",
    ),
    ("window_ms a string", step(1, 0.5, {"windows": [], "window_ms": "5000"}), T0 + 12 * S, "window_malformed"),
    ("skips a step", step(2, 1.0, cites(T0, T0 + W)), T0 + 12 * S, "skips_step"),
    (
        "issued_at pushed ahead (the signer's clock)",
        step(1, 0.5, cites(T0, T0 + W), issued_at_ms=T0 + 60 * S),
        T0 + 11 * S,
        "step_too_short",
    ),
    ("promotion at the first step", promote(cites(T0, T0 + W)), T0 + 60 * S, "not_last_step"),
]


@pytest.mark.parametrize(("cmd", "appended", "reason"), [c[1:] for c in EARLY_STEP], ids=[c[0] for c in EARLY_STEP])
def test_a_step_forged_before_its_time_is_refused(cmd: ControlCommand, appended: int, reason: str) -> None:
    ledger = started()
    t = ledger.apply(cmd, appended)
    assert not t.applied and f"({reason}: " in t.note, t.note
    dep = ledger.deployments["dep"]
    assert dep.weight == 0.1 and dep.status == "running"


# The last step (weight 1.0, min_windows 1) began at T0 + 25 s; min_total_duration_s 40 counts from T0.
EARLY_PROMOTION = [
    ("before min_total_duration_s", promote(cites(T0 + 25 * S)), T0 + 39 * S, "before_min_total_duration"),
    ("no window of the last step", promote(cites()), T0 + 45 * S, "too_few_windows"),
    ("a window of the step before", promote(cites(T0 + 20 * S)), T0 + 45 * S, "window_before_step"),
    ("a window after the command", promote(cites(T0 + 45 * S)), T0 + 45 * S, "window_after_command"),
]


@pytest.mark.parametrize(
    ("cmd", "appended", "reason"), [c[1:] for c in EARLY_PROMOTION], ids=[c[0] for c in EARLY_PROMOTION]
)
def test_a_promotion_forged_before_its_time_is_refused(cmd: ControlCommand, appended: int, reason: str) -> None:
    ledger = at_last_step(started())
    t = ledger.apply(cmd, appended)
    assert not t.applied and f"({reason}: " in t.note, t.note
    assert ledger.deployments["dep"].status == "running"
    assert ledger.refusals[promote_command_id("dep")] == 1  # the worker may issue it again later


def test_the_legitimate_walk_is_applied_and_the_steps_begin_at_their_append_time() -> None:
    ledger = started()
    ledger = at_last_step(ledger)
    dep = ledger.deployments["dep"]
    assert dep.weight == 1.0 and dep.weight_set_at_ms == T0 + 25 * S
    t = ledger.apply(promote(cites(T0 + 25 * S, T0 + 30 * S)), T0 + 40 * S)
    assert t.applied, t.note
    assert ledger.deployments["dep"].status == "promoted"
    assert ledger.refusals == {}


def test_a_step_begins_at_the_later_of_its_issue_and_append_times() -> None:
    ledger = started()
    # Appended 30 s after it was issued (a producer held it back): the step began when it was appended.
    assert ledger.apply(step(1, 0.5, cites(T0, T0 + W), issued_at_ms=T0 + 12 * S), T0 + 42 * S).applied
    assert ledger.deployments["dep"].weight_set_at_ms == T0 + 42 * S
    early = ledger.apply(step(2, 1.0, cites(T0 + 15 * S, T0 + 20 * S)), T0 + 60 * S)
    assert not early.applied and "(window_before_step: " in early.note
    # Issued ahead of the broker's clock (allowed up to 60 s by the verifier): the step began at issue.
    ledger = started()
    assert ledger.apply(step(1, 0.5, cites(T0, T0 + W), issued_at_ms=T0 + 50 * S), T0 + 12 * S).applied
    assert ledger.deployments["dep"].weight_set_at_ms == T0 + 50 * S


def test_a_manual_gate_must_be_passed_by_an_operator_and_a_paused_canary_does_not_move() -> None:
    gated = {**SNAPSHOT, "rollout": RolloutPlan((RolloutStep(0.1, 1, gate="manual"), RolloutStep(0.5)), 0.0).to_dict()}
    ledger = started(gated)
    early = ledger.apply(step(1, 0.5, cites(T0)), T0 + 10 * S)
    assert not early.applied and "(gate_not_passed: " in early.note
    assert ledger.apply(command(gate_command_id("dep", 0), "pause"), T0 + 10 * S).applied  # the worker's gate
    paused = ledger.apply(step(1, 0.5, cites(T0)), T0 + 11 * S)
    assert not paused.applied and "(not_running: the deployment is paused)" in paused.note
    assert ledger.apply(command("resume-1", "resume", issued_at_ms=T0 + 12 * S), T0 + 12 * S).applied  # operator
    assert ledger.apply(step(1, 0.5, cites(T0)), T0 + 13 * S).applied


@pytest.mark.parametrize(
    ("cmd", "refusal"),
    [
        (step(1, 0.9, None), "(off_plan: weight 0.9 is not a later step"),
        (step(2, 0.5, None), "(off_plan: command id rollout-dep-step-2 does not name step 1"),
        (command(step_command_id("dep", 1), "rollback", 0.0), "(off_plan: rollback is not a rollout command"),
    ],
)
def test_commands_off_the_plan_are_refused(cmd: ControlCommand, refusal: str) -> None:
    ledger = started()
    t = ledger.apply(cmd, T0 + 60 * S)
    assert not t.applied and refusal in t.note, t.note


def test_a_candidate_without_a_plan_takes_no_rollout_command() -> None:
    ledger = started({"metadata": {"name": "cand", "version": "1.0.0"}})
    t = ledger.apply(step(1, 0.5, cites(T0, T0 + W)), T0 + 60 * S)
    assert not t.applied and "(no_plan: " in t.note


def test_refusals_are_counted_only_for_the_plans_own_ids() -> None:
    ledger = started()
    for i in range(50):
        ledger.apply(command(f"rollout-dep-junk-{i}", "set_weight", 0.5), T0 + S)
    ledger.apply(step(1, 0.5, None), T0 + S)
    assert ledger.refusals == {step_command_id("dep", 1): 1}


# -- the tracker's walk, through the SLO agent's decision step ----------------------------------------------------
def judged(start_ms: int, n: int = 50) -> Judgement:
    window = WindowResult(
        "dep", "cand", "candidate", start_ms, start_ms + W, 5, n, 0, 100.0, 0.5, n, 0, (), 0, start_ms + W
    )
    return Judgement(window, {}, 0)


def walk(delay_ms: int, windows: int = 30) -> tuple[ControlLedger, list[tuple[int, str, bool, str]]]:
    """Judged windows in order; each issued command is appended ``delay_ms`` after its window's end."""
    ledger = started()
    agent = DecisionStep(PolicyBook(lambda: ledger), lambda: ledger)
    log: list[tuple[int, str, bool, str]] = []
    for k in range(windows):
        start = T0 + k * W
        _, issues = agent._issues([judged(start)], start + W + 1000)
        for issue in issues:
            if issue.issued and issue.command is not None:
                t = ledger.apply(issue.command, start + W + delay_ms)
                log.append((k, issue.command.command_id, t.applied, t.note))
        if not ledger.deployments["dep"].live:
            break
    return ledger, log


def test_the_tracker_walk_is_applied_step_by_step_and_promoted() -> None:
    ledger, log = walk(delay_ms=1200)  # the watermark's grace and the agent's work after the window's end
    assert [(k, i, ok) for k, i, ok, _ in log] == [
        (2, step_command_id("dep", 1), True),  # 2 windows and 12 s at 0.1: the window ending at T0 + 15 s
        (5, step_command_id("dep", 2), True),  # step 2 began at T0 + 16.2 s: its windows from T0 + 20 s
        (7, promote_command_id("dep"), True),  # 1 window at 1.0 and 40 s since the start
    ], log
    assert ledger.deployments["dep"].status == "promoted"
    assert ledger.refusals == {}


def test_a_step_refused_for_clock_skew_is_issued_again_and_applied() -> None:
    # The routers' clock 2.5 s ahead of the broker's (the agent's 1 s after the window's end is 1.5 s before
    # it on the broker): a step due at its newest window's end is refused, and issued again under the same
    # id on the next window, citing its oldest windows, which ended long enough before: applied.
    ledger, log = walk(delay_ms=-1500)
    assert [(k, i, ok) for k, i, ok, _ in log] == [
        (2, step_command_id("dep", 1), True),  # the 12 s bound the step: its windows had ended
        (5, step_command_id("dep", 2), False),
        (6, step_command_id("dep", 2), True),
        (8, promote_command_id("dep"), False),
        (9, promote_command_id("dep"), True),
    ], log
    assert "(window_after_command: " in log[1][3] and "(window_after_command: " in log[3][3]
    assert ledger.deployments["dep"].status == "promoted"
    assert ledger.refusals == {step_command_id("dep", 2): 1, promote_command_id("dep"): 1}


def test_a_refused_id_is_not_issued_again_before_the_ledger_saw_the_refusal() -> None:
    ledger = started()
    agent = DecisionStep(PolicyBook(lambda: ledger), lambda: ledger)
    issued = [
        i.command.command_id
        for k in range(5)
        for i in agent._issues([judged(T0 + k * W)], T0 + (k + 1) * W + 1000)[1]
        if i.issued and i.command is not None
    ]
    assert issued == [step_command_id("dep", 1)]  # never folded: issued once, held after


def test_replace_keeps_the_ledger_view_consistent() -> None:
    ledger = started()
    dep = ledger.deployments["dep"]
    view = replace(dep, began_at_ms=None).rollout_view(ledger.applied_ids)
    assert view.started_at_ms == dep.started_at_ms and view.step_started_at_ms == dep.weight_set_at_ms


def test_reports_and_replays_fold_with_the_append_times_too() -> None:
    """A step issued "at" 12 s (the signer's clock) but appended at 11 s is refused by every reader that
    has the record timestamps: the report's fold and the replay's."""
    from canary.pipeline.loop import fold_commands
    from canary.reports.model import build_report

    start = command("start-1", "start", 0.1, snapshot=SNAPSHOT)
    forged = step(1, 0.5, cites(T0, T0 + W), issued_at_ms=T0 + 12 * S)
    times = [T0, T0 + 11 * S]
    ledger = fold_commands([start, forged], times)
    assert ledger.deployments["dep"].weight == 0.1 and ledger.refusals == {step_command_id("dep", 1): 1}
    report = build_report(commands=[start.to_dict(), forged.to_dict()], command_times=times, deployment_id="dep")
    entry = next(c for c in report.commands if c.command_id == step_command_id("dep", 1))
    assert not entry.applied and "(step_too_short: " in entry.note
