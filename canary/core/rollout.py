"""Rollout plans: a candidate walks up its steps (e.g. 10 % → 25 % → 50 % → 100 %) and is promoted.

The plan travels in the candidate's snapshot (the preset's ``rollout:`` section), so it is signed by the
operator who started the canary and every reader sees the same plan. The worker's progress agent
(:class:`RolloutTracker`, driven by :class:`~canary.pipeline.decisions.DecisionStep`) advances it from
judged candidate windows; the SLO judge keeps guarding every step, so a rollback can come at any step.

Rules (closed set of outcomes per judged window: ``hold``, ``advance``, ``gate``, ``promote``, ``expire``):

* A window **counts** for the current step when it started at or after the step began (so it saw the
  step's weight throughout), no rule failed in it, and it had at least ``min_samples`` candidate requests.
  A failing window resets the step's count to 0; a starved one neither counts nor resets.
* A step **began** when the command that set its weight was appended to the control topic, as the ledger
  sees it: the later of that command's ``issued_at_ms`` and its record's append time (the broker's clock).
  The tracker and the ledger count from this same instant (``Deployment.weight_set_at_ms``).
* A step is **done** when it has ``min_windows`` counting windows and ``min_duration_s`` has passed since it
  began (event time: the window's end against the step's beginning).
* A done step with ``gate: manual`` pauses the canary (``rollout-<dep>-gate-<i>``) until an operator runs
  ``canary resume``; a resumed gate is passed.
* After a done step the next step's weight is set (``rollout-<dep>-step-<i>``); after the last one the
  candidate is promoted (``rollout-<dep>-promote``) when ``auto_promote`` is on and ``min_total_duration_s``
  has passed since the start — otherwise the plan waits for an operator's ``canary stop --promote``.
* Past ``max_duration_s`` without promotion the canary is paused (``rollout-<dep>-expired``).

Command ids are deterministic, so a redelivered window or a restarted worker issues the same command and
the control topic applies it once; a worker key may sign ``set_weight`` / ``promote`` only under these ids,
and the ledger refuses any that does not follow the deployment's own plan (:func:`plan_refusal`): the next
step only, while running, past a manual gate only once an operator resumed, and no earlier than the plan
allows by the broker's clock — the step's ``min_duration_s`` (and for a promotion ``min_total_duration_s``)
since it began, with ``min_windows`` distinct candidate windows cited by id in ``evidence.windows``, each
inside the step. A refused step is issued again (same id) on a later window and applied once it is due.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from canary.core import structs
from canary.core.models import WindowKey
from canary.errors import ConfigError, InvalidEvent

ROLLOUT_ID_PREFIX: Final = "rollout-"
GATES: Final = ("auto", "manual")
# The spec's advice: watch at least 10 minutes before promoting.
DEFAULT_MIN_TOTAL_DURATION_S: Final = 600.0
DEFAULT_MIN_WINDOWS: Final = 2
# A step cites the windows it counted by id, so its command stays small: longer steps say min_duration_s.
MAX_MIN_WINDOWS: Final = 100
# The ledger does not take the worker's word for a window's length below the spec's 5 s bucket: cited
# windows are aligned to their length and distinct, so N of them prove N × 5 s at least (longer windows
# only make a step slower). A worker run with --window-ms under 5000 cannot walk a plan.
MIN_WINDOW_MS: Final = 5000
MAX_WINDOW_MS: Final = 3_600_000
# A cited window may end this much after the command's append time: windows end on the routers' clocks,
# the append time is the broker's. The SLO agent issues a step after the window closed (its end + the
# watermark grace, 1 s by default), so this only absorbs clock skew beyond the grace. A larger skew delays
# a step by a window (refused, issued again), never lets it through early by more than this.
WINDOW_END_TOLERANCE_MS: Final = 1000
MAX_CITED_WINDOWS: Final = 4 * MAX_MIN_WINDOWS  # more ids than this in one command: refused unread

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


class RolloutStep(msgspec.Struct, frozen=True):
    weight: float
    min_windows: int = DEFAULT_MIN_WINDOWS
    min_duration_s: float = 0.0
    gate: Gate = "auto"
    # A shadow step (the first only): weight 0, and this share of last_good's requests mirrored to the
    # candidate, whose answers no user sees (docs/contracts.md, "Shadow traffic").
    mirror: float = 0.0

    @property
    def shadow(self) -> bool:
        return self.weight == 0.0 and self.mirror > 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        if not self.mirror:
            del d["mirror"]  # absent, not 0, without a shadow step: older plans keep their hashes
        return d


class RolloutPlan(msgspec.Struct, frozen=True):
    """A snapshot's ``rollout`` section, declared once (the preset parser reports every problem of a file
    with :func:`plan_problems`; a snapshot read back goes through :meth:`from_dict`). Validated on
    construction and on decoding: weights strictly increase within (0, 1], durations are consistent."""

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
        d: dict[str, Any] = msgspec.to_builtins(self)
        d["steps"] = [step.to_dict() for step in self.steps]  # a list in JSON; a step without mirror omits it
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutPlan:
        """From a snapshot's ``rollout`` section (validated when the preset loaded; checked again here):
        InvalidEvent naming a field of the wrong type, ConfigError naming one out of the plan's rules."""
        return structs.convert(cls, d, "RolloutPlan")


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
        if not (isinstance(step.mirror, float) and 0.0 <= step.mirror <= 1.0):
            problems.append((f"{where}.mirror", step.mirror, "must be in [0, 1]"))
        elif step.mirror and (i > 0 or step.weight != 0.0):
            reason = "only a first step with weight 0 mirrors (a shadow step); a step with users ends the shadow"
            problems.append((f"{where}.mirror", step.mirror, reason))
        if i == 0 and step.shadow:
            pass  # a shadow step: no user on the candidate yet
        elif not (isinstance(step.weight, float) and 0.0 < step.weight <= 1.0):
            hint = " (weight 0 only for a first step that mirrors: mirror > 0)" if step.weight == 0.0 else ""
            problems.append((f"{where}.weight", step.weight, f"must be in (0, 1]{hint}"))
        elif step.weight <= previous:
            problems.append((f"{where}.weight", step.weight, f"must be above the previous step's {previous:g}"))
        else:
            previous = step.weight
        if step.min_windows < 0:
            problems.append((f"{where}.min_windows", step.min_windows, "must be >= 0"))
        elif step.min_windows > MAX_MIN_WINDOWS:
            reason = f"must be <= {MAX_MIN_WINDOWS} (the step cites its windows; hold it longer with min_duration_s)"
            problems.append((f"{where}.min_windows", step.min_windows, reason))
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
    started_at_ms: int  # when the start was appended, as the ledger sees it (Deployment.began_at_ms)
    step_started_at_ms: int  # the same for the command that set the current weight (the start's at step 0)
    applied_ids: frozenset[str] = frozenset()  # rollout ids the ledger applied (gates passed)


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
        current = self.plan.steps[step]
        if window_start_ms >= dep.step_started_at_ms and window_start_ms not in self.counted_windows:
            if failing:
                self.counted, self.counted_windows = 0, []
            elif not starved:
                self.counted += 1
                # Kept: enough to cite the step's min_windows, and to drop redelivered windows.
                keep = max(32, current.min_windows) - 1
                self.counted_windows = [*self.counted_windows[-keep:], window_start_ms]
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

    def cited(self) -> list[int]:
        """The starts of the counted windows a step or promotion cites to the ledger: the step's oldest
        ``min_windows`` kept. The oldest, so a command the ledger refused because its newest window seemed
        to end after the append (router clocks ahead of the broker's) cites older ones when issued again."""
        need = self.plan.steps[self.step].min_windows
        return sorted(self.counted_windows)[:need] if need else []

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(RolloutProgress(self.step, self.counted, list(self.counted_windows)))
        return d

    @classmethod
    def from_dict(cls, plan: RolloutPlan, d: Mapping[str, Any]) -> RolloutTracker:
        """The tracker of ``plan`` at the progress a checkpoint holds; InvalidEvent naming the field."""
        progress = structs.convert(RolloutProgress, d, "RolloutTracker")
        if progress.step >= len(plan.steps):
            raise InvalidEvent(f"RolloutTracker.step: outside the plan's {len(plan.steps)} steps, got {progress.step}")
        return cls(plan, progress.step, progress.counted, list(progress.counted_windows))


