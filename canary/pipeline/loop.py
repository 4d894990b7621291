"""The SLO agent's whole decision loop, Kafka-free: windows → verdicts → decisions → commands → ledger → …

Live, the SLO agent (``streams/app.py``) takes each window as it arrives, asks
:class:`~canary.pipeline.decisions.DecisionStep` for verdicts and decisions, publishes every issued command
on the control topic, and the registry folds that topic — the agent's own commands included — into the
ledger the next decision is resolved against and the rollout plan is walked on. :func:`run_loop` does the
same over recomputed windows:

* **arrival**: a window reaches the agent when the watermark closes it, its end + the grace (1 s); the
  agent then ticks the deployment, as live (a candidate window that waited in vain for last_good's window
  of the same slot is judged). That instant is also the decision's **issue time**;
* **the control topic**: recorded commands take effect at their append time (their record timestamp; the
  issue time where none is known), in that order, interleaved with the windows;
* **feedback** (``apply_decisions=True``, the default): every command the loop issues is appended at its
  issue time and folded into the same ledger (``ControlLedger.apply(command, issued_at_ms)``), exactly as
  the registry folds the agent's record. So a rollout plan walks its steps (the ledger holds each step to
  the plan and may refuse it: the decision says so, and the step is issued again on a later window), a
  low-traffic pause holds (the next one is "not issued: already paused"), a rollback ends the deployment.
  The SLO agent's own *recorded* commands (``issued_by: slo-agent``) that took effect after the first
  judged window began are set aside — the loop issues its own in their place (they stay in the input,
  and replay compares them with the loop's); earlier ones are history the loop could not have issued and
  are folded as recorded. Operators' commands (resume, weight, stop) are folded as recorded;
* **observe only** (``apply_decisions=False``): the recorded control topic alone, as before the loop fed
  itself; a decision the recorded topic already holds by id counts as issued ("the live agent issued the
  same command").

Traffic is given: the records hold the arms the live routers chose, so applying a ``set_weight`` or a pause
changes the ledger (what is decided next), not which outcomes exist — a backtest of a plan sees the
recorded (or generated) traffic at every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec.structs

from canary.core.custom import with_external
from canary.core.deployment import ControlLedger
from canary.core.judge import Judgement as CoreJudgement
from canary.core.models import ControlCommand, JSONDict, WindowResult, iso_ms
from canary.pipeline.decisions import SLO_AGENT, DecisionStep, Issue
from canary.pipeline.policies import PolicyBook
from canary.pipeline.settings import DEFAULTS

GRACE_MS = DEFAULTS.grace_ms  # a window reaches the agent this long after its end


def fold_commands(commands: Iterable[ControlCommand], times: Sequence[int | None] | None = None) -> ControlLedger:
    """The ledger of ``commands`` in topic order, each appended at ``times[i]`` (its record timestamp, which
    the ledger holds rollout commands to; None where unknown)."""
    ledger = ControlLedger()
    for i, cmd in enumerate(commands):
        ledger.apply(cmd, times[i] if times is not None and i < len(times) else None)
    return ledger


@dataclass(frozen=True, slots=True)
class Judgement:
    """One candidate window as the SLO agent saw it: verdicts and each rule's streak afterwards."""

    window_id: str
    deployment_id: str
    window_start_ms: int
    outcomes: dict[str, str]
    streaks: dict[str, int]
    decided: bool
    insufficient_windows: int = 0
    evidence: dict[str, JSONDict | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, j: CoreJudgement) -> Judgement:
        w = j.window
        return cls(
            window_id=w.window_id,
            deployment_id=w.deployment_id or "-",
            window_start_ms=w.window_start_ms,
            outcomes={v.rule: v.outcome for v in w.verdicts},
            streaks=dict(j.streaks),
            decided=j.decision is not None,
            insufficient_windows=j.insufficient_windows,
            evidence={v.rule: v.evidence for v in w.verdicts},
            reasons={v.rule: v.reason for v in w.verdicts},
        )

    def to_dict(self) -> JSONDict:
        return {
            "window_id": self.window_id,
            "deployment_id": self.deployment_id,
            "window_start": iso_ms(self.window_start_ms),
            "window_start_ms": self.window_start_ms,
            "outcomes": self.outcomes,
            "reasons": self.reasons,
            "evidence": self.evidence,
            "streaks": self.streaks,
            "insufficient_windows": self.insufficient_windows,
            "decided": self.decided,
        }


