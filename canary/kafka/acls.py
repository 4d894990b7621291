"""Least-privilege Kafka ACLs for canary's principals, declared once (docs/contracts.md, "Kafka ACLs").

Only operators and the worker (SLO agent) write the control topic; routers read requests and control and
write outcomes, state, replies and the requests DLQ; workers read outcomes, control and state and write
windows, partials, verdicts, checkpoints and the results DLQ. Describe is never granted on its own: Read and
Write imply it, so revoking a principal's Read on a topic also hides the topic's offsets from it (a router
then cannot confirm its control view and fails safe). DescribeConfigs lets each service verify the topics
it uses at start (services never create them on a secured cluster).

Applied with the admin principal through Kafka's CreateAcls / DescribeAcls / DeleteAcls APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest

from canary.errors import KafkaError
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics

Role = Literal["operator", "router", "worker"]
ROLES: tuple[Role, ...] = ("operator", "router", "worker")
DEFAULT_PRINCIPALS: Mapping[Role, str] = {role: f"User:{role}" for role in ROLES}

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
RESOURCE_TYPES = {"ANY": 1, "TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5}
OPERATIONS = {
    "ANY": 1,
    "ALL": 2,
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DELETE": 6,
    "ALTER": 7,
    "DESCRIBE": 8,
    "CLUSTER_ACTION": 9,
    "DESCRIBE_CONFIGS": 10,
    "ALTER_CONFIGS": 11,
    "IDEMPOTENT_WRITE": 12,
}
PATTERNS = {"ANY": 1, "MATCH": 2, "LITERAL": 3, "PREFIXED": 4}
PERMISSIONS = {"ANY": 1, "DENY": 2, "ALLOW": 3}
_NAMES = {
    "resource": {v: k for k, v in RESOURCE_TYPES.items()},
    "operation": {v: k for k, v in OPERATIONS.items()},
    "pattern": {v: k for k, v in PATTERNS.items()},
}

# Who may do what on each topic (a Topics attribute); every role listed also gets DESCRIBE_CONFIGS there.
TOPIC_ACCESS: Mapping[str, Mapping[Role, tuple[str, ...]]] = {
    "search_requests": {"router": ("READ",), "operator": ("WRITE",)},  # operator: `canary load`
    "search_results": {"router": ("WRITE",), "worker": ("READ",), "operator": ("READ",)},  # operator: replay
    "window_partials": {"worker": ("READ", "WRITE")},
    "windows": {"worker": ("READ", "WRITE"), "operator": ("READ",)},
    "verdicts": {"worker": ("WRITE",), "operator": ("READ",)},
    "control": {"operator": ("READ", "WRITE"), "worker": ("READ", "WRITE"), "router": ("READ",)},
    "state": {"router": ("WRITE",), "worker": ("READ",), "operator": ("READ",)},
    "window_state": {"worker": ("READ", "WRITE")},
    "responses": {"router": ("WRITE",)},
    "requests_dlq": {"router": ("WRITE",)},
    "results_dlq": {"worker": ("WRITE",), "operator": ("READ",)},
}

# Consumer groups (the worker's Faust app id and its stages share one prefix) and the worker's own
# Faust-internal topics (table changelog, assignor leader topic), which Faust creates itself.
ROUTER_GROUP = "canary-router"
WORKER_APP = "canary-streams"


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ALLOW rule: ``principal`` may ``operation`` on the resource, from any host."""

    principal: str
    resource_type: str
    pattern: str
    resource_name: str
    operation: str

    def describe(self) -> str:
        kind = self.resource_type.lower() + ("s prefixed" if self.pattern == "PREFIXED" else "")
        return f"{self.principal:16} {self.operation:16} {kind} {self.resource_name}"

    def to_dict(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "operation": self.operation,
            "resource_type": self.resource_type,
            "pattern": self.pattern,
            "resource_name": self.resource_name,
            "permission": "ALLOW",
            "host": "*",
        }


def topics_of(topics: Topics, role: Role) -> list[str]:
    """The topics ``role`` uses: what a service of that role verifies at start."""
    return [getattr(topics, attr) for attr, access in TOPIC_ACCESS.items() if role in access]


def acl_plan(topics: Topics, principals: Mapping[Role, str] = DEFAULT_PRINCIPALS) -> list[AclBinding]:
    """The complete least-privilege set for the topics under ``topics.prefix``."""
    plan: list[AclBinding] = []
    for attr, access in TOPIC_ACCESS.items():
        name = getattr(topics, attr)
        for role, operations in access.items():
            for operation in (*operations, "DESCRIBE_CONFIGS"):
                plan.append(AclBinding(principals[role], "TOPIC", "LITERAL", name, operation))
    prefix = topics.prefix
    plan.append(AclBinding(principals["router"], "GROUP", "LITERAL", f"{prefix}{ROUTER_GROUP}", "READ"))
    worker = principals["worker"]
    plan.append(AclBinding(worker, "GROUP", "PREFIXED", f"{prefix}{WORKER_APP}", "READ"))
    for operation in ("CREATE", "READ", "WRITE", "DESCRIBE_CONFIGS"):
        plan.append(AclBinding(worker, "TOPIC", "PREFIXED", f"{prefix}{WORKER_APP}-", operation))
    # The windows stage and merge step commit through one transactional producer per source partition, id
    # "<group>-<source topic>-<partition>" (docs/adr/0004): Write on those ids (it implies Describe).
    plan.append(AclBinding(worker, "TRANSACTIONAL_ID", "PREFIXED", f"{prefix}{WORKER_APP}", "WRITE"))
    return sorted(set(plan))


