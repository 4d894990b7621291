"""From judged windows to control commands: the SLO agent's decision step, Kafka-free.

:class:`DecisionStep` feeds windows to the :class:`~canary.core.judge.Judge` and turns each decision into
the control command the live agent publishes — or into the reason it is not issued (the deployment already
ended, or the command is already on the control topic). A decision that is not issued is never silent:
it comes back as an :class:`Issue` with ``issued=False`` and the reason, for the agent to log and audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from canary.core.deployment import ControlLedger
from canary.core.judge import DeploymentJudge, Judge, Judgement
from canary.core.models import ControlCommand, JSONDict, WindowResult
from canary.core.slo import Decision
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


def decision_command(decision: Decision, ledger: ControlLedger, issued_at_ms: int) -> ControlCommand:
    dep = ledger.deployments.get(decision.deployment_id)
    evidence = {
        **decision.evidence,
        "config_name": dep.candidate.name if dep else None,
        "triggering_window": decision.window_id,
    }
    return ControlCommand(
        command_id=decision.command_id,
        type="rollback" if decision.type == "rollback" else "pause",
        deployment_id=decision.deployment_id,
        candidate_config=None,
        candidate_config_hash=dep.candidate.content_hash if dep else None,
        last_good_config=None,
        weight=0.0 if decision.type == "rollback" else None,
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
    if decision.type == "pause" and dep.status == "paused":
        return Issue(decision, None, False, "not issued: the deployment is already paused")
    return Issue(decision, decision_command(decision, ledger, at_ms), True, f"issued: {decision.type}")


class DecisionStep:
    """Windows in (either arm, any order within a slot), judgements and issues out."""

    def __init__(self, policies: PolicyBook, ledger: Callable[[], ControlLedger], baseline_wait_ms: int = 2000) -> None:
        self.policies = policies
        self.ledger = ledger
        self.judge = Judge(policies.policy, baseline_wait_ms=baseline_wait_ms)

    def observe(self, window: WindowResult, arrival_ms: int) -> tuple[list[Judgement], list[Issue]]:
        return self._issues(self.judge.observe(window, arrival_ms), arrival_ms)

    def tick(self, now_ms: int, deployment_id: str | None = None) -> tuple[list[Judgement], list[Issue]]:
        """Release candidate windows that waited in vain for last_good's (all deployments, or one)."""
        if deployment_id is None:
            return self._issues(self.judge.tick(now_ms), now_ms)
        judge = self.judge.deployments.get(deployment_id)
        return self._issues([] if judge is None else judge.tick(now_ms), now_ms)

    def _issues(self, judgements: list[Judgement], at_ms: int) -> tuple[list[Judgement], list[Issue]]:
        issues = [resolve(j.decision, self.ledger(), at_ms) for j in judgements if j.decision is not None]
        return judgements, issues

    def restore(self, deployment_id: str, state: JSONDict | None) -> None:
        """Make ``state`` (a checkpoint, e.g. the SLO agent's table entry) the deployment's judge; ``None``
        starts it afresh. Raises InvalidEvent for an unreadable state (the judge then starts afresh too)."""
        self.judge.deployments.pop(deployment_id, None)
        if state is not None:
            self.judge.deployments[deployment_id] = DeploymentJudge.from_dict(state)

    def state(self, deployment_id: str) -> JSONDict | None:
        judge = self.judge.deployments.get(deployment_id)
        return None if judge is None else judge.to_dict()