@dataclass(frozen=True, slots=True)
class PipelineDecision:
    """A decision the SLO agent reaches on a window — any kind (``type``: the judge's ``rollback`` and
    ``pause``, a rollout plan's ``advance``, ``gate``, ``promote``, ``expire``, and whatever the judge adds)
    — what it publishes, and what the control topic's ledger made of it."""

    deployment_id: str
    rule: str  # the rule that decided it (``rollout`` for a plan's steps; rules joined by "," for a pause)
    reason: str
    window_id: str  # the triggering window
    window_start_ms: int
    window_end_ms: int
    evidence: JSONDict
    command_id: str
    issued: bool  # would the live agent publish it (deployment known and live, not already on the topic)?
    note: str
    type: str = "rollback"
    issued_at_ms: int | None = None  # when the live agent decides and publishes it (the window's arrival)
    command: ControlCommand | None = None  # exactly what it publishes (unsigned); None when not issued
    # Fed back (apply_decisions): did the ledger apply the command (False: refused — a premature rollout
    # step, say — with the ledger's reason in ledger_note)? None: not fed back, or not issued.
    applied: bool | None = None
    ledger_note: str | None = None

    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "type": self.type,
            "rule": self.rule,
            "reason": self.reason,
            "triggering_window": self.window_id,
            "window_start": iso_ms(self.window_start_ms),
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "evidence": self.evidence,
            "command_id": self.command_id,
            "issued": self.issued,
            "note": self.note,
            "issued_at": None if self.issued_at_ms is None else iso_ms(self.issued_at_ms),
            "issued_at_ms": self.issued_at_ms,
            "command": None if self.command is None else self.command.to_dict(),
            "applied": self.applied,
            "ledger_note": self.ledger_note,
        }


@dataclass
class LoopResult:
    judgements: list[Judgement]
    decisions: list[PipelineDecision]
    judged: dict[str, WindowResult]  # window id → the window with the judge's verdicts
    ledger: ControlLedger  # the control topic as the loop left it (recorded + fed back)
    set_aside: list[str]  # recorded SLO-agent command ids the loop issued its own decisions in place of


def _arrival_order(w: WindowResult) -> tuple[int, int, int, str]:
    # The order the SLO agent receives windows in: emission time, then slot; last_good's window of a slot
    # before the candidate's (the judge waits for it anyway, so this only saves the wait).
    return (w.window_start_ms, 0 if w.arm == "last_good" else 1, w.emitted_at_ms, w.key.as_str())


