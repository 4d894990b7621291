"""What one deployment report shows, built from plain data (no Kafka access here).

:func:`build_report` takes the folded control view (or just its commands) plus window results and
extracts one deployment: its record, both arms' windows, the control commands that touched it, the
candidate's traffic weight over time and the preset diff last_good → candidate. The HTML page and the
export files are rendered from the resulting :class:`DeploymentReport`; a replay tool can build one from
recomputed windows with ``build_report(..., windows=recomputed)`` or ``report.with_windows(recomputed)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import msgspec

from canary.control import fold_records
from canary.core.deployment import ControlLedger, Deployment
from canary.core.judge import Judgement
from canary.core.models import ControlCommand, WindowResult
from canary.core.outages import BrokerOutage, OutageNote, OutagePhase, merge_outages
from canary.core.rings import split_ring_arm
from canary.core.slo import SLORule, deployment_policy
from canary.errors import CanaryError, DeploymentError
from canary.security import CommandVerifier

ChangeKind = Literal["changed", "added", "removed"]


class ViewLike(Protocol):
    """The part of :class:`canary.ops.view.ControlView` a report needs."""

    @property
    def commands(self) -> list[dict[str, Any]]: ...

    @property
    def windows(self) -> list[WindowResult]: ...


@dataclass(frozen=True, slots=True)
class CommandEntry:
    """A control command of the deployment, and whether the ledger applied it."""

    command_id: str
    type: str
    issued_at_ms: int
    issued_by: str
    reason: str | None
    evidence: dict[str, Any] | None
    weight: float | None
    applied: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        return d


@dataclass(frozen=True, slots=True)
class WeightPoint:
    """From ``at_ms`` on, the candidate receives ``weight`` of the traffic (effective share)."""

    at_ms: int
    weight: float
    cause: str  # the command type that set it


@dataclass(frozen=True, slots=True)
class DiffEntry:
    """One dotted preset key whose value differs between last_good and the candidate."""

    key: str
    last_good: Any
    candidate: Any
    change: ChangeKind

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        return d


@dataclass(frozen=True, slots=True)
class DeploymentReport:
    deployment: Deployment
    last_good_windows: tuple[WindowResult, ...]
    candidate_windows: tuple[WindowResult, ...]
    commands: tuple[CommandEntry, ...]
    weight_timeline: tuple[WeightPoint, ...]
    diff: tuple[DiffEntry, ...]
    rules: tuple[SLORule, ...]
    generated_at_ms: int
    source: str = "kafka"  # where the windows came from: "kafka", "replay", ...
    notes: tuple[str, ...] = field(default=())
    # Broker outages the worker noted on this deployment's judgements (canary.core.outages), oldest first.
    outages: tuple[BrokerOutage, ...] = field(default=())
    # Ring traffic (canary.core.rings): its own window series per ring and arm, never judged; shown apart.
    ring_windows: tuple[WindowResult, ...] = field(default=())

    @property
    def deployment_id(self) -> str:
        return self.deployment.deployment_id

    @property
    def status(self) -> str:
        return self.deployment.status

    @property
    def candidate_name(self) -> str:
        return self.deployment.candidate.name

    @property
    def last_good_name(self) -> str:
        return self.deployment.last_good.name

    @property
    def reason(self) -> str | None:
        return self.deployment.reason

    @property
    def end_command(self) -> CommandEntry | None:
        """The applied rollback / promote / abort that ended the deployment, if any."""
        end_id = self.deployment.end_command_id
        return next((c for c in self.commands if c.command_id == end_id and c.applied), None)

    @property
    def end_ms(self) -> int | None:
        return self.deployment.ended_at_ms

    @property
    def active_config(self) -> str:
        """The config serving the majority of traffic now: the candidate once promoted, else last_good."""
        return self.candidate_name if self.status == "promoted" else self.last_good_name

    def windows(self, arm: str) -> tuple[WindowResult, ...]:
        if arm == "candidate":
            return self.candidate_windows
        if arm == "last_good":
            return self.last_good_windows
        raise ValueError(f"unknown arm {arm!r}")

    @property
    def all_windows(self) -> tuple[WindowResult, ...]:
        return tuple(sorted(self.last_good_windows + self.candidate_windows, key=_window_order))

    def rule_for(self, metric: str) -> SLORule | None:
        return next((r for r in self.rules if r.metric == metric), None)

    def with_windows(self, windows: Iterable[WindowResult], source: str | None = None) -> DeploymentReport:
        """The same report with other windows (e.g. recomputed by a replay)."""
        lg, cand = split_arms(windows, self.deployment_id, self.end_ms)
        return replace(self, last_good_windows=lg, candidate_windows=cand, source=source or self.source)

    # -- before and after the end ---------------------------------------------------------------------------
    def after_end(self, w: WindowResult) -> bool:
        """Still open when the deployment ended (rolled back, promoted, aborted): not part of the decision.
        What such a bucket holds are requests sent before the end that finished after it (in flight)."""
        return self.end_ms is not None and w.window_end_ms > self.end_ms

    @property
    def judged_windows(self) -> tuple[WindowResult, ...]:
        """The candidate buckets the judge had judged when the deployment ended (a rollback came after the
        last of them): the only ones the failed-bucket count counts."""
        return tuple(w for w in self.candidate_windows if w.verdicts and not self.after_end(w))

    @property
    def failed_windows(self) -> tuple[WindowResult, ...]:
        return tuple(w for w in self.judged_windows if any(v.outcome == "fail" for v in w.verdicts))

    @property
    def late_windows(self) -> tuple[WindowResult, ...]:
        """Buckets after the end that still hold requests (in flight at the end), both arms, in time order."""
        return tuple(w for w in self.all_windows if self.after_end(w))

    @property
    def end_verb(self) -> str:
        """The end in words: "the rollback", "the promotion", "the abort" (or "the end")."""
        return {"rolled_back": "the rollback", "promoted": "the promotion", "aborted": "the abort"}.get(
            self.status, "the end"
        )

    def outage_slots(self, outage: BrokerOutage) -> list[OutageSlot]:
        """Every bucket slot that overlaps ``outage`` or its drain, with both arms' windows of the slot."""
        by_slot: dict[int, dict[str, WindowResult]] = {}
        for w in self.all_windows:
            if outage.phase(w.window_start_ms, w.window_end_ms) is not None:
                by_slot.setdefault(w.window_start_ms, {})[w.arm] = w
        slots = []
        for start in sorted(by_slot):
            arms = by_slot[start]
            any_window = next(iter(arms.values()))
            phase = outage.phase(start, any_window.window_end_ms)
            assert phase is not None
            slots.append(
                OutageSlot(start, any_window.window_end_ms, phase, arms.get("candidate"), arms.get("last_good"))
            )
        return slots

    def span_ms(self) -> tuple[int, int]:
        """Time range the report covers: the deployment and every window of it. An ended deployment's axis
        ends with its end or its last bucket holding data, whichever is later (empty buckets after the end
        are not kept, see :func:`split_arms`); a running one's at the report's time."""
        start = self.deployment.started_at_ms
        end = self.end_ms if self.end_ms is not None else self.generated_at_ms
        ws = self.all_windows
        if ws:
            start = min(start, ws[0].window_start_ms)
            end = max(end, max(w.window_end_ms for w in ws))
        return start, max(end, start + 1)


