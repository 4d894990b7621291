"""The one place Kafka clients get their connection settings: address, SASL and SSL.

Every aiokafka producer, consumer and admin client in canary is built as
``AIOKafkaProducer(**client_kwargs(cluster), ...)`` and the Faust app takes ``faust_credentials(cluster)``,
so no client can be forgotten when a cluster needs authentication (a test checks the call sites).
A bare address string means an unauthenticated (PLAINTEXT) cluster: the local test broker, most tests.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from canary.settings import KafkaSecurity, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Where the cluster is and how this process authenticates to it. Prints as its address only."""

    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __str__(self) -> str:
        return self.bootstrap

    def describe(self) -> str:
        return f"{self.bootstrap} ({self.security.describe()})"


# What functions that talk to Kafka accept: a connection, or a bare address of a PLAINTEXT cluster.
Cluster = str | KafkaConnection


def as_connection(cluster: Cluster) -> KafkaConnection:
    return cluster if isinstance(cluster, KafkaConnection) else KafkaConnection(cluster)


def connection_for(settings: Settings, bootstrap: str | None = None) -> KafkaConnection:
    """The connection these settings describe (``bootstrap`` overrides the address, e.g. a started broker)."""
    return KafkaConnection(bootstrap or settings.effective_bootstrap, settings.kafka_security)


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """A verifying TLS context (hostname checked; the system CAs unless a CA file is given)."""
    from aiokafka.helpers import create_ssl_context

    context: ssl.SSLContext = create_ssl_context(
        cafile=security.ssl_cafile,
        certfile=security.ssl_certfile,
        keyfile=security.ssl_keyfile,
        password=security.ssl_key_password,
    )
    return context


def client_kwargs(cluster: Cluster) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of canary starts from."""
    conn = as_connection(cluster)
    security = conn.security
    kwargs: dict[str, Any] = {"bootstrap_servers": conn.bootstrap, "security_protocol": security.protocol}
    if security.uses_sasl:
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.sasl_username
        kwargs["sasl_plain_password"] = security.sasl_password
    if security.uses_ssl:
        kwargs["ssl_context"] = ssl_context(security)
    return kwargs


def faust_broker_url(cluster: Cluster) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in as_connection(cluster).bootstrap.split(","))


def faust_credentials(cluster: Cluster) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same settings (None: PLAINTEXT)."""
    security = as_connection(cluster).security
    if not security.authenticated:
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    if security.uses_sasl:
        return SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            mechanism=security.sasl_mechanism,
            ssl_context=ssl_context(security) if security.uses_ssl else None,
        )
    return SSLCredentials(ssl_context(security))


def consumer_kwargs(cluster: Cluster) -> dict[str, Any]:
    """:func:`client_kwargs` for a consumer: every consumer of canary reads ``read_committed``.

    The windows stage and the merge step write in Kafka transactions (docs/adr/0004-*.md): what an aborted
    transaction wrote stays in the log, and only ``read_committed`` hides it. Set here, once, so no reader of
    their topics can forget it; on topics nobody writes transactionally it changes nothing."""
    return {**client_kwargs(cluster), "isolation_level": "read_committed"}
