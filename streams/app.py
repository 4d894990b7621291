"""The Faust app: search_results → 5 s windows → SLO agent → control topic; control/state → audit.log.

Everything decided here is decided by the Kafka-free core (``canary.core``). Window finalization does not
use Faust's ``on_window_close`` (a 30 s wall-clock cleanup timer that loses callbacks): each source
partition has a :class:`WindowFinalizer` driven by event time, with the processing-time fallback built
into its watermark, checked after every fetch (≤ 100 ms).

The windows stage (``streams/windowing.py``: outcomes → partial windows per source partition) and the merge
step (``streams/merging.py``: partials → one window per key) run inside this worker as micro-batch
consumers, because
Faust's per-event delivery is an order of magnitude too slow for the outcome stream; the SLO and audit
agents are Faust agents (``at_least_once``, concurrency 1) over low-rate topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faust
import msgspec.structs
import orjson
from aiokafka.errors import KafkaError as AIOKafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT, StreamT

from canary.alerts import AlertDispatcher, alert_event
from canary.config.environments import AlertTarget
from canary.control.audit import invalid_control_event, outcome_event, state_event
from canary.core import jsonio, wire
from canary.core.custom import with_external
from canary.core.judge import Judgement
from canary.core.merge import EncodedPartials
from canary.core.models import RouterState, WindowResult
from canary.core.outages import CONTEXT_KEY, OutageLog
from canary.kafka.clients import Cluster, faust_broker_url, faust_credentials
from canary.kafka.topics import Topics
from canary.observability.logs import deployment_context, set_deployment_provider
from canary.observability.metrics import WorkerMetrics
from canary.observability.promql import PrometheusSource
from canary.observability.server import MetricsEndpoint, MetricsServer
from canary.pipeline.decisions import DecisionStep
from canary.pipeline.settings import DEFAULTS
from canary.security import ControlSecurity
from canary.settings import NativeMode, load_settings
from streams.audit import AuditLog
from streams.brokerwatch import BrokerWatch
from streams.merging import MergeStage
from streams.registry import DeploymentRegistry
from streams.windowing import WindowingStage

log = logging.getLogger("canary.streams")
STREAM_BUFFER_EVENTS = 256
COMMAND_RETRY_S = (0.5, 1.0, 2.0, 5.0)
rejected_log = logging.getLogger("canary.streams.rejected.agents")  # rate-limited


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust reads read_committed only with its own exactly-once processing; its agents here read
        # canary_windows, which the merge step writes in transactions (docs/adr/0004-*.md). Set before start().
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose agents' consumer reads ``read_committed`` (what
    canary.kafka.clients.consumer_kwargs gives every other consumer of canary)."""

    Consumer = _ReadCommittedConsumer


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    bootstrap: Cluster  # with its SASL/SSL settings: every client of the worker, Faust's too, uses them
    topics: Topics
    audit_log: Path
    data_dir: Path
    app_id: str = "canary-streams"
    window_ms: int = DEFAULTS.window_ms
    grace_ms: int = DEFAULTS.grace_ms
    idle_windows: int = DEFAULTS.idle_windows
    partitions: int = 3
    # A SIGKILLed worker keeps its partitions until the broker expires its session; 60 s (Faust's
    # default) would delay a rollback by a minute after a crash. With a stable instance id (static
    # membership) a restarted worker takes its partitions back at once.
    session_timeout: float = 10.0
    instance_id: str | None = None
    # Trusted keys for verifying the control topic and the worker key the SLO agent signs with;
    # None = what the process settings say (ControlSecurity.worker(load_settings())).
    security: ControlSecurity | None = None
    # Webhooks of the worker's environment (canary.alerts); none without an environment or alerts.
    environment: str | None = None
    alerts: tuple[AlertTarget, ...] = ()
    alert_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Where external metrics are queried (canary.observability.promql); None: they are missing.
    prometheus_url: str | None = None
    # Of the topics Faust creates itself (the table changelog, the assignor's leader topic).
    replication_factor: int = 1
    # /metrics, /healthz, /readyz (port 0: none).
    metrics: MetricsEndpoint = field(default_factory=MetricsEndpoint)
    # The windows stage's native batch decoder (Settings.native, CANARY_NATIVE).
    native: NativeMode = "auto"


@dataclass
class StreamsStats:
    rollbacks_issued: int = 0
    pauses_issued: int = 0
    rollout_commands_issued: int = 0  # set_weight / promote / gate and expiry pauses of rollout plans
    decisions_not_issued: int = 0
    judgements: int = 0
    judgements_noted: int = 0  # judgements carrying a broker_outage note
    audit_lines: int = 0
    alerts_submitted: int = 0


