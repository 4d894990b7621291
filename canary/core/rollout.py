"""Rollout plans: a candidate walks up its steps (e.g. 10 % → 25 % → 50 % → 100 %) and is promoted.

The plan travels in the candidate's snapshot (the preset's ``rollout:`` section), so it is signed by the
operator who started the canary and every reader sees the same plan. The worker's progress agent
(:class:`RolloutTracker`, driven by :class:`~canary.pipeline.decisions.DecisionStep`) advances it from
judged candidate windows; the SLO judge keeps guarding every step, so a rollback can come at any step.

Rules (closed set of outcomes per judged window: ``hold``, ``advance``, ``gate``, ``promote``, ``expire``):

* A window **counts** for the current step when it started at or after the step began (so it saw the
  step's weight throughout), no rule failed in it, and it had at least ``min_samples`` candidate requests.
  A failing window resets the step's count to 0; a starved one neither counts nor resets.
* A step is **done** when it has ``min_windows`` counting windows and ``min_duration_s`` has passed since it
  began (event time: the window's end against the step command's issue time).
* A done step with ``gate: manual`` pauses the canary (``rollout-<dep>-gate-<i>``) until an operator runs
  ``canary resume``; a resumed gate is passed.
* After a done step the next step's weight is set (``rollout-<dep>-step-<i>``); after the last one the
  candidate is promoted (``rollout-<dep>-promote``) when ``auto_promote`` is on and ``min_total_duration_s``
  has passed since the start — otherwise the plan waits for an operator's ``canary stop --promote``.
* Past ``max_duration_s`` without promotion the canary is paused (``rollout-<dep>-expired``).

Command ids are deterministic, so a redelivered window or a restarted worker issues the same command and
the control topic applies it once; a worker key may sign ``set_weight`` / ``promote`` only under these ids,
and the ledger refuses any that does not follow the deployment's own plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from canary.errors import SHAPE_ERRORS, ConfigError, InvalidEvent

ROLLOUT_ID_PREFIX: Final = "rollout-"
GATES: Final = ("auto", "manual")
# The spec's advice: watch at least 10 minutes before promoting.
DEFAULT_MIN_TOTAL_DURATION_S: Final = 600.0
DEFAULT_MIN_WINDOWS: Final = 2

Gate = Literal["auto", "manual"]
RolloutAction = Literal["hold", "advance", "gate", "promote", "expire"]


def step_command_id(deployment_id: str, step: int) -> str:
    return f"{ROLLOUT_ID_PREFIX}{deployment_id}-step-{step}"


def gate_command_id(deployment_id: str, step: int) -> str:
    return f"{ROLLOUT_ID_PREFIX}{deployment_id}-gate-{step}"


def promote_command_id(deployment_id: str) -> str:
    return f"{ROLLOUT_ID_PREFIX}{deployment_id}-promote"


def expired_command_id(deployment_id: str) -> str:
    return f"{ROLLOUT_ID_PREFIX}{deployment_id}-expired"


def is_rollout_command_id(command_id: str) -> bool:
    return command_id.startswith(ROLLOUT_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class RolloutStep:
    weight: float
    min_windows: int = DEFAULT_MIN_WINDOWS
    min_duration_s: float = 0.0
    gate: Gate = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "min_windows": self.min_windows,
            "min_duration_s": self.min_duration_s,
            "gate": self.gate,
        }


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """Validated on construction: weights strictly increase within (0, 1], durations are consistent."""

    steps: tuple[RolloutStep, ...]
    min_total_duration_s: float = DEFAULT_MIN_TOTAL_DURATION_S
    max_duration_s: float | None = None
    auto_promote: bool = True

    def __post_init__(self) -> None:
        for path, value, reason in plan_problems(self.steps, self.min_total_duration_s, self.max_duration_s):
            raise ConfigError(f"rollout.{path} = {value!r}: {reason}")

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(s.weight for s in self.steps)

    def step_of_weight(self, weight: float) -> int | None:
        """The step whose weight the deployment has now (None: an operator set another weight)."""
        for i, w in enumerate(self.weights):
            if math.isclose(w, weight, abs_tol=1e-9):
                return i
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "min_total_duration_s": self.min_total_duration_s,
            "max_duration_s": self.max_duration_s,
            "auto_promote": self.auto_promote,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutPlan:
        """From a snapshot's ``rollout`` section (already validated when the preset loaded; checked again)."""
        try:
            steps = tuple(
                RolloutStep(
                    float(s["weight"]),
                    int(s.get("min_windows", DEFAULT_MIN_WINDOWS)),
                    float(s.get("min_duration_s", 0.0)),
                    s.get("gate", "auto"),
                )
                for s in d["steps"]
            )
            max_duration = d.get("max_duration_s")
            return cls(
                steps,
                float(d.get("min_total_duration_s", DEFAULT_MIN_TOTAL_DURATION_S)),
                None if max_duration is None else float(max_duration),
                bool(d.get("auto_promote", True)),
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"RolloutPlan: malformed ({exc!r})") from None


