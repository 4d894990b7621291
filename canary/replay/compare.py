"""Replay against live: windows from ``canary_windows``, decisions from ``canary_control``; backtest diffs.

Every difference carries an ``explanation`` of its most likely cause, so a post-mortem does not leave
the reader guessing whether a mismatch is a bug or a property of the live run (a processing-time
watermark that ran ahead during a worker stall, trailing empty windows the live tick emitted, a window
the live worker had not emitted yet when the topic was read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from canary.core.models import ControlCommand, JSONDict, WindowResult, iso_ms
from canary.pipeline.decisions import SLO_AGENT
from canary.pipeline.loop import PipelineDecision

COMPARED_FIELDS = (
    "response_count",
    "error_count",
    "p95_ms",
    "recall_at_10",
    "recall_samples",
    "slo_violations",
    "late_count",
)


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str  # window_field | window_missing_in_replay | window_missing_in_live | decision | live_duplicate
    subject: str  # window id or deployment id
    field: str | None
    live: Any
    replay: Any
    explanation: str

    def to_dict(self) -> JSONDict:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "field": self.field,
            "live": self.live,
            "replay": self.replay,
            "explanation": self.explanation,
        }

    def describe(self) -> str:
        what = f"{self.subject}" + (f" {self.field}" if self.field else "")
        return f"{self.kind}: {what}: live={self.live!r} replay={self.replay!r} — {self.explanation}"


@dataclass(frozen=True, slots=True)
class LiveDecision:
    """A command the live SLO agent issued (from the control topic): a rollback, or any other of its kinds."""

    deployment_id: str
    rule: str | None
    reason: str | None
    window_id: str | None
    command_id: str
    issued_at_ms: int
    type: str = "rollback"  # the command's type (rollback, pause, set_weight, promote)

    @classmethod
    def from_command(cls, cmd: ControlCommand) -> LiveDecision:
        ev = cmd.evidence or {}
        rule = ev.get("rule")
        window = ev.get("triggering_window")
        return cls(
            deployment_id=cmd.deployment_id,
            rule=rule if isinstance(rule, str) else None,
            reason=cmd.reason,
            window_id=window if isinstance(window, str) else None,
            command_id=cmd.command_id,
            issued_at_ms=cmd.issued_at_ms,
            type=cmd.type,
        )

    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "type": self.type,
            "rule": self.rule,
            "reason": self.reason,
            "triggering_window": self.window_id,
            "command_id": self.command_id,
            "issued_at": iso_ms(self.issued_at_ms),
            "issued_at_ms": self.issued_at_ms,
        }


def live_decisions(commands: Iterable[ControlCommand], deployment_id: str | None = None) -> list[LiveDecision]:
    """Rollbacks issued by the SLO agent, first one per deployment (readers drop repeats by id)."""
    out: dict[str, LiveDecision] = {}
    for cmd in commands:
        if cmd.type != "rollback" or cmd.issued_by != SLO_AGENT:
            continue
        if deployment_id is not None and cmd.deployment_id != deployment_id:
            continue
        out.setdefault(cmd.deployment_id, LiveDecision.from_command(cmd))
    return [out[d] for d in sorted(out)]


def live_agent_commands(commands: Iterable[ControlCommand], deployment_id: str | None = None) -> list[LiveDecision]:
    """Every other command the SLO agent issued (pauses, rollout steps, gates, promotions), once per id."""
    out: dict[str, LiveDecision] = {}
    for cmd in commands:
        if cmd.type == "rollback" or cmd.issued_by != SLO_AGENT:
            continue
        if deployment_id is not None and cmd.deployment_id != deployment_id:
            continue
        out.setdefault(cmd.command_id, LiveDecision.from_command(cmd))
    return sorted(out.values(), key=lambda d: (d.deployment_id, d.issued_at_ms, d.command_id))


def dedupe_live_windows(windows: Iterable[WindowResult]) -> tuple[list[WindowResult], list[Difference]]:
    """Live windows by id (first wins). The merge step writes each window once (Kafka transactions, read
    read_committed), so a second copy is someone else's write: with other figures it is reported."""
    first: dict[str, WindowResult] = {}
    diffs: list[Difference] = []
    for w in windows:
        seen = first.get(w.window_id)
        if seen is None:
            first[w.window_id] = w
            continue
        changed = [f for f in COMPARED_FIELDS if getattr(seen, f) != getattr(w, f)]
        if changed:
            diffs.append(
                Difference(
                    "live_duplicate",
                    w.window_id,
                    ",".join(changed),
                    {f: getattr(seen, f) for f in changed},
                    {f: getattr(w, f) for f in changed},
                    "the live worker emitted this window twice with different figures (a restart re-emitted "
                    "it from older state); the first emission is compared",
                )
            )
    return sorted(first.values(), key=_order), diffs


def _order(w: WindowResult) -> tuple[int, str]:
    return w.window_start_ms, w.key.as_str()


def _verdicts(w: WindowResult) -> list[tuple[str, str, float, float | None]]:
    return sorted((v.rule, v.outcome, v.threshold, v.value) for v in w.verdicts)