@dataclass(frozen=True, slots=True)
class OutageSlot:
    """One bucket slot during a broker outage or its drain, with what each arm measured in it."""

    start_ms: int
    end_ms: int
    phase: OutagePhase
    candidate: WindowResult | None
    last_good: WindowResult | None


def _window_order(w: WindowResult) -> tuple[int, str]:
    return (w.window_start_ms, w.arm)


def split_arms(
    windows: Iterable[WindowResult], deployment_id: str, end_ms: int | None = None
) -> tuple[tuple[WindowResult, ...], tuple[WindowResult, ...]]:
    """The deployment's windows per arm, deduplicated by window id (the last emitted wins), in time order.

    With ``end_ms`` (the deployment ended), of the buckets still open at the end only those holding the
    candidate's requests in flight at the end (sent before it, finished after it) are kept — with
    last_good's buckets of the same slots and of the slot the end fell in; the report shows them as such
    (:meth:`DeploymentReport.after_end`). The rest is left out: the routers go on closing the deployment's
    windows for a while, empty for the candidate (and last_good's go on as long as no other deployment
    starts), so a report's axis and counts end where the deployment's data end."""
    by_id: dict[str, WindowResult] = {}
    for w in windows:
        if w.deployment_id != deployment_id:
            continue
        prev = by_id.get(w.window_id)
        if prev is None or w.emitted_at_ms >= prev.emitted_at_ms:
            by_id[w.window_id] = w
    ordered = sorted(by_id.values(), key=_window_order)
    if end_ms is not None:
        in_flight = {
            w.window_start_ms for w in ordered if w.arm == "candidate" and w.window_end_ms > end_ms and w.response_count
        }
        ordered = [
            w
            for w in ordered
            if w.window_end_ms <= end_ms
            or (w.response_count > 0 and (w.window_start_ms in in_flight or w.window_start_ms < end_ms))
        ]
    return (
        tuple(w for w in ordered if w.arm == "last_good"),
        tuple(w for w in ordered if w.arm == "candidate"),
    )


