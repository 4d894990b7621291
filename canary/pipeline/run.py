"""THE public decision pipeline: raw topic records in; windows, verdicts and decisions out; no Kafka.

``run_pipeline`` takes records as Kafka holds them — topic, partition, offset, arrival (record) time, key,
value — for ``search_results`` and ``canary_control`` mixed in any order, and returns exactly what the live
worker derives from them: the 5 s windows of every partition (the windows stage's
:class:`~canary.core.windows.WindowFinalizer`, batched by arrival time as the live consumer fetches), the
judge's verdicts with their evidence (:class:`~canary.pipeline.decisions.DecisionStep`, the SLO agent's
logic), and each decision with whether the live agent would have issued it. Policies come from the
control topic through :class:`~canary.pipeline.policies.PolicyBook`, or from an override for a backtest.
Control records are verified first, in topic order, exactly as the live readers verify them — by the
``verify_control`` the caller gives (:class:`canary.control.VerifyControl`; this layer sits below the
verifier): an unsigned or forged command is not applied here either.

Decisions are the SLO agent's whole loop (:mod:`canary.pipeline.loop`): the judge's rollbacks and pauses
and the rollout plan's steps, gates, promotion and expiry, each with the exact command the agent
publishes (unsigned) and the time it issues it. With ``apply_decisions`` (the default) the loop feeds its
own commands back into the control topic's ledger as the live registry does, so a plan walks its steps
and a pause holds; the traffic itself is given by the records (a ``set_weight`` does not re-route them).

No clock is read: arrival times are the records' own, and ``horizon_ms`` says how far processing time ran
after the last record (the live tick keeps closing windows while traffic is quiet). Replay from Kafka,
replay of a dump file, the reports, the decision benchmark and the tests all call this function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from canary.core import wire
from canary.core.models import ControlCommand, JSONDict, WindowResult
from canary.core.slo import SLOPolicy, SLORule
from canary.errors import CanaryError, ConfigError
from canary.pipeline.loop import Judgement, PipelineDecision
from canary.pipeline.recompute import Recomputation, recompute
from canary.pipeline.settings import PipelineSettings

log = logging.getLogger("canary.pipeline")

WarningCode = Literal["control_records_ignored"]
# Verified control records: the accepted commands, their append times, one {topic, partition, offset, reason}
# per record that was not applied (canary.control.VerifyControl makes it).
ControlParse = tuple[list[ControlCommand], list[int | None], list[JSONDict]]


@dataclass(frozen=True, slots=True)
class Record:
    """One record of any canary topic, as a consumer (or ``kcat -C -J``) sees it."""

    topic: str
    partition: int
    offset: int
    arrival_ms: int | None  # the record's timestamp; None: fall back to the payload's own time
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class PipelineWarning:
    """Something in the input the pipeline did not use, said rather than dropped."""

    code: WarningCode
    message: str
    count: int

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d


@dataclass
class PipelineResult:
    """The recomputation plus what the input held besides outcomes."""

    recomputation: Recomputation
    commands: list[ControlCommand]
    invalid_commands: list[JSONDict] = field(default_factory=list)
    other_records: dict[str, int] = field(default_factory=dict)
    warnings: list[PipelineWarning] = field(default_factory=list)

    @property
    def windows(self) -> list[WindowResult]:
        return self.recomputation.windows

    @property
    def judgements(self) -> list[Judgement]:
        return self.recomputation.judgements

    @property
    def decisions(self) -> list[PipelineDecision]:
        """Every decision of the SLO agent's loop, issued or not (``issued``, ``note``), in window order."""
        return self.recomputation.decisions

    @property
    def issued(self) -> list[PipelineDecision]:
        """The decisions the live agent publishes, with their commands, in issue order."""
        return sorted((d for d in self.decisions if d.issued), key=lambda d: (d.issued_at_ms or 0, d.deployment_id))


def _well_formed(records: Sequence[Record]) -> int:
    """How many of these control records are commands by their shape (not verified: they are not used)."""
    count = 0
    for r in records:
        try:
            ControlCommand.from_dict(wire.decode_object(r.value, wire.CONTROL))
            count += 1
        except (CanaryError, ValueError, TypeError):  # wire.Rejected is a CanaryError
            continue
    return count


def run_pipeline(
    records: Iterable[Record],
    *,
    results_topic: str = "search_results",
    control_topic: str = "canary_control",
    commands: Sequence[ControlCommand] | None = None,
    settings: PipelineSettings | None = None,
    rules_override: Sequence[SLORule] | SLOPolicy | None = None,
    horizon_ms: int | None = None,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
    apply_decisions: bool = True,
    verify_control: Callable[[Sequence[Record]], ControlParse] | None = None,
) -> PipelineResult:
    """Windows, verdicts and decisions from raw records (see the module docstring).

    ``commands``: already-parsed control commands, instead of control records in ``records``; control
    records in ``records`` are then not used, and the result says so (a ``control_records_ignored``
    warning, also logged). ``rules_override``: judge every deployment with this policy (a preset's whole
    ``slo`` section, :func:`canary.core.slo.policy_from_slo_section`) instead of its own.
    ``apply_decisions``: feed the loop's issued commands back into its ledger (default, as live); False:
    resolve decisions against the recorded control topic alone. ``verify_control``: how the control records
    in ``records`` are verified before anything applies them — :class:`canary.control.VerifyControl`, as the
    live readers verify them (``VerifyControl.insecure()`` for an unsigned lab topic); without it, control
    records in the input are refused (ConfigError): this layer cannot verify, and must not apply what it has
    not verified. ``commands`` are taken as verified already.
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
    parsed: list[ControlCommand] = []
    times: list[int | None] = []
    invalid: list[JSONDict] = []
    if commands is None and control:
        if verify_control is None:
            raise ConfigError(
                f"run_pipeline: {len(control)} {control_topic} record(s) in the input, and no verify_control= to "
                "verify them with (canary.control.VerifyControl(); .insecure() for an unsigned lab topic): "
                "control records are applied only once verified"
            )
        parsed, times, invalid = verify_control(control)
    history = list(commands) if commands is not None else parsed
    warnings: list[PipelineWarning] = []
    if commands is not None and control:
        # Refusing would break a backtest that replaces a dump's control topic on purpose; dropping them
        # without a word hid that the input's own commands (a resume, a weight) played no part.
        warning = PipelineWarning(
            "control_records_ignored",
            f"{len(control)} {control_topic} record(s) in the input were not used: commands= was given and "
            f"replaces them ({_well_formed(control)} valid command(s), "
            f"{len(control) - _well_formed(control)} malformed among them)",
            len(control),
        )
        warnings.append(warning)
        log.warning("run_pipeline: %s", warning.message)
    rc = recompute(
        outcomes,
        history,
        command_times=None if commands is not None else times,
        settings=settings,
        rules_override=rules_override,
        horizon_ms=horizon_ms,
        judge_from_ms=judge_from_ms,
        judge_until_ms=judge_until_ms,
        apply_decisions=apply_decisions,
    )
    return PipelineResult(rc, history, invalid, other, warnings)
