"""Health of aiokafka clients that their public API does not report."""

from __future__ import annotations

from typing import Any


def producer_failure(producer: Any) -> BaseException | None:
    """The error that ended a producer's sender task, if it ended.

    aiokafka's sender task dies on fatal errors (``OutOfOrderSequenceNumber`` after a broker restart,
    ``ProducerFenced``): it fails what was pending, but every later ``send`` is queued forever and never
    resolves, while ``send`` itself keeps succeeding. A service must notice and exit (its orchestrator
    restarts it) rather than stay half alive. Reads the private ``_sender`` because nothing public tells.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is None or not task.done() or task.cancelled():
        return None
    # Only an error ends it for good; aiokafka's own close() cancels it (swallowed inside, so the task ends
    # "cleanly"), which must not read as a dead producer — seen in a router whose ACLs changed mid-run.
    exc: BaseException | None = task.exception()
    return exc


# Errors after which an idempotent aiokafka producer never delivers to that partition again: unlike the
# Java client, aiokafka does not reset its producer id/sequence, so every later batch fails the same way.
_FATAL_PRODUCER_ERRORS = (
    "OutOfOrderSequenceNumber",
    "ProducerFenced",
    "InvalidProducerEpoch",
    "InvalidProducerIdMapping",
)


def is_fatal_producer_error(exc: BaseException | None) -> bool:
    """A delivery error no retry on this producer can fix (the process should exit and be restarted)."""
    return exc is not None and type(exc).__name__ in _FATAL_PRODUCER_ERRORS
