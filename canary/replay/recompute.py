"""Kafka-free recomputation of windows, verdicts and rollback decisions from recorded records.

The same core objects as the live worker (``streams/app.py``) do the work:

* per source partition one :class:`~canary.core.windows.WindowFinalizer` with the worker's window
  settings, fed the partition's outcomes **in offset order, in micro-batches** (at most ``batch_max``
  records spanning at most ``batch_span_ms`` of Kafka time, as the live agent's
  ``take_events(batch_max, within=...)`` cuts them), with the source offsets (redelivery dedupe) and
  ``now_ms`` = the newest Kafka timestamp in the batch: a record's Kafka timestamp is the closest
  recorded stand-in for the moment the live worker received it, so the processing-time extrapolation of
  the watermark — and with it every lateness decision — behaves as it did live;
* ``due(now)`` after each batch, ``due(horizon)`` once the input ends (the live 100 ms tick that closes
  windows when traffic stops), then ``flush_all``;
* the finalizer's judge and per-key aggregator thresholds come from each deployment's ``slo`` section as
  folded from the control topic by :class:`~canary.core.deployment.ControlLedger` (the registry's
  rules), or from ``rules_override`` for a backtest;
* candidate windows go, per deployment and in order, through an :class:`~canary.core.slo.SLOEvaluator`
  — the SLO agent's decision logic — which yields at most one rollback per deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from canary.core.aggregations import WindowAggregator
from canary.core.deployment import ControlLedger, Deployment
from canary.core.models import ControlCommand, JSONDict, RuleVerdict, WindowKey, WindowResult, iso_ms
from canary.core.slo import SLOEvaluator, SLORule, default_rules, judge_all, rules_from_slo_section
from canary.core.windows import WindowFinalizer, window_bounds
from canary.errors import CanaryError
from canary.replay.decode import DECODE_ERRORS, OutcomeDecoder, ReplayOutcome, SourceRecord, as_core_outcomes

log = logging.getLogger("canary.replay")

MAX_SAMPLES = 50  # invalid / late records listed individually in the result (all are counted)


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """The live worker's window and batching settings (``StreamsConfig`` defaults)."""

    window_ms: int = 5000
    grace_ms: int = 1000
    idle_windows: int = 12
    batch_max: int = 2000  # StreamsConfig.batch_max
    batch_span_ms: int = 50  # StreamsConfig.batch_within, in Kafka time

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.grace_ms < 0 or self.idle_windows < 1:
            raise ValueError(f"bad window settings: {self}")
        if self.batch_max < 1 or self.batch_span_ms < 0:
            raise ValueError(f"bad batch settings: {self}")

    @property
    def lookback_ms(self) -> int:
        """Read this much before the first reported window so its watermark state is warm."""
        return self.window_ms + self.grace_ms

    @property
    def lookahead_ms(self) -> int:
        """Read this much after the last reported window so late-published outcomes are seen."""
        return self.window_ms + self.grace_ms

    def to_dict(self) -> JSONDict:
        return {
            "window_ms": self.window_ms,
            "grace_ms": self.grace_ms,
            "idle_windows": self.idle_windows,
            "batch_max": self.batch_max,
            "batch_span_ms": self.batch_span_ms,
        }


# -- rules (the registry's logic, streams/registry.py) ---------------------------------------------------------


def deployment_rules(dep: Deployment | None) -> list[SLORule]:
    """The rules the live registry judges ``dep`` with: its candidate's ``slo`` section, else defaults.

    Mirrors ``streams.registry.rules_for`` (kept in step by ``tests/replay/test_rules.py``).
    """
    if dep is None:
        return default_rules()
    slo = dep.candidate.snapshot.get("slo")
    try:
        return rules_from_slo_section(slo) if isinstance(slo, dict) else default_rules()
    except CanaryError as exc:
        log.error("deployment %s: invalid slo section (%s); using default rules", dep.deployment_id, exc)
        return default_rules()


def aggregator_for_rules(rules: Sequence[SLORule]) -> WindowAggregator:
    """Per-request thresholds for ``slo_violations``, as ``DeploymentRegistry.aggregator_for`` sets them."""
    latency, recall = 1200.0, 0.30
    for rule in rules:
        if rule.metric == "p95_ms":
            latency = rule.threshold
        elif rule.metric == "recall_at_10":
            recall = rule.threshold
    return WindowAggregator(latency_threshold_ms=latency, recall_threshold=recall)


