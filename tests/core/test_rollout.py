"""Rollout plans: the tracker's outcomes on literal windows, the ledger holding rollout commands to the plan."""

from __future__ import annotations

import pytest

from canary.core.rollout import (
    DeploymentView,
    RolloutPlan,
    RolloutStep,
    RolloutTracker,
    gate_command_id,
    plan_problems,
    promote_command_id,
    step_command_id,
)
from canary.errors import ConfigError

W = 5000
T0 = 1_000_000


def plan(*steps: RolloutStep, min_total: float = 0.0, max_s: float | None = None, auto: bool = True) -> RolloutPlan:
    return RolloutPlan(tuple(steps), min_total, max_s, auto)


def view(
    weight: float, step_at: int = T0, status: str = "running", applied: frozenset[str] = frozenset()
) -> DeploymentView:
    return DeploymentView("dep", status, weight, T0, step_at, applied)


def window(tracker: RolloutTracker, dep: DeploymentView, k: int, failing: bool = False, starved: bool = False):  # type: ignore[no-untyped-def]
    start = dep.step_started_at_ms + k * W
    return tracker.observe(dep, start, start + W, failing, starved)


TWO = plan(RolloutStep(0.1, 2), RolloutStep(0.5, 2))


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        # (failing, starved) per window at step 1 (weight 0.1) → the last window's action
        ([(False, False)], "hold"),
        ([(False, False), (False, False)], "advance"),
        ([(False, False), (True, False), (False, False)], "hold"),  # a failing window resets the count
        ([(False, False), (False, True), (False, False)], "advance"),  # a starved one neither counts nor resets
        ([(False, True), (False, True)], "hold"),
    ],
)
def test_a_step_advances_after_its_counting_windows(windows: list[tuple[bool, bool]], expected: str) -> None:
    tracker = RolloutTracker(TWO)
    dep = view(0.1)
    decisions = [window(tracker, dep, k, f, s) for k, (f, s) in enumerate(windows)]
    assert decisions[-1].action == expected
    if expected == "advance":
        assert decisions[-1].command_id == step_command_id("dep", 1)
        assert decisions[-1].weight == 0.5
        assert "step 1 of 2 (weight 0.1) passed 2 windows" in decisions[-1].reason


def test_windows_that_began_before_the_step_do_not_count() -> None:
    tracker = RolloutTracker(TWO)
    dep = view(0.1, step_at=T0 + 2500)  # mid-window: the first window saw two weights
    early = tracker.observe(dep, T0, T0 + W, False, False)
    assert early.action == "hold" and tracker.counted == 0


def test_redelivered_windows_count_once() -> None:
    tracker = RolloutTracker(TWO)
    dep = view(0.1)
    window(tracker, dep, 0)
    again = window(tracker, dep, 0)
    assert again.action == "hold" and tracker.counted == 1


def test_min_duration_holds_a_step_with_enough_windows() -> None:
    tracker = RolloutTracker(plan(RolloutStep(0.1, 1, min_duration_s=12), RolloutStep(0.5)))
    dep = view(0.1)
    assert window(tracker, dep, 0).action == "hold"  # 1 window, 5 s
    assert window(tracker, dep, 1).action == "hold"  # 10 s
    assert window(tracker, dep, 2).action == "advance"  # 15 s


def test_the_last_step_promotes_after_the_minimum_total_duration() -> None:
    tracker = RolloutTracker(plan(RolloutStep(0.5, 1), RolloutStep(1.0, 1), min_total=30))
    dep = view(1.0, step_at=T0 + 20_000)
    first = window(tracker, dep, 0)  # ends 25 s after the start
    assert first.action == "hold" and "min_total_duration_s 30" in first.reason
    second = window(tracker, dep, 1)  # 30 s
    assert second.action == "promote" and second.command_id == promote_command_id("dep")


def test_without_auto_promote_a_complete_plan_waits_for_an_operator() -> None:
    tracker = RolloutTracker(plan(RolloutStep(1.0, 1), auto=False))
    d = window(tracker, view(1.0), 0)
    assert d.action == "hold" and "canary stop --promote" in d.reason


def test_a_manual_gate_pauses_once_and_is_passed_after_resume() -> None:
    gated = plan(RolloutStep(0.1, 1, gate="manual"), RolloutStep(0.5))
    tracker = RolloutTracker(gated)
    d = window(tracker, view(0.1), 0)
    assert d.action == "gate" and d.command_id == gate_command_id("dep", 0)
    paused = window(tracker, view(0.1, status="paused", applied=frozenset({d.command_id})), 1)
    assert paused.action == "hold" and "paused" in paused.reason
    resumed = window(tracker, view(0.1, applied=frozenset({d.command_id})), 2)
    assert resumed.action == "advance"


def test_past_max_duration_the_rollout_expires() -> None:
    tracker = RolloutTracker(plan(RolloutStep(0.1, 100), RolloutStep(0.5), max_s=20))
    dep = view(0.1)
    assert window(tracker, dep, 2).action == "hold"  # ends at 15 s
    d = window(tracker, dep, 3)
    assert d.action == "expire" and "max_duration_s 20" in d.reason


def test_an_operator_weight_off_the_plan_holds_and_a_weight_on_it_moves_the_step() -> None:
    tracker = RolloutTracker(TWO)
    assert window(tracker, view(0.3), 0).action == "hold"
    window(tracker, view(0.5), 1)
    assert tracker.step == 1


def test_state_round_trips() -> None:
    tracker = RolloutTracker(TWO)
    window(tracker, view(0.1), 0)
    again = RolloutTracker.from_dict(TWO, tracker.to_dict())
    assert again == tracker


@pytest.mark.parametrize(
    ("steps", "min_total", "max_s", "problem"),
    [
        ((), 0.0, None, ("steps", [], "must list at least one step")),
        (
            (RolloutStep(0.5), RolloutStep(0.25)),
            0.0,
            None,
            ("steps[1].weight", 0.25, "must be above the previous step's 0.5"),
        ),
        ((RolloutStep(1.5),), 0.0, None, ("steps[0].weight", 1.5, "must be in (0, 1]")),
        ((RolloutStep(0.1, -1),), 0.0, None, ("steps[0].min_windows", -1, "must be >= 0")),
        (
            (RolloutStep(0.1),),
            60.0,
            30.0,
            ("max_duration_s", 30.0, "must be above min_total_duration_s (60), or null for no limit"),
        ),
    ],
)
def test_bad_plans_name_the_field(
    steps: tuple[RolloutStep, ...], min_total: float, max_s: float | None, problem: tuple[str, object, str]
) -> None:
    assert plan_problems(steps, min_total, max_s) == [problem]
    with pytest.raises(ConfigError):
        RolloutPlan(steps, min_total, max_s)


# The ledger's side (rollout commands held to the plan): tests/core/test_rollout_ledger.py