def compare_windows(
    replay: Sequence[WindowResult],
    live: Sequence[WindowResult],
    *,
    live_late_by_key: Mapping[str, int] | None = None,
) -> list[Difference]:
    """Field-by-field comparison of windows (same ids expected); ``emitted_at`` is not compared."""
    diffs: list[Difference] = []
    by_id = {w.window_id: w for w in replay}
    live_ids = {w.window_id for w in live}
    # Keys whose lateness differs: an outcome live marked late is missing from its window and counted in a
    # later one, so every figure of that key can differ, not only late_count.
    late_sum: dict[str, list[int]] = {}
    for lw in live:
        rw = by_id.get(lw.window_id)
        if rw is not None:
            sums = late_sum.setdefault(lw.key.as_str(), [0, 0])
            sums[0] += lw.late_count
            sums[1] += rw.late_count
    late_keys = {k for k, (a, b) in late_sum.items() if a != b} | set(live_late_by_key or {})
    # The SLO agent publishes a candidate window's verdicts just after the window itself: the newest
    # windows of a key may not be judged yet when the topics were read. That is not a difference.
    last_judged: dict[str, int] = {}
    for lw in live:
        if lw.verdicts:
            k = lw.key.as_str()
            last_judged[k] = max(last_judged.get(k, lw.window_start_ms), lw.window_start_ms)
    for lw in live:
        rw = by_id.get(lw.window_id)
        if rw is None:
            if lw.response_count == 0:
                why = (
                    "an empty window the live worker closed by processing time (its 100 ms tick) after the "
                    "partition went quiet; replay only has later records of that partition to move time on"
                )
            else:
                why = (
                    "the replay has no outcome for this window: the records are outside the read span or "
                    "no longer retained in search_results"
                )
            diffs.append(Difference("window_missing_in_replay", lw.window_id, None, lw.response_count, None, why))
            continue
        for f in COMPARED_FIELDS:
            a, b = getattr(lw, f), getattr(rw, f)
            if a != b:
                diffs.append(
                    Difference(
                        "window_field",
                        lw.window_id,
                        f,
                        a,
                        b,
                        _why_field(f, lw, rw, live_late_by_key, lw.key.as_str() in late_keys),
                    )
                )
        pending = (
            lw.arm == "candidate"
            and not lw.verdicts
            and lw.window_start_ms > last_judged.get(lw.key.as_str(), -(2**62))
        )
        if not pending and _verdicts(lw) != _verdicts(rw):
            diffs.append(
                Difference(
                    "window_field",
                    lw.window_id,
                    "verdicts",
                    [v.to_dict() for v in lw.verdicts],
                    [v.to_dict() for v in rw.verdicts],
                    "verdicts follow the figures and the rules; if the figures agree, the live registry judged "
                    "with other rules (e.g. it had not seen the start command yet)",
                )
            )
    for rw in replay:
        if rw.window_id not in live_ids:
            why = (
                "the live worker had not emitted this window (yet) when the windows topic was read, or the "
                "worker was not running then"
                if rw.response_count
                else "an empty window the replay closed at the end of its input that the live worker did not emit"
            )
            diffs.append(Difference("window_missing_in_live", rw.window_id, None, None, rw.response_count, why))
    return diffs


def _why_field(
    f: str, lw: WindowResult, rw: WindowResult, live_late: Mapping[str, int] | None, lateness_differs: bool
) -> str:
    late_live = (live_late or {}).get(lw.key.as_str(), 0)
    if lateness_differs or f == "late_count":
        return (
            f"lateness differs for this key (this window: live late_count {lw.late_count}, replay "
            f"{rw.late_count}): live decides lateness against a watermark extrapolated by the worker's own "
            "processing time, replay by the records' Kafka timestamps; a worker stall (CPU starvation, GC, "
            "restart) longer than the grace period makes live mark on-time outcomes late, which then miss "
            "their window"
            + (f" ({late_live} live-late outcomes of this key found in the dead-letter topic)" if late_live else "")
        )
    if lw.response_count != rw.response_count:
        return "different outcomes were aggregated: live and replay did not see the same records (retention, span)"
    return "same outcomes but different figures: the live aggregator used other thresholds (registry rules)"


def first_rollbacks(decisions: Iterable[PipelineDecision], *, issued_only: bool = False) -> dict[str, PipelineDecision]:
    """Each deployment's rollback decision: the first issued one, else the first decided (not issued)."""
    out: dict[str, PipelineDecision] = {}
    for d in decisions:
        if d.type != "rollback" or (issued_only and not d.issued):
            continue
        seen = out.get(d.deployment_id)
        if seen is None or (d.issued and not seen.issued):
            out[d.deployment_id] = d
    return out