class RuleBook:
    """Rules per deployment from the folded control topic, optionally overridden for a backtest."""

    def __init__(self, ledger: ControlLedger, override: Sequence[SLORule] | None = None) -> None:
        self.ledger = ledger
        self.override = tuple(override) if override is not None else None
        self._cache: dict[str | None, tuple[SLORule, ...]] = {}

    def rules(self, deployment_id: str | None) -> tuple[SLORule, ...]:
        cached = self._cache.get(deployment_id)
        if cached is None:
            if self.override is not None and deployment_id is not None:
                cached = self.override
            else:
                dep = self.ledger.deployments.get(deployment_id) if deployment_id else None
                cached = tuple(deployment_rules(dep))
            self._cache[deployment_id] = cached
        return cached

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        return aggregator_for_rules(self.rules(key.deployment_id))

    def judge(self, window: WindowResult) -> tuple[RuleVerdict, ...]:
        if window.arm != "candidate" or window.deployment_id is None:
            return ()
        return judge_all(self.rules(window.deployment_id), window)


def fold_commands(commands: Iterable[ControlCommand]) -> ControlLedger:
    ledger = ControlLedger()
    for cmd in commands:
        ledger.apply(cmd)
    return ledger


# -- results ---------------------------------------------------------------------------------------------------


