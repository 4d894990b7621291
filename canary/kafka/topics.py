"""Every topic canary uses, declared once with its partitions, cleanup policy and retention.

``ensure_topics`` creates what is missing and verifies what exists: a topic that exists with other
settings is reported (``TopicMismatch``), never silently accepted, because a wrong cleanup policy on the
control topic would quietly delete the history that pointers and audits are rebuilt from. On a secured
cluster services only verify (``create=False``): creating topics is the admin's step, ``canary kafka topics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from canary.errors import KafkaError, TopicMismatch
from canary.kafka.clients import Cluster, client_kwargs

DAY_MS = 24 * 60 * 60 * 1000
CHECKPOINT_MAX_BYTES = 16 * 1024 * 1024
FOREVER = -1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str
    retention_ms: int
    purpose: str
    extra_config: tuple[tuple[str, str], ...] = ()

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        cfg.update(dict(self.extra_config))
        return cfg


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under an optional prefix (tests isolate themselves with one)."""

    prefix: str = ""
    search_requests: str = field(init=False)
    search_results: str = field(init=False)
    windows: str = field(init=False)
    window_partials: str = field(init=False)
    verdicts: str = field(init=False)
    control: str = field(init=False)
    state: str = field(init=False)
    window_state: str = field(init=False)
    responses: str = field(init=False)
    requests_dlq: str = field(init=False)
    results_dlq: str = field(init=False)

    def __post_init__(self) -> None:
        p = self.prefix
        names = {
            "search_requests": "search_requests",
            "search_results": "search_results",
            "windows": "canary_windows",
            "window_partials": "canary_window_partials",
            "verdicts": "canary_verdicts",
            "control": "canary_control",
            "state": "canary_state",
            "window_state": "canary_window_state",
            "responses": "search_responses",
            "requests_dlq": "search_requests.dlq",
            "results_dlq": "search_results.dlq",
        }
        for attr, base in names.items():
            object.__setattr__(self, attr, f"{p}{base}")

    def specs(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.search_requests, 3, "delete", 7 * DAY_MS, "queries in, produced by services/load tools"),
            # Six partitions: outcomes are spread by request id so that up to six workers share the windows
            # stage; each worker's share merges into one window per key in the merge step.
            TopicSpec(
                self.search_results, 6, "delete", 7 * DAY_MS, "one outcome per request + router watermarks, for replay"
            ),
            TopicSpec(self.window_partials, 3, "delete", DAY_MS, "partial windows per source partition + progress"),
            TopicSpec(self.windows, 3, "delete", 30 * DAY_MS, "finalized 5 s window results (merged)"),
            TopicSpec(self.verdicts, 3, "delete", 30 * DAY_MS, "judged candidate windows: verdicts with evidence"),
            # One partition: commands must be totally ordered for every router to converge on the same state.
            # Kept forever: pointers and audits are rebuilt from it. LogAppendTime: record timestamps are the
            # broker's, so a signed command's expiry is judged by a clock no producer can set (docs/contracts.md).
            TopicSpec(
                self.control,
                1,
                "delete",
                FOREVER,
                "control commands (start/rollback/promote …), signed",
                (("message.timestamp.type", "LogAppendTime"),),
            ),
            TopicSpec(self.state, 1, "compact", FOREVER, "latest applied state per router (compacted)"),
            # Checkpoints of the windows stage and the merge step, one key per (stage, source partition),
            # placed by key: a restore reads only the partitions holding its keys; compacted quickly so a
            # restarting worker reads little.
            TopicSpec(
                self.window_state,
                6,
                "compact",
                FOREVER,
                "windows stage checkpoints (compacted)",
                # A checkpoint holds a partition's open windows and remembered requests: allow 16 MiB.
                (
                    ("segment.ms", "60000"),
                    ("min.cleanable.dirty.ratio", "0.1"),
                    ("max.message.bytes", str(CHECKPOINT_MAX_BYTES)),
                ),
            ),
            TopicSpec(self.responses, 3, "delete", DAY_MS, "optional replies to search requests"),
            TopicSpec(self.requests_dlq, 1, "delete", 30 * DAY_MS, "malformed requests with the reason"),
            TopicSpec(self.results_dlq, 1, "delete", 30 * DAY_MS, "malformed or late outcomes with the reason"),
        ]


@dataclass(frozen=True, slots=True)
class TopicReport:
    name: str
    action: str  # "created" | "ok" | "mismatch" | "missing"
    problems: tuple[str, ...] = ()


def default_replication_factor(brokers: int) -> int:
    """Three copies where the cluster has three brokers or more, otherwise one per broker (1 locally)."""
    return max(1, min(3, brokers))


