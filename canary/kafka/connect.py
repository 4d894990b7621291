"""Resolve the Kafka cluster for a command: one rule everywhere.

The connection returned carries the SASL/SSL settings (canary.kafka.clients); every client built from it
authenticates the same way.
"""

from __future__ import annotations

from canary.errors import KafkaError
from canary.kafka.clients import KafkaConnection, connection_for
from canary.kafka.probe import metadata_problem
from canary.settings import Settings


def require_kafka(settings: Settings, timeout: float = 5.0) -> KafkaConnection:
    """The connection if the cluster answers, else a KafkaError that says how to fix it."""
    conn = connection_for(settings)
    problem = metadata_problem(conn, timeout=timeout)
    if problem is None:
        return conn
    bootstrap = conn.bootstrap
    how = f" with {conn.security.describe()}" if conn.security.authenticated else ""
    if problem != "nothing listens there" and "no answer" not in problem:
        raise KafkaError(
            f"Kafka at {bootstrap} refused or failed our client{how}: {problem}. Check "
            "CANARY_KAFKA_SECURITY_PROTOCOL / CANARY_KAFKA_SASL_* / CANARY_KAFKA_SSL_* against the cluster's listener."
        )
    if settings.uses_external_kafka:
        raise KafkaError(
            f"Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS) does not answer metadata requests{how} ({problem}). "
            "Check the address, or unset KAFKA_BOOTSTRAP_SERVERS to use the local broker."
        )
    port = f" --port {settings.local_port}" if settings.local_port != 19092 else ""
    secure = " --secure" if settings.kafka_security.authenticated else ""
    raise KafkaError(
        f"no Kafka answers at {bootstrap}{how} ({problem}). Start the local broker with "
        f"'canary kafka start{secure}{port}', or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
    )
