"""From judged windows to control commands: the SLO agent's decision step, Kafka-free.

:class:`DecisionStep` feeds windows to the :class:`~canary.core.judge.Judge`, walks each deployment's
rollout plan (:class:`~canary.core.rollout.RolloutTracker`, when the candidate has one) on the judged
candidate windows that triggered no rollback, and turns each decision into the control command the live
agent publishes — or into the reason it is not issued (the deployment already
ended, or the command is already on the control topic). A decision that is not issued is never silent:
it comes back as an :class:`Issue` with ``issued=False`` and the reason, for the agent to log and audit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec.structs
import orjson

from canary.core import jsonio
from canary.core.bake import bake_policy, revert_command_id
from canary.core.deployment import ControlLedger
from canary.core.judge import DeploymentJudge, Judge, Judgement
from canary.core.models import CommandType, ControlCommand, JSONDict, WindowResult
from canary.core.rollout import RolloutTracker, candidate_window_id, plan_of_snapshot
from canary.core.slo import Decision, DecisionType, is_shock_pause
from canary.errors import CanaryError
from canary.pipeline.policies import PolicyBook

SLO_AGENT = "slo-agent"


@dataclass(frozen=True, slots=True)
class Issue:
    """A decision and what becomes of it."""

    decision: Decision
    command: ControlCommand | None
    issued: bool
    note: str

    def to_dict(self) -> JSONDict:
        return {
            **self.decision.to_dict(),
            "issued": self.issued,
            "note": self.note,
            "command": None if self.command is None else self.command.to_dict(),
        }


# Decision type → the command it becomes (rollout gates and expiry, and a shock shared with last_good, are
# pauses; last_good's recovery from such a shock is a resume).
COMMAND_OF: dict[DecisionType, CommandType] = {
    "rollback": "rollback",
    "pause": "pause",
    "gate": "pause",
    "expire": "pause",
    "shock": "pause",
    "recover": "resume",
    "advance": "set_weight",
    "promote": "promote",
}


def decision_command(decision: Decision, ledger: ControlLedger, issued_at_ms: int) -> ControlCommand:
    dep = ledger.deployments.get(decision.deployment_id)
    evidence = {
        **decision.evidence,
        "config_name": dep.candidate.name if dep else None,
        "triggering_window": decision.window_id,
    }
    command_type = COMMAND_OF[decision.type]
    weight = 0.0 if command_type == "rollback" else None
    if command_type == "set_weight":
        weight = float(decision.evidence["weight"])
    return ControlCommand(
        command_id=decision.command_id,
        type=command_type,
        deployment_id=decision.deployment_id,
        candidate_config=None,
        candidate_config_hash=dep.candidate.content_hash if dep else None,
        last_good_config=None,
        weight=weight,
        reason=decision.reason,
        evidence=evidence,
        issued_by=SLO_AGENT,
        issued_at_ms=issued_at_ms,
    )


def resolve(decision: Decision, ledger: ControlLedger, at_ms: int) -> Issue:
    """Whether the live agent issues ``decision`` with the control topic folded into ``ledger`` at ``at_ms``."""
    dep = ledger.deployments.get(decision.deployment_id)
    if decision.command_id in ledger.applied_ids:
        return Issue(decision, None, False, f"not issued: {decision.command_id} is already on the control topic")
    if dep is None:
        return Issue(decision, None, False, "not issued: no start command for this deployment in the control topic")
    if not dep.live or (dep.ended_at_ms is not None and dep.ended_at_ms <= at_ms):
        return Issue(decision, None, False, f"not issued: the deployment was already {dep.status} by {dep.issued_by}")
    if COMMAND_OF.get(decision.type) == "pause" and dep.status == "paused":
        return Issue(decision, None, False, "not issued: the deployment is already paused")
    if decision.type == "recover" and (dep.status != "paused" or not is_shock_pause(dep.paused_by, dep.deployment_id)):
        # Only the shock's own pause is lifted: an operator's pause, or a low-traffic one, stays.
        return Issue(decision, None, False, f"not issued: the deployment is {dep.status}, not paused by a shared shock")
    return Issue(decision, decision_command(decision, ledger, at_ms), True, f"issued: {decision.type}")


def resolve_bake(decision: Decision, ledger: ControlLedger, at_ms: int) -> Issue:
    """Whether the live agent issues a bake's revert: only while the promoted deployment still bakes."""
    dep = ledger.deployments.get(decision.deployment_id)
    if decision.command_id in ledger.applied_ids:
        return Issue(decision, None, False, f"not issued: {decision.command_id} is already on the control topic")
    if dep is None or not dep.baking(at_ms):
        status = dep.status if dep is not None else "unknown"
        return Issue(decision, None, False, f"not issued: the deployment no longer bakes (it is {status})")
    return Issue(decision, decision_command(decision, ledger, at_ms), True, "issued: revert of a baking promotion")