async def _send(admin: AIOKafkaAdminClient, request: Any) -> Any:
    # aiokafka has the ACL requests but no admin methods for them; any broker forwards to the controller.
    return await admin._client.send(admin._client.get_random_node(), request)


def _check(code: int, message: str | None, what: str) -> None:
    if code:
        hints = {
            31: " (is this the admin principal? ACLs need a super user or Alter on the cluster)",
            54: " (this cluster has no authorizer: start the local one with 'canary kafka start --secure')",
        }
        hint = hints.get(code, "")
        raise KafkaError(f"{what}: Kafka error {code} {message or ''}".rstrip() + hint)


class AclAdmin:
    """ACL operations with an admin client of ``cluster`` (use as ``async with``)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._admin = AIOKafkaAdminClient(**client_kwargs(cluster), request_timeout_ms=15000)

    async def __aenter__(self) -> AclAdmin:
        try:
            await self._admin.start()
        except Exception as exc:
            raise KafkaError(f"cannot reach Kafka at {self.cluster}: {exc}") from exc
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._admin.close()

    async def create(self, bindings: Iterable[AclBinding]) -> int:
        """Create every binding (creating an existing one changes nothing); returns how many were sent."""
        count = 0
        for b in bindings:
            request = CreateAclsRequest(
                RESOURCE_TYPES[b.resource_type],
                b.resource_name,
                PATTERNS[b.pattern],
                b.principal,
                "*",
                OPERATIONS[b.operation],
                PERMISSIONS["ALLOW"],
            )
            response = await _send(self._admin, request)
            for code, message in response.creation_responses:
                _check(code, message, f"cannot create ACL {b.describe()}")
            count += 1
        return count

    async def delete(self, bindings: Iterable[AclBinding]) -> int:
        """Delete exactly these bindings; returns how many matched."""
        deleted = 0
        for b in bindings:
            request = DeleteAclsRequest(
                RESOURCE_TYPES[b.resource_type],
                b.resource_name,
                PATTERNS[b.pattern],
                b.principal,
                "*",
                OPERATIONS[b.operation],
                PERMISSIONS["ALLOW"],
            )
            response = await _send(self._admin, request)
            for code, message, matching in response.filter_responses:
                _check(code, message, f"cannot delete ACL {b.describe()}")
                deleted += len(matching)
        return deleted

    async def list(self, principal: str) -> list[AclBinding]:
        """The ALLOW bindings of ``principal`` (from any host)."""
        request = DescribeAclsRequest(
            RESOURCE_TYPES["ANY"], None, PATTERNS["ANY"], principal, None, OPERATIONS["ANY"], PERMISSIONS["ALLOW"]
        )
        response = await _send(self._admin, request)
        _check(response.error_code, response.error_message, f"cannot list the ACLs of {principal}")
        found = []
        for resource in response.resources:
            resource_type, name = resource[0], resource[1]
            pattern = resource[2] if len(resource) > 3 else PATTERNS["LITERAL"]
            for acl in resource[-1]:
                found.append(
                    AclBinding(
                        acl[0],
                        _NAMES["resource"].get(resource_type, str(resource_type)),
                        _NAMES["pattern"].get(pattern, str(pattern)),
                        name,
                        _NAMES["operation"].get(acl[2], str(acl[2])),
                    )
                )
        return sorted(found)


@dataclass(frozen=True, slots=True)
class AclReport:
    applied: list[AclBinding]
    extra: list[AclBinding]  # held by canary's principals on this prefix but not in the plan
    pruned: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": [b.to_dict() for b in self.applied],
            "extra": [b.to_dict() for b in self.extra],
            "pruned": self.pruned,
        }


async def apply_acls_async(
    cluster: Cluster, topics: Topics, principals: Mapping[Role, str] = DEFAULT_PRINCIPALS, prune: bool = False
) -> AclReport:
    plan = acl_plan(topics, principals)
    async with AclAdmin(cluster) as admin:
        await admin.create(plan)
        held: list[AclBinding] = []
        for principal in sorted(set(principals.values())):
            held += await admin.list(principal)
        wanted = set(plan)
        # Only what lies under this deployment's prefix is ours to judge; other prefixes are other canaries.
        extra = [b for b in held if b not in wanted and b.resource_name.startswith(topics.prefix)]
        if prune and extra:
            await admin.delete(extra)
    return AclReport(plan, extra, prune and bool(extra))


def apply_acls(
    cluster: Cluster, topics: Topics, principals: Mapping[Role, str] = DEFAULT_PRINCIPALS, prune: bool = False
) -> AclReport:
    return asyncio.run(apply_acls_async(cluster, topics, principals, prune))