def plan_problems(
    steps: tuple[RolloutStep, ...], min_total_duration_s: float, max_duration_s: float | None
) -> list[tuple[str, object, str]]:
    """Everything wrong with a plan as (field path inside ``rollout``, value, reason); the preset parser
    reports them as field errors, the constructor raises on the first."""
    problems: list[tuple[str, object, str]] = []
    if not steps:
        problems.append(("steps", [], "must list at least one step"))
    previous = 0.0
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not (isinstance(step.weight, float) and 0.0 < step.weight <= 1.0):
            problems.append((f"{where}.weight", step.weight, "must be in (0, 1]"))
        elif step.weight <= previous:
            problems.append((f"{where}.weight", step.weight, f"must be above the previous step's {previous:g}"))
        else:
            previous = step.weight
        if step.min_windows < 0:
            problems.append((f"{where}.min_windows", step.min_windows, "must be >= 0"))
        if not (math.isfinite(step.min_duration_s) and step.min_duration_s >= 0):
            problems.append((f"{where}.min_duration_s", step.min_duration_s, "must be a finite number >= 0"))
        if step.gate not in GATES:
            problems.append((f"{where}.gate", step.gate, f"must be one of {', '.join(GATES)}"))
    if not (math.isfinite(min_total_duration_s) and min_total_duration_s >= 0):
        problems.append(("min_total_duration_s", min_total_duration_s, "must be a finite number >= 0"))
    elif max_duration_s is not None and not (math.isfinite(max_duration_s) and max_duration_s > min_total_duration_s):
        reason = f"must be above min_total_duration_s ({min_total_duration_s:g}), or null for no limit"
        problems.append(("max_duration_s", max_duration_s, reason))
    return problems


def plan_of_snapshot(snapshot: Mapping[str, Any]) -> RolloutPlan | None:
    """The candidate snapshot's plan; None without one. Raises InvalidEvent/ConfigError if malformed."""
    section = snapshot.get("rollout")
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise InvalidEvent(f"RolloutPlan: expected a mapping, got {type(section).__name__}")
    return RolloutPlan.from_dict(section)


def plan_status(
    snapshot: Mapping[str, Any], weight: float, weight_set_at_ms: int | None = None
) -> dict[str, Any] | None:
    """A candidate's plan and where the deployment stands on it (the step is the weight in force), for
    ``status``, ``watch``, the dashboard and the reports; None without a (readable) plan."""
    try:
        plan = plan_of_snapshot(snapshot)
    except (InvalidEvent, ConfigError):
        return None
    if plan is None:
        return None
    step = plan.step_of_weight(weight)
    return {
        **plan.to_dict(),
        "current_step": None if step is None else step + 1,  # 1-based, as people count steps
        "of_steps": len(plan.steps),
        "weight_set_at_ms": weight_set_at_ms,
    }


def plan_text(status: Mapping[str, Any]) -> str:
    """``step 2 of 4: 10% → [25%] → 50% → 100%, then auto-promote (≥ 30 s)``."""
    current = status["current_step"]
    marks = []
    for i, step in enumerate(status["steps"]):
        text = f"{step['weight']:.0%}" + (" (manual gate)" if step["gate"] == "manual" else "")
        marks.append(f"[{text}]" if i + 1 == current else text)
    where = f"step {current} of {status['of_steps']}" if current else "off the plan's weights"
    end = f"auto-promote (≥ {status['min_total_duration_s']:g} s)" if status["auto_promote"] else "manual promotion"
    return f"{where}: {' → '.join(marks)}, then {end}"


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    """What the tracker decided on one judged window, with the numbers behind it."""

    action: RolloutAction
    step: int  # the step the plan is at when deciding
    command_id: str | None = None
    weight: float | None = None  # advance: the next step's weight
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """What the tracker needs of the deployment as the control topic stands (a ledger's Deployment)."""

    deployment_id: str
    status: str  # running | paused | ...
    weight: float
    started_at_ms: int
    step_started_at_ms: int  # issue time of the command that set the current weight (the start's at step 0)
    applied_ids: frozenset[str] = frozenset()