def run_loop(
    windows: Sequence[WindowResult],
    book: PolicyBook,
    commands: Sequence[ControlCommand],
    *,
    command_times: Sequence[int | None] | None = None,
    grace_ms: int = GRACE_MS,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
    apply_decisions: bool = True,
    external: Mapping[str, Mapping[str, float | str]] | None = None,
) -> LoopResult:
    """The SLO agent over ``windows`` (see the module docstring). Only candidate windows starting in
    ``[judge_from_ms, judge_until_ms)`` are judged; ``commands`` is the control topic in order, appended at
    ``command_times`` (None: unknown, the issue time stands in). ``external``: the external metrics' values
    the live agent judged, per window id (canary.core.custom.recorded_external); a candidate window of a
    deployment with external metrics and no recorded value gets them as missing (``not_recorded``)."""
    history = list(commands)
    final_ledger = fold_commands(history, command_times)
    selected = sorted(
        (
            w
            for w in windows
            if w.deployment_id is not None
            and w.arm in ("candidate", "last_good")
            and (judge_from_ms is None or w.window_start_ms >= judge_from_ms)
            and (judge_until_ms is None or w.window_start_ms < judge_until_ms)
        ),
        key=_arrival_order,
    )
    timed: list[tuple[int, ControlCommand, int | None]] = []
    set_aside: list[str] = []
    for i, cmd in enumerate(history):
        appended = command_times[i] if command_times is not None and i < len(command_times) else None
        at = appended if appended is not None else cmd.issued_at_ms
        if apply_decisions and cmd.issued_by == SLO_AGENT and (judge_from_ms is None or at >= judge_from_ms):
            set_aside.append(cmd.command_id)
            continue
        timed.append((at, cmd, appended))
    pending = sorted(timed, key=lambda t: t[0])  # stable: topic order among equal times
    ledger = ControlLedger()
    cursor = 0
    clock = 0

    def ledger_now() -> ControlLedger:
        nonlocal cursor
        while cursor < len(pending) and pending[cursor][0] <= clock:
            _, cmd, appended = pending[cursor]
            ledger.apply(cmd, appended)
            cursor += 1
        return ledger

    step = DecisionStep(book, ledger_now)
    judgements: list[Judgement] = []
    decisions: list[PipelineDecision] = []
    judged: dict[str, WindowResult] = {}

    def take(core: list[CoreJudgement], issues: list[Issue], at_ms: int) -> None:
        by_window = {j.window_id: j.window for j in core}
        for j in core:
            judgements.append(Judgement.of(j))
            judged[j.window_id] = j.window
        for issue in issues:
            d = issue.decision
            window = by_window.get(d.window_id)
            if window is None:  # not possible: a decision is always about a window judged in this call
                continue
            issued, note, applied, ledger_note = issue.issued, issue.note, None, None
            if issued and issue.command is not None and apply_decisions:
                transition = ledger.apply(issue.command, at_ms)  # appended when issued, as the live agent's
                applied, ledger_note = transition.applied, transition.note
            elif not issued and not apply_decisions and d.command_id in ledger.applied_ids:
                # The deterministic id is on the recorded control topic: the live agent decided the same.
                issued, note = True, "issued: the live agent issued the same command"
            dep = final_ledger.deployments.get(d.deployment_id)
            decisions.append(
                PipelineDecision(
                    deployment_id=d.deployment_id,
                    rule=d.rule,
                    reason=d.reason,
                    window_id=d.window_id,
                    window_start_ms=window.window_start_ms,
                    window_end_ms=window.window_end_ms,
                    evidence={
                        **d.evidence,
                        "config_name": dep.candidate.name if dep is not None else window.config_name,
                        "triggering_window": d.window_id,
                    },
                    command_id=d.command_id,
                    issued=issued,
                    note=note,
                    type=d.type,
                    issued_at_ms=at_ms,
                    command=issue.command if issue.issued else None,
                    applied=applied,
                    ledger_note=ledger_note,
                )
            )

    for w in selected:
        clock = max(clock, w.window_end_ms + grace_ms)
        if w.arm == "candidate":
            metrics = [m for m in book.policy(w.deployment_id).custom_metrics if m.external]
            if metrics:
                values = (external or {}).get(w.window_id) or dict.fromkeys((m.name for m in metrics), "not_recorded")
                w = msgspec.structs.replace(w, stats=with_external(w.stats, values, metrics))
        take(*step.observe(w, clock), clock)
        take(*step.tick(clock, w.deployment_id), clock)  # as the live agent does after every window
    clock = 2**62
    ledger_now()  # the recorded commands after the last window: the ledger is the whole topic
    judgements.sort(key=lambda j: (j.deployment_id, j.window_start_ms))
    decisions.sort(key=lambda d: (d.deployment_id, d.window_start_ms, d.issued_at_ms or 0))
    return LoopResult(judgements, decisions, judged, ledger, set_aside)
