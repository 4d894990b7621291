"""The deployment state machine, event-sourced from the control topic.

Routers, the streams worker and the CLI all fold the same ordered control commands through
:class:`ControlLedger`, so ``active`` / ``last_good`` pointers and deployment status are identical
everywhere. Applying a command is idempotent by ``command_id`` (at-least-once delivery), and a command
that makes no sense in the current state is rejected with a reason instead of corrupting the state.

Time is the broker's: readers pass each command's record timestamp (the control topic's LogAppendTime) to
:meth:`ControlLedger.apply`. A command takes effect, as the ledger sees it, at the later of its
``issued_at_ms`` (which its signer chose) and that append time; rollout commands are held to the plan by
the append time alone (:func:`canary.core.rollout.plan_refusal`), so a signer cannot move them earlier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from canary.core.bake import bake_seconds
from canary.core.models import ControlCommand
from canary.core.rollout import (
    DeploymentView,
    is_rollout_command_id,
    plan_of_snapshot,
    plan_refusal,
    promote_command_id,
    step_command_id,
)
from canary.core.slo import SHOCK_RESUME_PREFIX, is_shock_pause
from canary.core.split import Arc, place, preferred_start
from canary.errors import CanaryError

DeploymentStatus = Literal["running", "paused", "rolled_back", "promoted", "aborted"]
LIVE_STATUSES: frozenset[str] = frozenset({"running", "paused"})
DEFAULT_WEIGHT = 0.10


def snapshot_hash(snapshot: dict[str, Any]) -> str:
    """Content hash of a resolved preset snapshot: first 16 hex of sha256 over canonical JSON."""
    canonical = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ConfigRef:
    """A resolved preset snapshot as carried in a start command."""

    name: str
    version: str
    content_hash: str
    snapshot: dict[str, Any]

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], content_hash: str | None = None) -> ConfigRef:
        meta = snapshot.get("metadata") if isinstance(snapshot, Mapping) else None
        if not isinstance(meta, Mapping):
            meta = {}
        return cls(
            name=str(meta.get("name", "unknown")),
            version=str(meta.get("version", "0.0.0")),
            content_hash=content_hash or snapshot_hash(snapshot),
            snapshot=snapshot,
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    deployment_id: str
    status: DeploymentStatus
    candidate: ConfigRef
    last_good: ConfigRef
    weight: float
    started_at_ms: int
    start_command_id: str
    ended_at_ms: int | None = None
    end_command_id: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] | None = None
    issued_by: str | None = None
    # When the command that set the weight (start or set_weight) took effect as the ledger sees it: the
    # later of its issue and append times. A rollout step began then; the worker counts windows from it.
    weight_set_at_ms: int | None = None
    slot_start: float | None = None  # where this deployment's arc of users starts (canary.core.split)
    began_at_ms: int | None = None  # the same instant for the start (min_total_duration_s counts from it)
    paused_by: str | None = None  # the command that paused it (None while running)
    mirror: float = 0.0  # the start's shadow share: mirrored while the weight is 0 (docs: "Shadow traffic")
    # Bake after promotion (canary.core.bake): until then the promoted config is judged and a rollback
    # reverts to previous_last_good. None: not baking (never promoted, or promoted without a bake).
    bake_until_ms: int | None = None
    previous_last_good: ConfigRef | None = None

    def baking(self, at_ms: int) -> bool:
        """Promoted, in its bake window at ``at_ms``, with a previous last_good to return to."""
        return (
            self.status == "promoted"
            and self.bake_until_ms is not None
            and self.previous_last_good is not None
            and at_ms <= self.bake_until_ms
        )

    @property
    def shadow_share(self) -> float:
        """Share of this deployment's last_good requests mirrored to the candidate right now: the start's
        mirror while running at weight 0 (a shadow step), else 0 — a step with users ends the shadow."""
        return self.mirror if self.status == "running" and self.weight == 0.0 else 0.0

    @property
    def arc(self) -> Arc:
        start = self.slot_start if self.slot_start is not None else preferred_start(self.deployment_id)
        return Arc(self.deployment_id, start, self.weight)

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def candidate_weight(self) -> float:
        """Share of traffic the candidate gets right now (0 unless running)."""
        return self.weight if self.status == "running" else 0.0

    def rollout_view(self, applied_ids: frozenset[str] | set[str]) -> DeploymentView:
        """What the rollout tracker counts from and the ledger checks against: one view, so they agree."""
        began = self.began_at_ms if self.began_at_ms is not None else self.started_at_ms
        gates = f"rollout-{self.deployment_id}-gate-"
        return DeploymentView(
            self.deployment_id,
            self.status,
            self.weight,
            began,
            self.weight_set_at_ms if self.weight_set_at_ms is not None else began,
            frozenset(i for i in applied_ids if i.startswith(gates)),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    applied: bool
    note: str
    deployment: Deployment | None = None


@dataclass
class ControlLedger:
    """Folds control commands into pointers and deployments."""

    last_good: ConfigRef | None = None
    deployments: dict[str, Deployment] = field(default_factory=dict)
    current_id: str | None = None
    applied_ids: set[str] = field(default_factory=set)
    last_command_id: str | None = None
    # How often each step / promotion id of a plan was refused (premature, off the plan): the worker issues
    # a refused id again, under the same id, once its tracker finds the step still done.
    refusals: dict[str, int] = field(default_factory=dict)
    _live: list[Deployment] | None = field(default=None, repr=False, compare=False)

    @property
    def current(self) -> Deployment | None:
        """The most recently started live deployment (one of ``live`` when several run at once)."""
        return self.deployments.get(self.current_id) if self.current_id else None

    @property
    def live(self) -> list[Deployment]:
        """Every running or paused deployment, oldest first (A/B/n: several candidates at once). Cached
        between changes: routers read it for every request, and ``deployments`` holds the whole history."""
        if self._live is None:
            self._live = sorted((d for d in self.deployments.values() if d.live), key=lambda d: d.started_at_ms)
        return self._live

    def _arcs_except(self, deployment_id: str) -> list[Arc]:
        return [d.arc for d in self.live if d.deployment_id != deployment_id]

    @property
    def latest(self) -> Deployment | None:
        """The most recently started deployment, live or ended."""
        if not self.deployments:
            return None
        return max(self.deployments.values(), key=lambda d: d.started_at_ms)

    @property
    def active(self) -> ConfigRef | None:
        """The config serving the majority of traffic: last_good, or the candidate once promoted."""
        return self.last_good

    def apply(self, cmd: ControlCommand, appended_at_ms: int | None = None) -> Transition:
        """Fold ``cmd``, appended to the control topic at ``appended_at_ms`` (its record timestamp; every
        reader of the topic passes it — without it the command's own ``issued_at_ms`` stands in): applied,
        or refused with the reason. Total: a command whose content the fold cannot take (a hostile snapshot
        in an unverified fold) is refused, never an exception."""
        if cmd.command_id in self.applied_ids:
            return Transition(False, f"duplicate command {cmd.command_id} ignored")
        try:
            result = self._apply(cmd, cmd.issued_at_ms if appended_at_ms is None else appended_at_ms)
        except Exception as exc:
            return Transition(
                False, f"{cmd.type}: not applied, its content cannot be folded ({type(exc).__name__}: {exc})"[:500]
            )
        if result.applied:
            self.applied_ids.add(cmd.command_id)
            self.last_command_id = cmd.command_id
        return result

    def _apply(self, cmd: ControlCommand, appended_at_ms: int) -> Transition:
        effective_ms = max(cmd.issued_at_ms, appended_at_ms)
        if cmd.type == "start":
            return self._start(cmd, effective_ms)
        dep = self.deployments.get(cmd.deployment_id)
        if dep is None:
            return Transition(False, f"{cmd.type}: unknown deployment {cmd.deployment_id}")
        if not dep.live:
            if cmd.type == "rollback" and dep.baking(effective_ms):
                return self._revert(dep, cmd)
            return Transition(False, f"{cmd.type}: deployment {dep.deployment_id} already {dep.status}", dep)
        if is_rollout_command_id(cmd.command_id):
            refused = self._off_plan(dep, cmd, appended_at_ms)
            if refused is not None:
                return refused
        if cmd.type == "pause":
            if dep.status == "paused":
                return Transition(False, "pause: already paused", dep)
            # The reason (e.g. the SLO agent's "insufficient data: …") is what `status` shows while paused.
            paused = replace(dep, status="paused", reason=cmd.reason, evidence=cmd.evidence, paused_by=cmd.command_id)
            return self._update(paused, "paused")
        if cmd.type == "resume":
            if dep.status == "running":
                return Transition(False, "resume: already running", dep)
            if cmd.command_id.startswith(SHOCK_RESUME_PREFIX) and not is_shock_pause(dep.paused_by, dep.deployment_id):
                # The SLO agent lifts only its own shared-shock pause (a worker key may sign nothing else).
                return Transition(
                    False,
                    f"resume: {cmd.command_id} lifts a shared-shock pause; the deployment is paused by {dep.paused_by}",
                    dep,
                )
            resumed = replace(dep, status="running", reason=None, evidence=None, paused_by=None)
            return self._update(resumed, "resumed")
        if cmd.type == "set_weight":
            if cmd.weight is None:
                return Transition(False, "set_weight: no weight given", dep)
            grown = replace(dep, weight=cmd.weight).arc
            clash = [a.deployment_id for a in self._arcs_except(dep.deployment_id) if grown.overlaps(a)]
            if clash:
                others = sum(a.weight for a in self._arcs_except(dep.deployment_id))
                return Transition(
                    False,
                    f"set_weight: {cmd.weight:g} would overlap the users of {', '.join(clash)} "
                    f"(other candidates hold {others:g} of traffic)",
                    dep,
                )
            return self._update(
                replace(dep, weight=cmd.weight, weight_set_at_ms=effective_ms), f"weight set to {cmd.weight:.2f}"
            )
        end_status: DeploymentStatus = {"rollback": "rolled_back", "promote": "promoted", "abort": "aborted"}[cmd.type]  # type: ignore[assignment]
        ended = _ended(dep, cmd, end_status)
        if end_status == "promoted":
            bake_s = bake_seconds(dep.candidate.snapshot)
            if bake_s is not None and self.last_good is not None:
                ended = replace(
                    ended, bake_until_ms=effective_ms + int(bake_s * 1000), previous_last_good=self.last_good
                )
        result = self._update(ended, end_status)
        if end_status == "promoted":
            self.last_good = dep.candidate
            # The others were judged against the old last_good: their comparison no longer holds.
            for other in self.live:
                reason = (
                    f"aborted: {dep.candidate.name} ({dep.deployment_id}) was promoted to last_good, the baseline "
                    "this canary was judged against"
                )
                self._update(
                    replace(
                        other,
                        status="aborted",
                        ended_at_ms=cmd.issued_at_ms,
                        end_command_id=cmd.command_id,
                        reason=reason,
                        issued_by=cmd.issued_by,
                    ),
                    "aborted",
                )
        live = self.live
        self.current_id = live[-1].deployment_id if live else None
        return result

    def _revert(self, dep: Deployment, cmd: ControlCommand) -> Transition:
        """A rollback during a promoted deployment's bake: its previous last_good serves again — unless
        another config was promoted since (then this one is no longer what serves, and there is nothing to
        revert)."""
        assert dep.previous_last_good is not None
        if self.last_good is None or self.last_good.content_hash != dep.candidate.content_hash:
            serving = self.last_good.name if self.last_good is not None else "none"
            return Transition(False, f"rollback: {dep.candidate.name} is no longer last_good ({serving} is)", dep)
        self.last_good = dep.previous_last_good
        reverted = replace(_ended(dep, cmd, "rolled_back"), bake_until_ms=None)
        return self._update(reverted, f"promotion reverted during its bake: {dep.previous_last_good.name} is last_good")

    def _off_plan(self, dep: Deployment, cmd: ControlCommand, appended_at_ms: int) -> Transition | None:
        """The refusal of a rollout command that does not follow the plan the operator signed with the start
        (None: it does)."""
        try:
            plan = plan_of_snapshot(dep.candidate.snapshot)
        except CanaryError as exc:
            return Transition(False, f"{cmd.type}: the candidate's rollout plan is unreadable ({exc})", dep)
        why = plan_refusal(
            plan,
            cmd.type,
            cmd.command_id,
            cmd.weight,
            cmd.evidence,
            dep.rollout_view(self.applied_ids),
            dep.candidate.name,
            appended_at_ms,
        )
        if why is None:
            return None
        if plan is not None and cmd.command_id in {
            *(step_command_id(dep.deployment_id, i) for i in range(1, len(plan.steps))),
            promote_command_id(dep.deployment_id),
        }:  # only the plan's own ids: bounded, however many forgeries arrive
            self.refusals[cmd.command_id] = self.refusals.get(cmd.command_id, 0) + 1
        return Transition(False, f"{cmd.type}: refused, not the deployment's rollout plan ({why})", dep)

    def _start(self, cmd: ControlCommand, effective_ms: int) -> Transition:
        live = self.live
        if cmd.deployment_id in self.deployments:
            return Transition(False, f"start: deployment id {cmd.deployment_id} was used before")
        if cmd.candidate_config is None:
            return Transition(False, "start: command carries no candidate_config snapshot")
        candidate = ConfigRef.from_snapshot(cmd.candidate_config, cmd.candidate_config_hash)
        if live and cmd.last_good_config is not None:
            baseline = ConfigRef.from_snapshot(cmd.last_good_config)
            if self.last_good is not None and baseline.content_hash != self.last_good.content_hash:
                return Transition(
                    False,
                    f"start: its last_good {baseline.name} ({baseline.content_hash}) is not the baseline of the "
                    f"running canaries ({self.last_good.name}, {self.last_good.content_hash})",
                    live[-1],
                )
        elif cmd.last_good_config is not None:
            self.last_good = ConfigRef.from_snapshot(cmd.last_good_config)
        if self.last_good is None:
            return Transition(False, "start: no last_good config known")
        weight = cmd.weight if cmd.weight is not None else DEFAULT_WEIGHT
        mirror = cmd.mirror or 0.0
        if weight == 0.0 and mirror == 0.0:
            return Transition(False, "start: weight 0 and no mirror share: it would serve and measure nothing")
        slot = place(cmd.deployment_id, weight, [d.arc for d in live])
        if slot is None:
            held = sum(d.weight for d in live)
            return Transition(
                False,
                f"start: weight {weight:g} does not fit beside the running canaries "
                f"({', '.join(d.deployment_id for d in live)} hold {held:g} of traffic)",
                live[-1],
            )
        dep = Deployment(
            deployment_id=cmd.deployment_id,
            status="running",
            candidate=candidate,
            last_good=self.last_good,
            weight=weight,
            started_at_ms=cmd.issued_at_ms,
            start_command_id=cmd.command_id,
            issued_by=cmd.issued_by,
            weight_set_at_ms=effective_ms,
            slot_start=slot,
            began_at_ms=effective_ms,
            mirror=mirror,
        )
        self.current_id = dep.deployment_id
        return self._update(dep, "started" if not dep.shadow_share else f"started in shadow, mirroring {mirror:g}")

    def _update(self, dep: Deployment, note: str) -> Transition:
        self.deployments[dep.deployment_id] = dep
        self._live = None
        return Transition(True, note, dep)


def _ended(dep: Deployment, cmd: ControlCommand, status: DeploymentStatus) -> Deployment:
    """``dep`` as ``cmd`` ended it (a rollback, promotion, abort, or a bake's revert)."""
    return replace(
        dep,
        status=status,
        ended_at_ms=cmd.issued_at_ms,
        end_command_id=cmd.command_id,
        reason=cmd.reason,
        evidence=cmd.evidence,
        issued_by=cmd.issued_by,
    )
