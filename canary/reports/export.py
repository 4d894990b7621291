"""Reading a deployment off the topics and exporting it: the only module of ``canary.reports`` that talks to
Kafka. Everything it renders goes through the Kafka-free :mod:`model`, :mod:`files` and :mod:`html`.

``audit.log`` source, first match wins: an explicit file; an ``audit.log`` already in the output directory
(the worker's own log when it writes there, as the demo does — kept untouched); the worker's default
``reports/canary/audit.log``; otherwise rebuilt from the control and state topics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canary.control import ControlHistory, fold_records, read_log, read_topic, resolve, verifier_for
from canary.core import wire
from canary.core.judge import Judgement
from canary.core.models import WindowResult
from canary.core.outages import BrokerOutage
from canary.errors import CanaryError, ConfigError, KafkaError
from canary.kafka.clients import Cluster, consumer_kwargs
from canary.reports.files import AUDIT_LOG, export_all, read_audit_file, rebuild_audit
from canary.reports.model import DeploymentReport, build_report, outages_of_judgements
from canary.security import CommandVerifier
from canary.settings import Settings


@dataclass
class TopicData:
    # The control topic, verified as routers and workers verify it (canary.control): ``commands`` are the
    # records verification accepted (raw objects, in topic order), ``command_times`` their append times;
    # ``control`` what became of every record, ``control_values`` the records themselves.
    commands: list[dict[str, Any]] = field(default_factory=list)
    command_times: list[int | None] = field(default_factory=list)
    control: ControlHistory | None = None
    control_values: list[bytes | None] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    invalid_windows: int = 0
    outages: tuple[BrokerOutage, ...] = ()  # noted on the judgements (canary.core.outages)


async def read_topics_async(
    bootstrap: Cluster,
    prefix: str,
    *,
    control: bool = False,
    state: bool = False,
    windows: bool = False,
    verifier: CommandVerifier | None = None,
) -> TopicData:
    """``verifier``: for the control topic (None: the process settings' — trusted keys, secure unless
    ``CANARY_INSECURE_CONTROL``)."""
    from aiokafka import AIOKafkaConsumer

    from canary.kafka.topics import Topics

    topics = Topics(prefix)
    consumer = AIOKafkaConsumer(**consumer_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    try:
        await asyncio.wait_for(consumer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    out = TopicData()
    try:
        if control:
            log = await read_log(consumer, topics.control)
            out.control_values = [r.value for r in log]
            out.control = fold_records(
                out.control_values,
                resolve(verifier, topics.control),
                [r.timestamp for r in log],
                [r.offset for r in log],
            )
            accepted = [i for i, o in enumerate(out.control.outcomes) if o.verdict.accepted]
            out.commands = [wire.as_json(log[i].value, wire.CONTROL) for i in accepted]
            out.command_times = [log[i].timestamp for i in accepted]
        if state:
            out.states = await read_topic(consumer, topics.state)
        raw_windows = await read_topic(consumer, topics.windows, limits=wire.WINDOW, tombstones=True) if windows else []
        raw_verdicts = (
            await read_topic(consumer, topics.verdicts, limits=wire.JUDGEMENT, tombstones=True) if windows else []
        )
    finally:
        await consumer.stop()
    judged: dict[str, WindowResult] = {}
    judgements = []
    for raw in raw_verdicts:
        try:
            judgement = Judgement.from_dict(raw)
        except CanaryError:
            out.invalid_windows += 1
            continue
        judgements.append(judgement)
        judged.setdefault(judgement.window.window_id, judgement.window)
    out.outages = outages_of_judgements(judgements)
    for raw in raw_windows:
        try:
            window = WindowResult.from_dict(raw)
            # A judged candidate window (verdicts with evidence) replaces its unjudged copy.
            out.windows.append(judged.get(window.window_id, window))
        except CanaryError:
            out.invalid_windows += 1
    return out


def read_topics(settings: Settings, *, control: bool = False, state: bool = False, windows: bool = False) -> TopicData:
    """Every record of the chosen topics, from the beginning (KafkaError if the cluster does not answer).
    The control topic is verified with the settings' trusted keys, as the services verify it
    (``settings.insecure_control``: the CLI's ``--insecure``, for unsigned lab topics)."""
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics

    bootstrap = require_kafka(settings)
    verifier = verifier_for(Topics(settings.topic_prefix).control, settings) if control else None
    return asyncio.run(
        read_topics_async(
            bootstrap, settings.topic_prefix, control=control, state=state, windows=windows, verifier=verifier
        )
    )


def audit_source_file(settings: Settings, output: Path | None = None, audit_file: Path | None = None) -> Path | None:
    for candidate in (audit_file, output / AUDIT_LOG if output else None, settings.reports_dir / AUDIT_LOG):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def load_audit(
    settings: Settings,
    *,
    output: Path | None = None,
    audit_file: Path | None = None,
    from_topics: bool = False,
    control: TopicData | None = None,
) -> tuple[list[dict[str, Any]], str, Path | None]:
    """Audit events, a description of their source, and the source file (None when rebuilt from topics).
    Rebuilt, each control record gets the line the worker's audit agent writes for it — ``success: false``
    with the reason for one verification rejected or the ledger refused. ``control``: the control topic
    already read (and verified) by the caller."""
    source = None if from_topics else audit_source_file(settings, output, audit_file)
    if source is not None:
        return read_audit_file(source), f"file:{source}", source
    fresh = read_topics(settings, control=control is None or control.control is None, state=True)
    folded = control if control is not None and control.control is not None else fresh
    assert folded.control is not None
    return rebuild_audit(folded.control, fresh.states, folded.control_values), "topics", None


@dataclass(frozen=True)
class ExportResult:
    report: DeploymentReport
    paths: dict[str, Path]
    audit_events: int
    audit_source: str
    invalid_windows: int


def export_deployment(
    settings: Settings,
    output: Path,
    deployment_id: str | None = None,
    *,
    audit_file: Path | None = None,
    from_topics: bool = False,
) -> ExportResult:
    """Write canary_result.json, metrics.json, audit.log and report.html of one deployment (default: the
    latest started) into ``output``. DeploymentError if there is none, KafkaError if Kafka is down."""
    data = read_topics(settings, control=True, windows=True)  # the control topic verified: only its accepted commands
    now = int(time.time() * 1000)
    report = build_report(
        commands=data.commands,
        command_times=data.command_times,
        windows=data.windows,
        deployment_id=deployment_id,
        now_ms=now,
        outages=data.outages,
    )
    events, source, source_path = load_audit(
        settings, output=output, audit_file=audit_file, from_topics=from_topics, control=data
    )
    try:
        paths = export_all(report, output, events, audit_source_file=source_path, now_ms=now)
    except OSError as exc:
        raise ConfigError(f"output directory {output}: cannot write the report files: {exc}") from exc
    return ExportResult(report, paths, len(events), source, data.invalid_windows)


def export_reports(settings: Settings, output: Path, deployment_id: str | None = None) -> list[Path]:
    """The files written (see :func:`export_deployment`)."""
    return list(export_deployment(settings, output, deployment_id).paths.values())