@dataclass
class PartitionStats:
    partition: int
    records: int = 0
    outcomes: int = 0
    invalid: int = 0
    late: int = 0
    batches: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None

    def to_dict(self) -> JSONDict:
        return {
            "partition": self.partition,
            "records": self.records,
            "outcomes": self.outcomes,
            "invalid": self.invalid,
            "late": self.late,
            "batches": self.batches,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "first_timestamp_ms": self.first_timestamp_ms,
            "last_timestamp_ms": self.last_timestamp_ms,
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    """One candidate window as the SLO agent saw it: verdicts and each rule's streak afterwards."""

    window_id: str
    deployment_id: str
    window_start_ms: int
    outcomes: dict[str, str]
    streaks: dict[str, int]
    decided: bool

    def to_dict(self) -> JSONDict:
        return {
            "window_id": self.window_id,
            "deployment_id": self.deployment_id,
            "window_start": iso_ms(self.window_start_ms),
            "window_start_ms": self.window_start_ms,
            "outcomes": self.outcomes,
            "streaks": self.streaks,
            "decided": self.decided,
        }


@dataclass(frozen=True, slots=True)
class ReplayDecision:
    """A rollback the SLO agent's logic reaches on the replayed windows."""

    deployment_id: str
    rule: str
    reason: str
    window_id: str  # the triggering window
    window_start_ms: int
    window_end_ms: int
    evidence: JSONDict
    command_id: str
    issued: bool  # would the live agent have issued it (deployment known and still live then)?
    note: str

    def to_dict(self) -> JSONDict:
        return {
            "deployment_id": self.deployment_id,
            "type": "rollback",
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
        }


@dataclass
class Recomputation:
    """Everything a replay derives from the records (unfiltered windows; see :func:`in_span`)."""

    settings: ReplaySettings
    windows: list[WindowResult]
    judgements: list[Judgement]
    decisions: list[ReplayDecision]
    partitions: dict[int, PartitionStats]
    invalid_samples: list[JSONDict] = field(default_factory=list)
    late_samples: list[JSONDict] = field(default_factory=list)
    rules: dict[str, list[JSONDict]] = field(default_factory=dict)

    @property
    def outcomes(self) -> int:
        return sum(p.outcomes for p in self.partitions.values())

    @property
    def invalid(self) -> int:
        return sum(p.invalid for p in self.partitions.values())

    @property
    def late(self) -> int:
        return sum(p.late for p in self.partitions.values())


# -- the recomputation -----------------------------------------------------------------------------------------


def _by_partition(records: Iterable[SourceRecord | tuple[int, int, int | None, bytes | None]]) -> dict[int, list[Any]]:
    parts: dict[int, list[Any]] = {}
    for rec in records:
        parts.setdefault(rec[0], []).append(rec)
    for p, recs in parts.items():
        if any(recs[i][1] >= recs[i + 1][1] for i in range(len(recs) - 1)):
            # Offset order, each offset once: what reading the partition from Kafka yields.
            recs.sort(key=lambda r: r[1])
            parts[p] = [r for i, r in enumerate(recs) if i == 0 or r[1] != recs[i - 1][1]]
    return parts


def recompute_partition(
    partition: int,
    records: Sequence[SourceRecord | tuple[int, int, int | None, bytes | None]],
    finalizer: WindowFinalizer,
    decoder: OutcomeDecoder,
    settings: ReplaySettings,
    horizon_ms: int | None = None,
    invalid_samples: list[JSONDict] | None = None,
    late_samples: list[JSONDict] | None = None,
) -> tuple[list[WindowResult], PartitionStats]:
    """Drive one partition's finalizer over its records (offset order) like the live windows agent."""
    stats = PartitionStats(partition)
    out: list[WindowResult] = []
    batch: list[ReplayOutcome] = []
    offsets: list[int] = []
    batch_first = 0
    batch_now = 0
    last_now = -(2**62)
    span = settings.batch_span_ms
    size = settings.batch_max
    decode = decoder.decode
    add = finalizer.add
    due = finalizer.due

    def flush() -> None:
        nonlocal last_now
        now = max(batch_now, last_now)  # processing time never runs backwards
        last_now = now
        late = add(partition, as_core_outcomes(batch), now, offsets)
        stats.batches += 1
        if late:
            stats.late += len(late)
            if late_samples is not None:
                for o in late[: max(0, MAX_SAMPLES - len(late_samples))]:
                    ro = o if isinstance(o, ReplayOutcome) else None
                    late_samples.append(
                        {
                            "partition": partition,
                            "offset": ro.offset if ro else None,
                            "event_id": o.event_id,
                            "ts": o.ts,
                            "window_key": o.window_key.as_str(),
                            "replay_now_ms": now,
                        }
                    )
        out.extend(due(now))
        batch.clear()
        offsets.clear()

    if records:
        stats.records = len(records)
        stats.first_offset = records[0][1]
        stats.last_offset = records[-1][1]
    first_ts: int | None = None
    now = 0
    for _, offset, ts_ms, raw in records:
        try:
            outcome = decode(raw, offset)
        except DECODE_ERRORS as exc:
            stats.invalid += 1
            if invalid_samples is not None and len(invalid_samples) < MAX_SAMPLES:
                invalid_samples.append({"partition": partition, "offset": offset, "reason": str(exc)[:300]})
            continue
        now = ts_ms if ts_ms is not None and ts_ms >= 0 else outcome.ts
        if batch:
            if len(batch) >= size or now - batch_first > span:
                flush()
                batch_first = batch_now = now
            elif now > batch_now:
                batch_now = now
        else:
            batch_first = batch_now = now
            if first_ts is None:
                first_ts = now
        batch.append(outcome)
        offsets.append(offset)
    stats.first_timestamp_ms = first_ts
    stats.last_timestamp_ms = now if first_ts is not None else None
    if batch:
        flush()
    stats.outcomes = stats.records - stats.invalid
    end = horizon_ms if horizon_ms is not None else (last_now if stats.batches else None)
    if end is not None:
        out.extend(due(max(end, last_now)))  # the live tick: processing time kept running after the input
        out.extend(finalizer.flush_all(max(end, last_now)))
    return out, stats


def recompute(
    records: Iterable[SourceRecord | tuple[int, int, int | None, bytes | None]],
    commands: Sequence[ControlCommand],
    *,
    settings: ReplaySettings | None = None,
    rules_override: Sequence[SLORule] | None = None,
    horizon_ms: int | None = None,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
    strict_decode: bool = False,
) -> Recomputation:
    """Recompute windows, verdicts and decisions.

    ``records``: ``(partition, offset, kafka_timestamp_ms, raw_value)`` of ``search_results``, any order
    across partitions. ``commands``: the control topic in order (at least everything up to the span's
    end). ``horizon_ms``: processing time reached after the input (the live tick closes windows up to
    it); default: each partition's last record time. Only candidate windows starting in
    ``[judge_from_ms, judge_until_ms)`` reach the SLO evaluator (windows before the span are incomplete).
    """
    settings = settings or ReplaySettings()
    ledger = fold_commands(commands)
    book = RuleBook(ledger, rules_override)
    decoder = OutcomeDecoder(strict=strict_decode)
    windows: list[WindowResult] = []
    partitions: dict[int, PartitionStats] = {}
    invalid_samples: list[JSONDict] = []
    late_samples: list[JSONDict] = []
    for partition, recs in sorted(_by_partition(records).items()):
        fin = WindowFinalizer(
            size_ms=settings.window_ms,
            grace_ms=settings.grace_ms,
            idle_windows=settings.idle_windows,
            aggregator=book.aggregator_for,
            judge=book.judge,
        )
        out, stats = recompute_partition(
            partition, recs, fin, decoder, settings, horizon_ms, invalid_samples, late_samples
        )
        windows.extend(out)
        partitions[partition] = stats

    judgements, decisions = evaluate(
        windows, book, ledger, settings, judge_from_ms=judge_from_ms, judge_until_ms=judge_until_ms
    )
    deps = sorted({w.deployment_id for w in windows if w.deployment_id} | set(ledger.deployments))
    rules = {d: [r.to_dict() for r in book.rules(d)] for d in deps}
    return Recomputation(settings, windows, judgements, decisions, partitions, invalid_samples, late_samples, rules)


def evaluate(
    windows: Sequence[WindowResult],
    book: RuleBook,
    ledger: ControlLedger,
    settings: ReplaySettings,
    *,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
) -> tuple[list[Judgement], list[ReplayDecision]]:
    """The SLO agent over the candidate windows, per deployment in window order."""
    per_dep: dict[str, list[WindowResult]] = {}
    for w in windows:
        if w.arm != "candidate" or w.deployment_id is None:
            continue
        if judge_from_ms is not None and w.window_start_ms < judge_from_ms:
            continue
        if judge_until_ms is not None and w.window_start_ms >= judge_until_ms:
            continue
        per_dep.setdefault(w.deployment_id, []).append(w)
    judgements: list[Judgement] = []
    decisions: list[ReplayDecision] = []
    for dep_id in sorted(per_dep):
        rules = book.rules(dep_id)
        evaluator = SLOEvaluator()
        evaluator.set_rules(dep_id, rules)
        for w in sorted(per_dep[dep_id], key=lambda x: x.window_start_ms):
            decision = evaluator.observe(w)
            judgements.append(
                Judgement(
                    window_id=w.window_id,
                    deployment_id=dep_id,
                    window_start_ms=w.window_start_ms,
                    outcomes={v.rule: v.outcome for v in w.verdicts},
                    streaks={r.name: evaluator.streaks.streak(dep_id, r.name) for r in rules},
                    decided=decision is not None,
                )
            )
            if decision is None:
                continue
            deployment = ledger.deployments.get(dep_id)
            decided_at = w.window_end_ms + settings.grace_ms
            issued, note = True, "issued: the deployment was live when the window closed"
            if deployment is None:
                issued, note = False, "not issued: no start command for this deployment in the control topic"
            elif (
                deployment.end_command_id is not None
                and deployment.end_command_id != decision.command_id
                and deployment.ended_at_ms is not None
                and deployment.ended_at_ms <= decided_at
            ):
                issued = False
                note = (
                    f"not issued: the deployment was already {deployment.status} by {deployment.issued_by} "
                    f"at {iso_ms(deployment.ended_at_ms)}"
                )
            evidence = {
                **decision.evidence,
                "config_name": deployment.candidate.name if deployment else w.config_name,
                "triggering_window": decision.window_id,
            }
            decisions.append(
                ReplayDecision(
                    deployment_id=dep_id,
                    rule=decision.rule,
                    reason=decision.reason,
                    window_id=decision.window_id,
                    window_start_ms=w.window_start_ms,
                    window_end_ms=w.window_end_ms,
                    evidence=evidence,
                    command_id=decision.command_id,
                    issued=issued,
                    note=note,
                )
            )
    return judgements, decisions


def span_bounds(from_ms: int, to_ms: int, settings: ReplaySettings) -> tuple[int, int]:
    """Reported windows: those starting in ``[window start of from_ms, to_ms)``."""
    return window_bounds(from_ms, settings.window_ms)[0], to_ms


def read_bounds(from_ms: int, to_ms: int, settings: ReplaySettings) -> tuple[int, int]:
    """Kafka-time range of ``search_results`` to read for a span: warm-up before, late arrivals after."""
    first, last = span_bounds(from_ms, to_ms, settings)
    end = window_bounds(max(last - 1, first), settings.window_ms)[1]
    return first - settings.lookback_ms, end + settings.lookahead_ms


def in_span(window: WindowResult | Mapping[str, Any], first_ms: int, until_ms: int, deployment_id: str | None) -> bool:
    if isinstance(window, WindowResult):
        start, dep = window.window_start_ms, window.deployment_id
    else:
        start, dep = int(window["window_start_ms"]), window.get("deployment_id")
    return first_ms <= start < until_ms and (deployment_id is None or dep == deployment_id)