class RolloutProgress(msgspec.Struct, frozen=True):
    """A :class:`RolloutTracker`'s checkpoint (next to the judge's, in the SLO agent's table entry)."""

    step: Annotated[int, Meta(ge=0)]
    counted: Annotated[int, Meta(ge=0)]
    counted_windows: list[int] = []  # absent in checkpoints from before the field


def candidate_window_id(deployment_id: str, config_name: str, window_start_ms: int) -> str:
    """The id of a candidate window (``WindowResult.window_id``), as a step cites it."""
    return f"{WindowKey(deployment_id, config_name, 'candidate').as_str()}@{window_start_ms}"


PlanRefusalReason = Literal[
    "no_plan",
    "off_plan",
    "skips_step",
    "not_running",
    "gate_not_passed",
    "no_auto_promote",
    "not_last_step",
    "step_too_short",
    "before_min_total_duration",
    "too_few_windows",
    "window_malformed",
    "window_foreign",
    "window_unaligned",
    "window_duplicated",
    "window_before_step",
    "window_after_command",
]


@dataclass(frozen=True, slots=True)
class PlanRefusal:
    """Why the ledger refuses a rollout command: a reason of a closed set and the numbers behind it."""

    reason: PlanRefusalReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def plan_refusal(
    plan: RolloutPlan | None,
    command_type: str,
    command_id: str,
    weight: float | None,
    evidence: Mapping[str, Any] | None,
    dep: DeploymentView,
    candidate_name: str,
    appended_at_ms: int,
) -> PlanRefusal | None:
    """Why a ``rollout-`` command does not follow the deployment's plan now (None: it does). The ledger's
    check, by the broker's clock (``appended_at_ms``: the command record's append time) and against the
    instants the tracker counts from (``dep``), so a legitimate walk is never refused for long: a step the
    tracker found done is due at the ledger once its command is appended (see WINDOW_END_TOLERANCE_MS)."""
    if plan is None:
        return PlanRefusal("no_plan", "the candidate has no rollout plan")
    if command_type == "pause":
        return None  # gates and expiry: a worker key may always pause
    current = plan.step_of_weight(dep.weight)
    did = dep.deployment_id
    if command_type == "set_weight":
        step = None if weight is None else plan.step_of_weight(weight)
        if step is None or step == 0:
            return PlanRefusal("off_plan", f"weight {weight} is not a later step of the plan {list(plan.weights)}")
        if command_id != step_command_id(did, step):
            return PlanRefusal("off_plan", f"command id {command_id} does not name step {step} of deployment {did}")
        if current is None or step != current + 1:
            at = "off the plan's weights" if current is None else f"at step {current + 1} of {len(plan.steps)}"
            return PlanRefusal(
                "skips_step",
                f"weight {weight:g} is not the next step's: the deployment is {at} (weight {dep.weight:g})",
            )
    elif command_type == "promote":
        if command_id != promote_command_id(did):
            return PlanRefusal("off_plan", f"command id {command_id} is not the plan's promotion of {did}")
        if not plan.auto_promote:
            return PlanRefusal("no_auto_promote", "the plan does not auto-promote")
        if current != len(plan.steps) - 1:
            return PlanRefusal(
                "not_last_step", f"the deployment is not at the plan's last step (weight {dep.weight:g})"
            )
    else:
        return PlanRefusal("off_plan", f"{command_type} is not a rollout command")
    assert current is not None
    if dep.status != "running":
        return PlanRefusal("not_running", f"the deployment is {dep.status}")
    done = plan.steps[current]
    if done.gate == "manual" and gate_command_id(did, current) not in dep.applied_ids:
        return PlanRefusal("gate_not_passed", f"step {current + 1} has a manual gate that was not passed")
    in_step_ms = appended_at_ms - dep.step_started_at_ms
    if in_step_ms < done.min_duration_s * 1000:
        return PlanRefusal(
            "step_too_short",
            f"step {current + 1} began at {dep.step_started_at_ms}, {in_step_ms / 1000:.1f} s before this command "
            f"was appended; its min_duration_s is {done.min_duration_s:g}",
        )
    if command_type == "promote":
        since_start_ms = appended_at_ms - dep.started_at_ms
        if since_start_ms < plan.min_total_duration_s * 1000:
            return PlanRefusal(
                "before_min_total_duration",
                f"appended {since_start_ms / 1000:.1f} s after the start; min_total_duration_s is "
                f"{plan.min_total_duration_s:g}",
            )
    return _windows_refusal(evidence, done.min_windows, dep, candidate_name, appended_at_ms, current)


