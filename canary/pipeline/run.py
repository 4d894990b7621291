"""THE public decision pipeline: raw topic records in; windows, verdicts and decisions out; no Kafka.

``run_pipeline`` takes records as Kafka holds them — topic, partition, offset, arrival (record) time, key,
value — for ``search_results`` and ``canary_control`` mixed in any order, and returns exactly what the live
worker derives from them: the 5 s windows of every partition (the windows stage's
:class:`~canary.core.windows.WindowFinalizer`, batched by arrival time as the live consumer fetches), the
judge's verdicts with their evidence (:class:`~canary.pipeline.decisions.DecisionStep`, the SLO agent's
logic), and each decision with whether the live agent would have issued it. Policies come from the
control topic through :class:`~canary.pipeline.policies.PolicyBook`, or from an override for a backtest.

No clock is read: arrival times are the records' own, and ``horizon_ms`` says how far processing time ran
after the last record (the live tick keeps closing windows while traffic is quiet). Replay from Kafka,
replay of a dump file, the reports, the decision benchmark and the tests all call this function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from canary.core import wire
from canary.core.models import ControlCommand, JSONDict, WindowResult
from canary.core.slo import SLOPolicy, SLORule
from canary.errors import CanaryError
from canary.replay.recompute import Judgement, Recomputation, ReplayDecision, ReplaySettings, recompute


@dataclass(frozen=True, slots=True)
class Record:
    """One record of any canary topic, as a consumer (or ``kcat -C -J``) sees it."""

    topic: str
    partition: int
    offset: int
    arrival_ms: int | None  # the record's timestamp; None: fall back to the payload's own time
    key: bytes | None
    value: bytes | None


@dataclass
class PipelineResult:
    """The recomputation plus what the input held besides outcomes."""

    recomputation: Recomputation
    commands: list[ControlCommand]
    invalid_commands: list[JSONDict] = field(default_factory=list)
    other_records: dict[str, int] = field(default_factory=dict)

    @property
    def windows(self) -> list[WindowResult]:
        return self.recomputation.windows

    @property
    def judgements(self) -> list[Judgement]:
        return self.recomputation.judgements

    @property
    def decisions(self) -> list[ReplayDecision]:
        return self.recomputation.decisions


def parse_control(records: Iterable[Record]) -> tuple[list[ControlCommand], list[JSONDict]]:
    """Control records in offset order → commands; a malformed one is reported (partition, offset, why)."""
    commands: list[ControlCommand] = []
    invalid: list[JSONDict] = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            commands.append(ControlCommand.from_dict(wire.decode_object(r.value, wire.CONTROL)))
        except (CanaryError, ValueError, TypeError) as exc:  # wire.Rejected is a CanaryError
            invalid.append({"topic": r.topic, "partition": r.partition, "offset": r.offset, "reason": str(exc)[:300]})
    return commands, invalid


def run_pipeline(
    records: Iterable[Record],
    *,
    results_topic: str = "search_results",
    control_topic: str = "canary_control",
    commands: Sequence[ControlCommand] | None = None,
    settings: ReplaySettings | None = None,
    rules_override: Sequence[SLORule] | SLOPolicy | None = None,
    horizon_ms: int | None = None,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
) -> PipelineResult:
    """Windows, verdicts and decisions from raw records (see the module docstring).

    ``commands``: already-parsed control commands, instead of control records in ``records``.
    """
    outcomes: list[tuple[int, int, int | None, bytes | None]] = []
    control: list[Record] = []
    other: dict[str, int] = {}
    for r in records:
        if r.topic == results_topic:
            outcomes.append((r.partition, r.offset, r.arrival_ms, r.value))
        elif r.topic == control_topic:
            control.append(r)
        else:
            other[r.topic] = other.get(r.topic, 0) + 1
    parsed, invalid = parse_control(control)
    history = list(commands) if commands is not None else parsed
    rc = recompute(
        outcomes,
        history,
        settings=settings,
        rules_override=rules_override,
        horizon_ms=horizon_ms,
        judge_from_ms=judge_from_ms,
        judge_until_ms=judge_until_ms,
    )
    return PipelineResult(rc, history, invalid, other)