class CanaryStreams:
    """Builds and wires the Faust app for one worker process."""

    def __init__(self, config: StreamsConfig) -> None:
        self.config = config
        self.stats = StreamsStats()
        self.metrics = WorkerMetrics()
        topics = config.topics
        self.app = faust.App(
            f"{topics.prefix}{config.app_id}",
            broker=faust_broker_url(config.bootstrap),
            broker_credentials=faust_credentials(config.bootstrap),
            store="memory://",
            processing_guarantee="at_least_once",
            topic_partitions=config.partitions,
            topic_replication_factor=config.replication_factor,
            web_enabled=False,
            datadir=str(config.data_dir),
            broker_commit_interval=1.0,
            producer_linger=0.0,
            stream_wait_empty=False,
            # Events an agent's stream holds ahead of the agent. Faust's 4096 is for high-rate streams; these
            # agents read low-rate topics, and a topic anyone may write can fill the buffer with 1 MB records
            # (a junk flood on the control topic held ~80 MB here). Measured by bench/bench_hostile.py.
            stream_buffer_maxsize=STREAM_BUFFER_EVENTS,
            table_cleanup_interval=3600.0,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=config.session_timeout,
            broker_heartbeat_interval=1.0,
            consumer_group_instance_id=config.instance_id,
        )
        app = self.app
        # Before anything asks the app for its transport (declaring a topic does).
        app.transport = _ReadCommittedTransport(app.conf.broker_consumer, app)
        self.security = config.security or ControlSecurity.worker(load_settings())
        # ConfigError (exit 2) if the worker key is missing: a worker that could not sign would decide
        # rollbacks the routers refuse.
        self.signer = self.security.signer(topics.control)
        self.security.warn_if_insecure("worker")
        self.registry = DeploymentRegistry(
            config.bootstrap, topics.control, verifier=self.security.verifier(topics.control), metrics=self.metrics
        )
        self.audit = AuditLog(config.audit_log, on_write_failure=self.metrics.audit_write_failures.inc)
        self.windows_topic = self._raw_topic(topics.windows, config.partitions)
        self.verdicts_topic = self._raw_topic(topics.verdicts, config.partitions)
        self.decisions = DecisionStep(self.registry.policies, lambda: self.registry.ledger)
        self.prometheus = PrometheusSource(config.prometheus_url)
        self.alerts = (
            AlertDispatcher(config.alerts, config.alert_secrets, audit=self.audit.append_durably)
            if config.alerts
            else None
        )
        # Broker outages this worker lives through, noted on the judgements of the windows they touch.
        self.outages = OutageLog()
        self.brokerwatch = BrokerWatch(config.bootstrap, topics.control, self.outages)
        # last_good's p95 per (deployment, window start), for the outage notes of candidate judgements.
        self._last_good_p95: OrderedDict[tuple[str, int], float | None] = OrderedDict()
        # deployment → the state bytes this agent last wrote to slo_state. While the table still holds that very
        # object, self.decisions holds the judge that wrote it, and restoring it again would only cost a decode
        # per window (at 41 window keys, ~3 % of the worker); recovery or a rebalance puts a new object there.
        self._written: dict[str, Any] = {}
        self.control_topic = self._raw_topic(topics.control, 1)
        self.state_topic = self._raw_topic(topics.state, 1)
        self.dead_letters_topic = self._raw_topic(topics.results_dlq, 1)
        # Each deployment's judge state as JSON bytes, written by this agent after every window (state_json: each
        # window statistics encoded once, not the whole state by Faust's json codec every time) — JSON as Faust's
        # codec wrote it, so a state written before reads, except that a NaN or an infinity is now the standard
        # library's literal where Faust's (orjson) wrote null. (value_type=bytes: Faust's raw codec for the values.)
        self.slo_state = app.Table("slo-state", partitions=config.partitions, default=None, value_type=bytes)
        written = EncodedPartials()  # the windows stage's partials, read by this worker's merge step undecoded
        self.windowing = WindowingStage(
            config.bootstrap,
            topics,
            self.registry,
            group_id=f"{topics.prefix}{config.app_id}-windows",
            window_ms=config.window_ms,
            grace_ms=config.grace_ms,
            idle_windows=config.idle_windows,
            session_timeout_ms=int(config.session_timeout * 1000),
            instance_id=f"{config.instance_id}-windows" if config.instance_id else None,
            metrics=self.metrics,
            native=config.native,
            written=written,
        )
        self.merging = MergeStage(
            config.bootstrap,
            topics,
            group_id=f"{topics.prefix}{config.app_id}-merge",
            session_timeout_ms=int(config.session_timeout * 1000),
            instance_id=f"{config.instance_id}-merge" if config.instance_id else None,
            metrics=self.metrics,
            written=written,
        )
        stuck = self.audit
        self.metrics.audit_stuck.set_function(
            lambda: 0.0 if stuck.stuck_since is None else time.monotonic() - stuck.stuck_since
        )
        self.metrics.control_lag.set_function(self.registry.control_lag)
        set_deployment_provider(self._current_deployment)
        self.metrics_server = MetricsServer(config.metrics, self.metrics.registry, self.readiness)

        app.agent(self.windows_topic, name="slo", concurrency=1)(self._slo_agent)
        app.agent(self.control_topic, name="audit-control", concurrency=1)(self._audit_control_agent)
        app.agent(self.state_topic, name="audit-state", concurrency=1)(self._audit_state_agent)
        app.task(self._run_registry)
        app.task(self._run_windowing)
        app.task(self._run_merging)
        if self.alerts is not None:
            app.task(self._run_alerts)
        app.task(self._run_brokerwatch)
        if config.metrics.enabled:
            app.task(self._run_metrics_server)

    def _raw_topic(self, name: str, partitions: int) -> faust.TopicT:
        # Declared topics are created by `canary kafka topics`; Faust must not re-declare them differently.
        return self.app.topic(name, partitions=partitions, key_serializer="raw", value_serializer="raw")

    # -- observability -------------------------------------------------------------------------------------
    def _current_deployment(self) -> str | None:
        dep = self.registry.ledger.current or self.registry.ledger.latest
        return dep.deployment_id if dep is not None else None

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """/readyz: control topic read to its end recently, both stages assigned and polling, their producers
        alive."""
        lag = self.registry.control_lag()
        checks = {
            "control_fresh": (
                self.registry.caught_up.is_set() and lag <= self.registry.stale_after_s,
                f"control view confirmed {lag:.1f} s ago",
            )
        }
        for stage in (self.windowing, self.merging):
            parts = sorted(stage.states)
            checks[f"{stage.name}_assigned"] = (bool(parts), f"partitions {parts}")
            checks[f"{stage.name}_consuming"] = stage.consuming()
            problem = stage.producer_problem()
            checks[f"{stage.name}_producer"] = (problem is None, problem or "alive")
        return checks

    async def _run_metrics_server(self) -> None:
        await self.metrics_server.start()
        try:
            await asyncio.Event().wait()  # served until the app stops this task
        finally:
            await self.metrics_server.stop()

    # -- deployments -----------------------------------------------------------------------------------------
    async def _run_registry(self) -> None:
        await self.registry.run()

    # -- windows -------------------------------------------------------------------------------------------
    async def _run_windowing(self) -> None:
        await self._essential("windows stage", self.windowing.run)

    async def _run_alerts(self) -> None:
        assert self.alerts is not None
        try:
            await self.alerts.run()
        except Exception:  # alerts are not essential: decisions go on, loudly
            log.exception("alert dispatcher failed; no more alerts from this worker")

    async def _run_brokerwatch(self) -> None:
        try:
            await self.brokerwatch.run()
        except Exception:  # the notes are informational: judging goes on without them, loudly
            log.exception("broker watch failed; judgements carry no broker outage notes from now on")

    async def _run_merging(self) -> None:
        await self._essential("merge step", self.merging.run)

    async def _essential(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
        except Exception as exc:
            # Without this stage the worker is useless: fail loudly instead of idling.
            log.exception("%s failed", what)
            await self.app.crash(exc)
            raise

    # -- SLO -----------------------------------------------------------------------------------------------
    async def _slo_agent(self, stream: StreamT[bytes]) -> None:
        await self.registry.caught_up.wait()
        async for event in stream.events():
            try:
                window = WindowResult.from_dict(wire.decode_object(event.value, wire.WINDOW))
            except Exception as exc:  # poison: dead-lettered with its code, never stops the agent
                rejected = wire.rejection_of(exc)
                await self._dead_letter(self.config.topics.windows, event, rejected.code, rejected.detail)
                continue
            try:
                await self._judge_window(window)
            except AIOKafkaError:
                raise  # a delivery problem, not the record's: the event is not acknowledged, so it comes again
            except Exception as exc:  # the judge could not take this window: set aside with the error, go on
                log.exception("SLO agent: window %s quarantined", window.window_id)
                detail = f"judging raised {type(exc).__name__}: {exc}"
                await self._dead_letter(self.config.topics.windows, event, "quarantined", detail)

    async def _dead_letter(self, topic: str, event: EventT[bytes], reason: wire.DeadLetterReason, detail: str) -> None:
        """A record of a topic the worker reads (windows, router states) that it cannot use: to the worker's
        dead-letter topic with the reason, counted; the agent goes on."""
        message = event.message
        dead = wire.dead_letter(
            reason, detail, source_topic=topic, partition=message.partition, offset=message.offset, raw=event.value
        )
        await self.dead_letters_topic.send(value=orjson.dumps(dead))
        self.metrics.dlq.labels(reason).inc()
        rejected_log.warning(
            "dead-lettered %s record at %s/%s: %s: %s", topic, message.partition, message.offset, reason, detail
        )

    async def _judge_window(self, window: WindowResult) -> None:
        """Every decision is the core's (canary.pipeline.decisions); this loop only moves records."""
        dep_id = window.deployment_id
        if dep_id is None or window.arm not in ("candidate", "last_good"):
            return
        with deployment_context(dep_id):
            await self._judge_window_of(dep_id, window)

    async def _judge_window_of(self, dep_id: str, window: WindowResult) -> None:
        stored = self.slo_state.get(dep_id)
        # Popped until written again: a window that raises half-way is followed by a restore.
        if stored is None or stored is not self._written.pop(dep_id, None):
            try:
                state = jsonio.loads(stored) if isinstance(stored, bytes | str) else None
                self.decisions.restore(dep_id, state if isinstance(state, dict) else None)
            except Exception as exc:  # an unreadable state must not stop judging: start the pool afresh
                log.error("deployment %s: unreadable judge state (%s); judging from this window on", dep_id, exc)
        now = now_ms()
        if window.arm == "last_good":
            self._last_good_p95[(dep_id, window.window_start_ms)] = window.p95_ms
            while len(self._last_good_p95) > 256:
                self._last_good_p95.popitem(last=False)
        window = await self._with_external(dep_id, window)
        judgements, issues = self.decisions.observe(window, now)
        late_judgements, late_issues = self.decisions.tick(now, dep_id)
        judgements = [self._noted(j) for j in judgements + late_judgements]
        issues += late_issues
        notes = {j.window_id: j.context for j in judgements if j.context is not None}
        for issue in issues:
            if issue.issued and issue.command is not None:
                cmd = issue.command
                note = notes.get(issue.decision.window_id)
                if note is not None:  # the decision's own evidence says the outage was there too
                    cmd = msgspec.structs.replace(cmd, evidence={**(cmd.evidence or {}), "context": note})
                # Signed with the worker key; signing only adds fields (command_id stays the pipeline's).
                payload = self.signer.sign_command(cmd) if self.signer is not None else cmd.to_dict()
                await self._send_command(dep_id, cmd.command_id, json.dumps(payload).encode())
                if cmd.type == "rollback":
                    self.stats.rollbacks_issued += 1
                elif issue.decision.rule == "rollout":
                    self.stats.rollout_commands_issued += 1
                else:
                    self.stats.pauses_issued += 1
                self.metrics.decisions.labels(cmd.type, "true").inc()
                log.warning("%s %s: %s", cmd.type.upper(), dep_id, issue.decision.reason)
            else:
                self.stats.decisions_not_issued += 1
                self.metrics.decisions.labels(issue.decision.type, "false").inc()
                log.warning("%s for %s decided but %s", issue.decision.type, dep_id, issue.note)
        for j in judgements:
            await self.verdicts_topic.send(key=dep_id.encode(), value=jsonio.dumps_as_json_would(j.to_dict()))
            self.stats.judgements += 1
            self.metrics.judgements.inc()
            for verdict in j.window.verdicts:
                self.metrics.verdicts.labels(verdict.outcome).inc()
        # As the standard library writes it (a judge's evidence may hold an infinity).
        encoded = self.decisions.state_json(dep_id)
        if encoded is not None:
            self.slo_state[dep_id] = encoded
            self._written[dep_id] = encoded

    async def _with_external(self, dep_id: str, window: WindowResult) -> WindowResult:
        """A candidate window with its external metrics' values written in, queried now (bounded by each
        metric's timeout); the judgement on canary_verdicts carries them, so a reader sees what was judged."""
        dep = self.registry.ledger.deployments.get(dep_id)
        if window.arm != "candidate" or dep is None or not dep.live:  # an ended canary's windows decide nothing
            return window
        external = [m for m in self.registry.policies.policy(dep_id).custom_metrics if m.external]
        if not external:
            return window
        values = await self.prometheus.values(
            external, dep_id, window.arm, window.config_name, window.window_start_ms, window.window_end_ms
        )
        return msgspec.structs.replace(window, stats=with_external(window.stats, values, external))

    async def _send_command(self, dep_id: str, command_id: str, value: bytes) -> None:
        """Until the broker has it: a decided rollback must go out however long the broker is away (raising
        would crash the agent, and Faust restarts it past the window that decided). Faust's producer is not
        idempotent (no transactions), so it never meets OutOfOrderSequenceNumber; a repeat after an ack that
        was lost is the same command id, which every reader applies once."""
        attempt = 0
        while True:
            try:
                fut = await self.control_topic.send(key=dep_id.encode(), value=value)
                await fut
                if attempt:
                    log.warning("command %s on the control topic after %d failed attempt(s)", command_id, attempt)
                return
            except Exception as exc:
                attempt += 1
                if attempt & (attempt - 1) == 0:  # 1, 2, 4, 8, …: bounded logs
                    log.error(
                        "command %s not delivered (attempt %d: %s: %s); sending it again",
                        command_id,
                        attempt,
                        type(exc).__name__,
                        exc,
                    )
                await asyncio.sleep(COMMAND_RETRY_S[min(attempt - 1, len(COMMAND_RETRY_S) - 1)])

    def _noted(self, j: Judgement) -> Judgement:
        """``j`` with a broker_outage note when its window overlaps an outage this worker saw (or the drain)."""
        w = j.window
        note = self.outages.note(
            w.window_start_ms,
            w.window_end_ms,
            w.p95_ms,
            self._last_good_p95.get((w.deployment_id or "-", w.window_start_ms)),
        )
        if note is None:
            return j
        self.stats.judgements_noted += 1
        return replace(j, context={**(j.context or {}), CONTEXT_KEY: note.to_dict()})

    # -- audit ----------------------------------------------------------------------------------------------
    async def _audit_control_agent(self, stream: StreamT[bytes]) -> None:
        """Audits every control record with what the registry made of it (the routers fold the same way):
        applied → success; rejected by verification or refused by the ledger → success false and why.
        Poison records are audited too. The event is held (not acknowledged) until its line is on disk."""
        async for event in stream.events():
            offset = event.message.offset
            outcome = await self.registry.outcome_at(offset)
            if outcome is None:  # not kept (or not there as the registry read it): verified again
                ts = event.message.timestamp
                appended = int(ts * 1000) if ts is not None else None
                outcome = self.registry.recheck(offset, event.value, appended)
            try:
                entry = outcome_event(outcome, event.value)
            except Exception as exc:  # never: but a line that cannot be built must not stop the audit
                log.exception("audit: control record at offset %s: its audit line could not be built", offset)
                entry = invalid_control_event(
                    offset, event.value, f"unauditable ({type(exc).__name__})", "unverifiable", outcome.appended_at_ms
                )
            with deployment_context(entry.get("deployment_id")):
                if await self.audit.append_durably(entry):
                    self.stats.audit_lines += 1
                    self.metrics.audit_lines.labels("control").inc()
            cmd = outcome.verdict.command
            if self.alerts is not None and cmd is not None and outcome.verdict.accepted and outcome.applied:
                dep = self.registry.ledger.deployments.get(cmd.deployment_id)
                try:
                    alert = alert_event(cmd, self.config.environment, dep.candidate.name if dep else None)
                except Exception:  # an alert is a courtesy: a command it cannot describe still goes on
                    log.exception("alert for control offset %s could not be built", offset)
                    alert = None
                if alert is not None:
                    self.alerts.submit(alert)  # never blocks: delivery runs off this path
                    self.stats.alerts_submitted += 1

    async def _audit_state_agent(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            if event.value is None:
                continue  # compaction tombstone
            try:
                state = RouterState.from_dict(wire.decode_object(event.value, wire.ROUTER_STATE))
            except Exception as exc:  # poison: dead-lettered with its code, never stops the agent
                rejected = wire.rejection_of(exc)
                await self._dead_letter(self.config.topics.state, event, rejected.code, rejected.detail)
                continue
            if state.heartbeat:
                continue
            entry = state_event(state)
            with deployment_context(state.deployment_id):
                if await self.audit.append_durably(entry):
                    self.stats.audit_lines += 1
                    self.metrics.audit_lines.labels("state").inc()