async def ensure_topics_async(
    bootstrap: Cluster,
    specs: Iterable[TopicSpec],
    *,
    create: bool = True,
    replication_factor: int | None = None,
) -> list[TopicReport]:
    """Create what is missing (``create``; else report it ``missing``) and verify what exists. A
    ``replication_factor`` given is also verified; None = :func:`default_replication_factor`."""
    specs = list(specs)
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap), request_timeout_ms=15000)
    try:
        await admin.start()
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        cluster = await admin.describe_cluster()
        existing = set(await admin.list_topics())
        replicas = replication_factor or default_replication_factor(len(cluster["brokers"]))
        reports: list[TopicReport] = []
        present = [s for s in specs if s.name in existing]
        for spec in (s for s in specs if s.name not in existing):
            if not create:
                reports.append(TopicReport(spec.name, "missing", ("does not exist (or is not visible to us)",)))
                continue
            try:
                response = await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replicas, topic_configs=spec.config())], timeout_ms=15000
                )
            except TopicAlreadyExistsError:
                present.append(spec)
                continue
            # aiokafka reports per-topic failures in the response instead of raising them.
            code, message = next(((e[1], e[2] if len(e) > 2 else "") for e in response.topic_errors), (0, ""))
            if code == TopicAlreadyExistsError.errno:
                # Created by someone else since list_topics (metadata lags creation): verify it like any other.
                present.append(spec)
            elif code:
                hint = " (creating topics is the admin principal's step)" if code == 29 else ""
                raise KafkaError(f"cannot create topic {spec.name}: error {code} {message or ''}".rstrip() + hint)
            else:
                reports.append(TopicReport(spec.name, "created"))
        if present:
            reports += await _verify(admin, present, replication_factor)
        return sorted(reports, key=lambda r: r.name)
    finally:
        await admin.close()


async def _verify(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], replication_factor: int | None
) -> list[TopicReport]:
    names = [s.name for s in specs]
    described = await admin.describe_topics(names)
    for _ in range(50):
        # A topic created a moment ago may have no partition leaders yet (metadata lags creation).
        if all(t["partitions"] and not t["error_code"] for t in described):
            break
        await asyncio.sleep(0.1)
        described = await admin.describe_topics(names)
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    copies = {t["topic"]: min((len(p["replicas"]) for p in t["partitions"]), default=0) for t in described}
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    actual: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            code, message, name = resource[0], resource[1], resource[3]
            if code:
                raise KafkaError(f"cannot describe the configuration of topic {name}: error {code} {message or ''}")
            actual[name] = {entry[0]: entry[1] for entry in resource[4]}
    reports = []
    for spec in specs:
        problems = []
        if partitions.get(spec.name) != spec.partitions:
            problems.append(f"partitions = {partitions.get(spec.name)}, expected {spec.partitions}")
        if replication_factor is not None and copies.get(spec.name) != replication_factor:
            problems.append(f"replication factor = {copies.get(spec.name)}, expected {replication_factor}")
        for key, want in spec.config().items():
            have = actual.get(spec.name, {}).get(key)
            if have != want:
                problems.append(f"{key} = {have}, expected {want}")
        reports.append(TopicReport(spec.name, "mismatch" if problems else "ok", tuple(problems)))
    return reports


def ensure_topics(
    bootstrap: Cluster,
    topics: Topics | Iterable[TopicSpec],
    strict: bool = True,
    *,
    create: bool = True,
    replication_factor: int | None = None,
) -> list[TopicReport]:
    """Create (``create``) or only verify the topics; with ``strict`` a mismatch or a missing topic raises."""
    specs = topics.specs() if isinstance(topics, Topics) else list(topics)
    reports = asyncio.run(ensure_topics_async(bootstrap, specs, create=create, replication_factor=replication_factor))
    missing = [r.name for r in reports if r.action == "missing"]
    if missing and strict:
        raise KafkaError(
            f"topics missing on {bootstrap}: {', '.join(missing)}. Services only verify topics on a secured "
            "cluster: an admin creates them with 'canary kafka topics' (and grants access with 'canary kafka acls')."
        )
    bad = [r for r in reports if r.action == "mismatch"]
    if bad and strict:
        lines = [f"  {r.name}: " + "; ".join(r.problems) for r in bad]
        raise TopicMismatch(
            "topics exist with settings other than declared (fix or delete them, canary will not "
            "silently accept them):\n" + "\n".join(lines)
        )
    return reports


def cluster_replication_factor(bootstrap: Cluster, configured: int | None) -> int:
    """The replication factor topics get on this cluster: ``configured``, else min(3, brokers)."""
    if configured is not None:
        return configured

    async def brokers() -> int:
        admin = AIOKafkaAdminClient(**client_kwargs(bootstrap), request_timeout_ms=15000)
        try:
            await admin.start()
            return len((await admin.describe_cluster())["brokers"])
        except Exception as exc:
            raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        finally:
            await admin.close()

    return default_replication_factor(asyncio.run(brokers()))


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, required: bool = True) -> list[TopicPartition]:
    """The partitions of ``topic``, also for a topic the consumer has not subscribed to or been assigned."""
    parts = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + (10.0 if required else 0.0)  # a loaded cluster may take seconds
    while not parts:
        # The client only tracks metadata of assigned topics; ask the cluster for everything. A topic
        # created a moment ago may not be in the answering broker's metadata yet: ask again briefly.
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic) or set()
        if parts or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    if not parts and required:
        raise KafkaError(f"topic {topic} does not exist; run 'canary kafka topics'")
    return [TopicPartition(topic, p) for p in sorted(parts)]