class DecisionStep:
    """Windows in (either arm, any order within a slot), judgements and issues out."""

    def __init__(self, policies: PolicyBook, ledger: Callable[[], ControlLedger], baseline_wait_ms: int = 2000) -> None:
        self.policies = policies
        self.ledger = ledger
        self.judge = Judge(policies.policy, baseline_wait_ms=baseline_wait_ms)
        self.rollouts: dict[str, RolloutTracker] = {}
        # Promoted deployments in their bake (canary.core.bake): a judge of the promoted config's windows.
        self.bakes: dict[str, DeploymentJudge] = {}
        # Issued but maybe not folded into the ledger yet: the next window must not issue them again — unless
        # the ledger refused the copy issued (a step it found premature): id → the ledger's refusals then.
        self._issued: dict[str, int] = {}

    def observe(self, window: WindowResult, arrival_ms: int) -> tuple[list[Judgement], list[Issue]]:
        self._regime(window.deployment_id)
        judgements, issues = self._issues(self.judge.observe(window, arrival_ms), arrival_ms)
        baked, reverts = self._bake(window, arrival_ms)
        return judgements + baked, issues + reverts

    def _bake(self, window: WindowResult, arrival_ms: int) -> tuple[list[Judgement], list[Issue]]:
        """A window of a promoted config during its bake, judged as its candidate windows were — with the
        absolute rules (canary.core.bake) — and a revert when they roll it back. The judgement keeps the
        window's own arm (last_good: it serves everyone now)."""
        dep = self.ledger().deployments.get(window.deployment_id) if window.deployment_id else None
        if (
            dep is None
            or window.arm != "last_good"
            or window.config_name != dep.candidate.name
            or dep.ended_at_ms is None
            or window.window_start_ms < dep.ended_at_ms  # the promoted config alone in the window
            or not dep.baking(window.window_end_ms)
        ):
            return [], []
        judge = self.bakes.get(dep.deployment_id)
        if judge is None:
            # The previous last_good's figures, pooled by the deployment's judge before the promotion.
            canary = self.judge.deployments.get(dep.deployment_id)
            previous = canary.previous_figures() if canary is not None else None
            judge = self.bakes[dep.deployment_id] = DeploymentJudge(
                dep.deployment_id, bake_policy(dep.candidate.snapshot, previous), baseline_wait_ms=0
            )
        judgements, issues = [], []
        for j in judge.observe(msgspec.structs.replace(window, arm="candidate"), arrival_ms):
            decision = j.decision
            own = msgspec.structs.replace(j.window, arm="last_good")
            if decision is not None and decision.type == "rollback":
                assert dep.previous_last_good is not None  # baking() says so
                decision = msgspec.structs.replace(
                    decision,
                    command_id=revert_command_id(dep.deployment_id),
                    reason=f"bake: {decision.reason}; {dep.previous_last_good.name} serves again",
                    window_id=own.window_id,
                )
                issues.append(resolve_bake(decision, self.ledger(), arrival_ms))
            else:
                decision = None
            judgements.append(dataclasses.replace(j, window=own, decision=decision))
        return judgements, issues

    def _regime(self, deployment_id: str | None) -> None:
        """A rollout step is a new regime for the judge's pooled evidence: it begins when the ledger says the
        step's weight was set. Only a plan's steps (their number splits the pooled test's level); a weight an
        operator sets by hand does not restart the pool."""
        dep = self.ledger().deployments.get(deployment_id) if deployment_id else None
        if dep is None or dep.weight_set_at_ms is None or "rollout" not in dep.candidate.snapshot:
            return
        self.judge.judge_for(dep.deployment_id).begin_regime(dep.weight_set_at_ms)

    def tick(self, now_ms: int, deployment_id: str | None = None) -> tuple[list[Judgement], list[Issue]]:
        """Release candidate windows that waited in vain for last_good's (all deployments, or one)."""
        if deployment_id is None:
            return self._issues(self.judge.tick(now_ms), now_ms)
        judge = self.judge.deployments.get(deployment_id)
        return self._issues([] if judge is None else judge.tick(now_ms), now_ms)

    def _issues(self, judgements: list[Judgement], at_ms: int) -> tuple[list[Judgement], list[Issue]]:
        ledger = self.ledger()
        issues = []
        for j in judgements:
            decision = j.decision if j.decision is not None else self._rollout(j, ledger)
            if decision is None:
                continue
            refusals = ledger.refusals.get(decision.command_id, 0)
            if decision.command_id in self._issued and refusals <= self._issued[decision.command_id]:
                issues.append(Issue(decision, None, False, f"not issued: {decision.command_id} was issued already"))
                continue
            issue = resolve(decision, ledger, at_ms)
            if issue.issued:
                self._issued.pop(decision.command_id, None)
                self._issued[decision.command_id] = refusals
                while len(self._issued) > 1024:  # bounded; the ledger remembers them for good
                    del self._issued[next(iter(self._issued))]
            issues.append(issue)
        return judgements, issues

    def _rollout(self, j: Judgement, ledger: ControlLedger) -> Decision | None:
        """The plan's next command after a judged candidate window, if the deployment has a plan."""
        dep = ledger.deployments.get(j.deployment_id)
        if dep is None or not dep.live or j.window.arm != "candidate":
            return None
        tracker = self.rollouts.get(dep.deployment_id)
        if tracker is None:
            try:
                plan = plan_of_snapshot(dep.candidate.snapshot)
            except CanaryError:
                return None  # a start with an unreadable plan was refused by the verifier already
            if plan is None:
                return None
            tracker = self.rollouts[dep.deployment_id] = RolloutTracker(plan)
        view = dep.rollout_view(ledger.applied_ids)  # the instants the ledger will check the command against
        w = j.window
        # A shock shared with last_good is no step's success: it resets the count like a failure.
        failing = any(v.outcome in ("fail", "shared") for v in w.verdicts)
        starved = w.response_count < self.policies.policy(dep.deployment_id).min_samples
        step = tracker.observe(view, w.window_start_ms, w.window_end_ms, failing, starved)
        action = step.action
        if step.command_id is None or action == "hold":  # a hold publishes nothing
            return None
        evidence: JSONDict = {
            "rollout_step": step.step,
            "steps": len(tracker.plan.steps),
            "weight": step.weight,
            "counted_windows": tracker.counted,
        }
        if step.action in ("advance", "promote"):
            # The ledger holds the command to the plan by these: distinct windows inside the step.
            evidence["windows"] = [candidate_window_id(dep.deployment_id, w.config_name, s) for s in tracker.cited()]
            evidence["window_ms"] = w.window_end_ms - w.window_start_ms
        return Decision(dep.deployment_id, "rollout", step.reason, evidence, w.window_id, step.command_id, action)

    def restore(self, deployment_id: str, state: JSONDict | None) -> None:
        """Make ``state`` (a checkpoint, e.g. the SLO agent's table entry) the deployment's judge and rollout
        progress; ``None`` starts both afresh. Raises InvalidEvent for an unreadable state (both then start
        afresh too: the plan's step is the ledger's weight, so only the current step's count is lost)."""
        self.judge.deployments.pop(deployment_id, None)
        self.rollouts.pop(deployment_id, None)
        self.bakes.pop(deployment_id, None)
        if state is None:
            return
        nested = "rollout" in state or "bake" in state
        judge_state = state.get("judge", state) if nested else state  # older: the judge's alone
        self.judge.deployments[deployment_id] = DeploymentJudge.from_dict(judge_state)
        bake = state.get("bake")
        if isinstance(bake, dict):
            self.bakes[deployment_id] = DeploymentJudge.from_dict(bake)
        rollout = state.get("rollout")
        if isinstance(rollout, dict):
            dep = self.ledger().deployments.get(deployment_id)
            plan = plan_of_snapshot(dep.candidate.snapshot) if dep is not None else None
            if plan is not None:
                self.rollouts[deployment_id] = RolloutTracker.from_dict(plan, rollout)

    def state(self, deployment_id: str) -> JSONDict | None:
        state: JSONDict | None = self._checkpoint(deployment_id, DeploymentJudge.to_dict)
        return state

    def state_json(self, deployment_id: str) -> bytes | None:
        """:meth:`state` as ``jsonio.dumps_as_json_would`` writes it (the SLO agent's table entry after every window),
        the judge's part by ``DeploymentJudge.to_json`` (its window statistics encoded once each)."""
        state = self._checkpoint(deployment_id, lambda judge: orjson.Fragment(judge.to_json()))
        if state is None:
            return None
        out = jsonio.exact_bytes(state)  # a fragment alone is its own bytes
        return out if out is not None else jsonio.dumps_as_json_would(self.state(deployment_id))

    def _checkpoint(self, deployment_id: str, judge_part: Callable[[DeploymentJudge], Any]) -> Any:
        """The deployment's checkpoint with the judge's part as ``judge_part`` gives it: that part alone, or with
        the rollout's and the bake's beside it; None without a judge."""
        judge = self.judge.deployments.get(deployment_id)
        if judge is None:
            return None
        tracker = self.rollouts.get(deployment_id)
        bake = self.bakes.get(deployment_id)
        if tracker is None and bake is None:
            return judge_part(judge)
        state: JSONDict = {"judge": judge_part(judge)}
        if tracker is not None:
            state["rollout"] = tracker.to_dict()
        if bake is not None:
            state["bake"] = bake.to_dict()
        return state