def _windows_refusal(
    evidence: Mapping[str, Any] | None,
    min_windows: int,
    dep: DeploymentView,
    candidate_name: str,
    appended_at_ms: int,
    step: int,
) -> PlanRefusal | None:
    """The step's cited windows (``evidence.windows``, ``evidence.window_ms``) against what the ledger knows."""
    if min_windows == 0:
        return None
    cited = evidence.get("windows") if evidence is not None else None
    window_ms = evidence.get("window_ms") if evidence is not None else None
    if not isinstance(cited, list) or len(cited) > MAX_CITED_WINDOWS or not all(isinstance(w, str) for w in cited):
        return PlanRefusal(
            "window_malformed",
            f"evidence.windows: expected a list of at most {MAX_CITED_WINDOWS} window ids (strings), got "
            + (f"a list of {len(cited)}" if isinstance(cited, list) else type(cited).__name__),
        )
    if isinstance(window_ms, bool) or not isinstance(window_ms, int) or not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
        shown = window_ms if isinstance(window_ms, int) and abs(window_ms) < 10**15 else type(window_ms).__name__
        return PlanRefusal(
            "window_malformed",
            f"evidence.window_ms = {shown}: must be an integer in [{MIN_WINDOW_MS}, {MAX_WINDOW_MS}]",
        )
    series = WindowKey(dep.deployment_id, candidate_name, "candidate").as_str()
    starts: set[int] = set()
    for window_id in cited:
        key, _, start_text = window_id.rpartition("@")
        if not start_text.isascii() or not start_text.isdigit() or len(start_text) > 15:
            return PlanRefusal("window_malformed", f"{window_id!r:.120} is not a window id '<key>@<start_ms>'")
        if key != series:
            return PlanRefusal("window_foreign", f"{window_id!r:.120} is not a window of {series}")
        start = int(start_text)
        if start % window_ms:
            return PlanRefusal("window_unaligned", f"{window_id} does not start on a {window_ms} ms boundary")
        if start in starts:
            return PlanRefusal("window_duplicated", f"{window_id} is cited twice")
        if start < dep.step_started_at_ms:
            return PlanRefusal(
                "window_before_step", f"{window_id} starts before step {step + 1} began ({dep.step_started_at_ms})"
            )
        if start + window_ms > appended_at_ms + WINDOW_END_TOLERANCE_MS:
            return PlanRefusal(
                "window_after_command",
                f"{window_id} ends at {start + window_ms}, after this command was appended ({appended_at_ms})",
            )
        starts.add(start)
    if len(starts) < min_windows:
        return PlanRefusal(
            "too_few_windows", f"step {step + 1} needs {min_windows} window(s), the command cites {len(starts)}"
        )
    return None
