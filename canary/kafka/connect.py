"""Resolve the Kafka cluster for a command: one rule everywhere."""

from __future__ import annotations

from collections.abc import Callable

from canary.errors import KafkaError
from canary.kafka.probe import metadata_answers
from canary.settings import Settings


def require_kafka(settings: Settings, timeout: float = 5.0) -> str:
    """Return the bootstrap address if it answers, else a KafkaError that says how to fix it."""
    bootstrap = settings.effective_bootstrap
    if metadata_answers(bootstrap, timeout=timeout):
        return bootstrap
    if settings.uses_external_kafka:
        raise KafkaError(
            f"Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS) does not answer metadata requests. "
            "Check the address, or unset KAFKA_BOOTSTRAP_SERVERS to use the local broker."
        )
    raise KafkaError(
        f"no Kafka answers at {bootstrap}. Start the local broker with 'canary kafka start"
        + (f" --port {settings.local_port}" if settings.local_port != 19092 else "")
        + "', or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
    )


def ensure_local_or_external(settings: Settings, log: Callable[[str], None] = lambda _m: None) -> str:
    """Used by long-running services (worker, router): start the local broker if no cluster is configured."""
    if settings.uses_external_kafka:
        return require_kafka(settings)
    from canary.kafka.broker import LocalBroker

    return LocalBroker(settings.home, settings.local_port).start(log=log).bootstrap