@dataclass
class RolloutTracker:
    """Counting windows of one deployment's current step. State: the step and its count, checkpointed."""

    plan: RolloutPlan
    step: int = 0
    counted: int = 0
    counted_windows: list[int] = field(default_factory=list)  # window starts counted (dedup on redelivery)

    def observe(
        self, dep: DeploymentView, window_start_ms: int, window_end_ms: int, failing: bool, starved: bool
    ) -> RolloutDecision:
        step = self.plan.step_of_weight(dep.weight)
        if step is None:  # an operator moved the weight off the plan: hold until it is back on a step
            return RolloutDecision("hold", self.step, reason=f"weight {dep.weight:g} is not a step of the plan")
        if step != self.step:
            self.step, self.counted, self.counted_windows = step, 0, []
        did = dep.deployment_id
        elapsed_s = (window_end_ms - dep.started_at_ms) / 1000
        if self.plan.max_duration_s is not None and elapsed_s >= self.plan.max_duration_s:
            return RolloutDecision(
                "expire",
                step,
                expired_command_id(did),
                reason=f"rollout: not promoted within max_duration_s {self.plan.max_duration_s:g} "
                f"({elapsed_s:.0f} s since start, at step {step + 1} of {len(self.plan.steps)})",
            )
        if dep.status != "running":
            return RolloutDecision("hold", step, reason=f"deployment is {dep.status}")
        if window_start_ms >= dep.step_started_at_ms and window_start_ms not in self.counted_windows:
            if failing:
                self.counted, self.counted_windows = 0, []
            elif not starved:
                self.counted += 1
                self.counted_windows = [*self.counted_windows[-31:], window_start_ms]
        current = self.plan.steps[step]
        in_step_s = (window_end_ms - dep.step_started_at_ms) / 1000
        if self.counted < current.min_windows or in_step_s < current.min_duration_s:
            return RolloutDecision(
                "hold",
                step,
                reason=f"step {step + 1}: {self.counted}/{current.min_windows} windows, "
                f"{max(in_step_s, 0):.0f}/{current.min_duration_s:g} s",
            )
        done = (
            f"step {step + 1} of {len(self.plan.steps)} (weight {current.weight:g}) passed "
            f"{self.counted} windows in {in_step_s:.0f} s"
        )
        if current.gate == "manual" and gate_command_id(did, step) not in dep.applied_ids:
            return RolloutDecision(
                "gate", step, gate_command_id(did, step), reason=f"rollout: {done}; manual gate: 'canary resume'"
            )
        if step + 1 < len(self.plan.steps):
            nxt = self.plan.steps[step + 1].weight
            return RolloutDecision(
                "advance", step, step_command_id(did, step + 1), nxt, f"rollout: {done}; weight → {nxt:g}"
            )
        if not self.plan.auto_promote:
            return RolloutDecision("hold", step, reason=f"{done}; plan complete, promote with 'canary stop --promote'")
        if elapsed_s < self.plan.min_total_duration_s:
            return RolloutDecision(
                "hold",
                step,
                reason=f"{done}; promotion after min_total_duration_s {self.plan.min_total_duration_s:g} "
                f"({elapsed_s:.0f} s so far)",
            )
        return RolloutDecision(
            "promote", step, promote_command_id(did), reason=f"rollout: {done}; {elapsed_s:.0f} s since start; promote"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "counted": self.counted, "counted_windows": list(self.counted_windows)}

    @classmethod
    def from_dict(cls, plan: RolloutPlan, d: Mapping[str, Any]) -> RolloutTracker:
        try:
            step = int(d["step"])
            if not 0 <= step < len(plan.steps):
                raise ValueError(f"step {step} outside the plan's {len(plan.steps)} steps")
            return cls(plan, step, int(d["counted"]), [int(w) for w in d.get("counted_windows", [])])
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"RolloutTracker: malformed state ({exc!r})") from None


def follows_plan(
    plan: RolloutPlan | None,
    command_type: str,
    command_id: str,
    deployment_id: str,
    weight: float | None,
    current_weight: float,
) -> str | None:
    """Why a rollout-id command does not follow the deployment's plan (None: it does). The ledger's check."""
    if plan is None:
        return "the candidate has no rollout plan"
    if command_type == "set_weight":
        step = None if weight is None else plan.step_of_weight(weight)
        if step is None or step == 0:
            return f"weight {weight} is not a later step of the plan {list(plan.weights)}"
        if command_id != step_command_id(deployment_id, step):
            return f"command id {command_id} does not name step {step} of deployment {deployment_id}"
        if weight is not None and weight <= current_weight:
            return f"weight {weight:g} does not raise the current {current_weight:g}"
        return None
    if command_type == "promote":
        if not plan.auto_promote:
            return "the plan does not auto-promote"
        if plan.step_of_weight(current_weight) != len(plan.steps) - 1:
            return f"the deployment is not at the plan's last step (weight {current_weight:g})"
        if command_id != promote_command_id(deployment_id):
            return f"command id {command_id} is not the plan's promotion of {deployment_id}"
        return None
    if command_type == "pause":
        return None
    return f"{command_type} is not a rollout command"