def compare_decisions(
    replay: Sequence[PipelineDecision],
    live: Sequence[LiveDecision],
    deployments: Iterable[str],
    live_other: Sequence[LiveDecision] = (),
) -> list[Difference]:
    """Rollbacks per deployment, then every other command of the SLO agent by id (``live_other``)."""
    diffs: list[Difference] = []
    r_by = first_rollbacks(replay, issued_only=True)
    l_by = {d.deployment_id: d for d in live}
    deployments = set(deployments)
    for dep in sorted(deployments | set(r_by) | set(l_by)):
        r, lv = r_by.get(dep), l_by.get(dep)
        if r is None and lv is None:
            continue
        if r is None:
            assert lv is not None
            diffs.append(
                Difference(
                    "decision",
                    dep,
                    "rollback",
                    _live_text(lv),
                    "no rollback",
                    "the live agent rolled back but the replayed windows do not reach the streak; see the window "
                    "differences",
                )
            )
        elif lv is None:
            diffs.append(
                Difference(
                    "decision",
                    dep,
                    "rollback",
                    "no rollback",
                    _replay_text(r),
                    "the replay reaches a rollback the live agent did not issue (worker down, or the deployment "
                    "had ended); see the window differences",
                )
            )
        elif (lv.window_id, lv.rule) != (r.window_id, r.rule):
            diffs.append(
                Difference(
                    "decision",
                    dep,
                    "triggering_window",
                    _live_text(lv),
                    _replay_text(r),
                    "the rollback happens at another window or for another rule; see the window differences",
                )
            )
    mine = {d.command_id: d for d in replay if d.issued and d.type != "rollback" and d.deployment_id in deployments}
    theirs = {d.command_id: d for d in live_other if d.deployment_id in deployments}
    for command_id in sorted(set(mine) | set(theirs)):
        r, lv = mine.get(command_id), theirs.get(command_id)
        if r is not None and lv is not None:
            if r.window_id != lv.window_id:
                diffs.append(
                    Difference(
                        "decision",
                        command_id,
                        "triggering_window",
                        lv.window_id,
                        r.window_id,
                        "the SLO agent issued this command on another window; see the window differences",
                    )
                )
            continue
        diffs.append(
            Difference(
                "decision",
                command_id,
                "command",
                None if lv is None else f"{lv.type} at {lv.window_id}",
                None if r is None else f"{r.command.type if r.command else r.type} at {r.window_id}",
                "the live agent issued this command and the replay did not: its windows (or the span) differ, or "
                "an operator's command the replay folds changed the course"
                if r is None
                else "the replay issues a command the live agent did not (worker down, or the span holds windows "
                "the live agent never judged); see the window differences",
            )
        )
    return diffs


def _live_text(d: LiveDecision) -> str:
    return f"rollback at {d.window_id} ({d.rule})"


def _replay_text(d: PipelineDecision) -> str:
    return f"rollback at {d.window_id} ({d.rule})"


@dataclass(frozen=True, slots=True)
class DecisionChange:
    deployment_id: str
    baseline: str
    backtest: str
    changed: bool
    summary: str
    windows_with_changed_verdicts: int

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d


def decision_text(d: PipelineDecision | None) -> str:
    if d is None:
        return "no rollback"
    return f"rollback at window {d.window_id} ({d.rule}, window start {iso_ms(d.window_start_ms)})"


def issued_text(decisions: Sequence[PipelineDecision]) -> list[str]:
    """One line per issued command: ``set_weight 0.25 (rollout-D-step-1) on <window>, applied``."""
    lines = []
    for d in decisions:
        cmd = d.command
        what = d.type if cmd is None else cmd.type + (f" {cmd.weight:g}" if cmd.type == "set_weight" else "")
        line = f"{what} ({d.command_id}) on {d.window_id}"
        if d.applied is not None:
            line += ", applied" if d.applied else f", refused by the ledger: {d.ledger_note}"
        lines.append(line)
    return lines


def backtest_changes(
    baseline: Sequence[PipelineDecision],
    backtest: Sequence[PipelineDecision],
    baseline_windows: Sequence[WindowResult],
    backtest_windows: Sequence[WindowResult],
    deployments: Iterable[str],
    rules_label: str,
) -> list[DecisionChange]:
    """Per deployment: the rollback with its own rules vs with the backtest rules."""
    b_by = first_rollbacks(baseline)
    t_by = first_rollbacks(backtest)
    t_windows = {w.window_id: w for w in backtest_windows}
    out: list[DecisionChange] = []
    for dep in sorted(set(deployments) | set(b_by) | set(t_by)):
        b, t = b_by.get(dep), t_by.get(dep)
        changed_verdicts = sum(
            1
            for w in baseline_windows
            if w.deployment_id == dep
            and w.arm == "candidate"
            and w.window_id in t_windows
            and [(v.rule, v.outcome) for v in w.verdicts]
            != [(v.rule, v.outcome) for v in t_windows[w.window_id].verdicts]
        )
        bt, tt = decision_text(b), decision_text(t)
        changed = (b.window_id, b.rule) != (t.window_id, t.rule) if b and t else (b is None) != (t is None)
        summary = f"{dep}: live rules: {bt}; with rules {rules_label}: {tt}" + ("" if changed else " (unchanged)")
        out.append(DecisionChange(dep, bt, tt, changed, summary, changed_verdicts))
    return out