# -- preset diff -------------------------------------------------------------------------------------------
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → ``{"a.b.c": leaf}``. Lists of scalars are leaves; lists of mappings are indexed
    (``slo.rules[0].threshold``). An empty mapping is a leaf ``{}`` so its presence still shows."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list | tuple) and value and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


_MISSING = object()


def diff_snapshots(last_good: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[DiffEntry]:
    """Changed dotted keys, in the order they appear (last_good's keys first, then candidate-only ones)."""
    a, b = flatten(last_good), flatten(candidate)
    keys = list(a) + [k for k in b if k not in a]
    out: list[DiffEntry] = []
    for key in keys:
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is _MISSING:
            out.append(DiffEntry(key, None, vb, "added"))
        elif vb is _MISSING:
            out.append(DiffEntry(key, va, None, "removed"))
        elif va != vb or (type(va) is not type(vb) and not _same_number(va, vb)):
            out.append(DiffEntry(key, va, vb, "changed"))
    return out


def _same_number(a: Any, b: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return number(a) and number(b) and a == b


# -- building ----------------------------------------------------------------------------------------------
def select_deployment(ledger: ControlLedger, deployment_id: str | None = None) -> Deployment:
    """The named deployment, else the latest one started; DeploymentError if there is none."""
    if deployment_id is not None:
        dep = ledger.deployments.get(deployment_id)
        if dep is None:
            known = sorted(ledger.deployments, key=lambda d: ledger.deployments[d].started_at_ms)
            listing = ", ".join(known[-10:]) if known else "none"
            raise DeploymentError(f"no deployment {deployment_id!r} on the control topic (known: {listing})")
        return dep
    latest = ledger.latest
    if latest is None:
        raise DeploymentError("no canary deployment has ever been started (the control topic has no start command)")
    return latest


def _weight_timeline(dep: Deployment, entries: Sequence[CommandEntry]) -> list[WeightPoint]:
    points: list[WeightPoint] = []
    configured = dep.weight
    running = False
    for c in entries:
        if not c.applied:
            continue
        if c.type == "start":
            configured = c.weight if c.weight is not None else configured
            running = True
        elif c.type == "set_weight" and c.weight is not None:
            configured = c.weight
        elif c.type == "pause":
            running = False
        elif c.type == "resume":
            running = True
        elif c.type in ("rollback", "abort"):
            points.append(WeightPoint(c.issued_at_ms, 0.0, c.type))
            break
        elif c.type == "promote":
            points.append(WeightPoint(c.issued_at_ms, 1.0, c.type))
            break
        else:
            continue
        points.append(WeightPoint(c.issued_at_ms, configured if running else 0.0, c.type))
    return points


def build_report(
    view: ViewLike | None = None,
    deployment_id: str | None = None,
    *,
    commands: Sequence[Mapping[str, Any]] | None = None,
    windows: Iterable[WindowResult] | None = None,
    now_ms: int | None = None,
    source: str = "kafka",
    command_times: Sequence[int | None] | None = None,
    outages: Iterable[BrokerOutage] = (),
    verifier: CommandVerifier | None = None,
) -> DeploymentReport:
    """Report of one deployment (default: the latest started).

    ``view`` is a :class:`canary.ops.view.ControlView` (or anything with ``commands`` and ``windows``);
    ``commands`` / ``windows`` override its parts, so a replay can pass recomputed windows.
    ``command_times``: each command record's append time, which the ledger holds rollout commands to (the
    view's own when its commands are used). ``outages``: the broker outages noted on judgements
    (:func:`outages_of_judgements`); those that touch none of this deployment's windows are left out.

    Only verified commands are folded. ``verifier``: ``commands`` are control records as read from the topic,
    verified here in topic order (:func:`canary.control.fold_records`); without it they are commands a
    reader verified already (the dashboard's, a replay's). A view's records are taken as its own fold judged
    them: the ones it rejected are left out.
    """
    raw_commands = list(commands if commands is not None else (view.commands if view is not None else []))
    if commands is None and command_times is None and view is not None:
        command_times = getattr(view, "command_times", None)
    times = list(command_times) if command_times is not None else []
    timed = [(raw, times[i] if i < len(times) else None) for i, raw in enumerate(raw_commands)]
    if commands is None and view is not None:
        rejected = {i for i, _ in getattr(view, "rejected", ())}
        timed = [pair for i, pair in enumerate(timed) if i not in rejected]
    verified: list[tuple[ControlCommand, int | None]] = []
    if verifier is not None:
        history = fold_records([raw for raw, _ in timed], verifier, [t for _, t in timed])
        verified = [(o.verdict.command, o.appended_at_ms) for o in history.accepted if o.verdict.command is not None]
    else:
        for raw, at in timed:
            try:
                verified.append((ControlCommand.from_dict(raw), at))
            except CanaryError:
                continue
    all_windows = list(windows if windows is not None else (view.windows if view is not None else []))
    ledger = ControlLedger()
    applied: list[tuple[ControlCommand, bool, str]] = []
    for cmd, at in verified:
        t = ledger.apply(cmd, at)
        applied.append((cmd, t.applied, t.note))
    dep = select_deployment(ledger, deployment_id)
    seen: set[str] = set()
    entries: list[CommandEntry] = []
    for cmd, ok, note in applied:
        if cmd.deployment_id != dep.deployment_id or (not ok and cmd.command_id in seen):
            continue  # another deployment's, or a redelivered duplicate
        seen.add(cmd.command_id)
        entries.append(
            CommandEntry(
                command_id=cmd.command_id,
                type=cmd.type,
                issued_at_ms=cmd.issued_at_ms,
                issued_by=cmd.issued_by,
                reason=cmd.reason,
                evidence=cmd.evidence,
                weight=cmd.weight,
                applied=ok,
                note=note,
            )
        )
    notes: list[str] = []
    rules = deployment_policy(
        dep.candidate.snapshot,
        on_error=lambda why: notes.append(f"candidate slo section unreadable ({why}); default rules shown"),
    ).rules
    lg, cand = split_arms(all_windows, dep.deployment_id, dep.ended_at_ms)
    touched = tuple(
        o for o in merge_outages(outages) if any(o.phase(w.window_start_ms, w.window_end_ms) for w in lg + cand)
    )
    return DeploymentReport(
        deployment=dep,
        last_good_windows=lg,
        candidate_windows=cand,
        commands=tuple(entries),
        weight_timeline=tuple(_weight_timeline(dep, entries)),
        diff=tuple(diff_snapshots(dep.last_good.snapshot, dep.candidate.snapshot)),
        rules=rules,
        generated_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        source=source,
        notes=tuple(notes),
        outages=touched,
        ring_windows=ring_windows_of(all_windows, dep.deployment_id),
    )


def ring_windows_of(windows: Iterable[WindowResult], deployment_id: str) -> tuple[WindowResult, ...]:
    """The deployment's ring series (arm ``candidate@<ring>`` / ``last_good@<ring>``), deduplicated by window
    id (the last emitted wins), in time order."""
    by_id: dict[str, WindowResult] = {}
    for w in windows:
        if w.deployment_id == deployment_id and split_ring_arm(w.arm)[1] is not None:
            prev = by_id.get(w.window_id)
            if prev is None or w.emitted_at_ms >= prev.emitted_at_ms:
                by_id[w.window_id] = w
    return tuple(sorted(by_id.values(), key=_window_order))


def outages_of_judgements(judgements: Iterable[Judgement]) -> tuple[BrokerOutage, ...]:
    """The outages the judgements' notes name (``Judgement.context.broker_outage``), merged."""
    found = []
    for j in judgements:
        note = OutageNote.from_context(j.context)
        if note is not None:
            found.append(note.outage)
    return merge_outages(found)
