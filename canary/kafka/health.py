"""Health of aiokafka clients that their public API does not report."""

from __future__ import annotations

from typing import Any


def producer_failure(producer: Any) -> BaseException | None:
    """The error that ended a producer's sender task, if it ended.

    aiokafka's sender task dies on fatal errors (``ProducerFenced``, ``OutOfOrderSequenceNumber`` raised by
    its own routine): it fails what was pending, but every later ``send`` is queued forever and never
    resolves, while ``send`` itself keeps succeeding. Such a producer must be replaced
    (canary.kafka.producer.HealingProducer does). Reads the private ``_sender`` because nothing public tells.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is None or not task.done() or task.cancelled():
        return None
    # Only an error ends it for good; aiokafka's own close() cancels it (swallowed inside, so the task ends
    # "cleanly"), which must not read as a dead producer — seen in a router whose ACLs changed mid-run.
    exc: BaseException | None = task.exception()
    return exc
