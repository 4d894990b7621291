"""Steady load onto ``search_requests`` (``canary load``): labeled, or ``--unlabeled`` (no relevant_ids, so
recall can only come from the router's sampled exact searches)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from canary.errors import KafkaError, ProducerFailed
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.producer import HealingProducer
from canary.kafka.topics import Topics

FLUSH_TIMEOUT_S = 30.0  # at the end, how long to wait for the broker's last acknowledgements

QuerySource = Callable[[int], tuple[str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class LoadReport:
    sent: int  # enqueued in the producer
    seconds: float
    target_qps: float
    users: int
    labeled: int
    max_behind_ms: float
    acked: int = 0  # acknowledged by the broker (acks=all): what really reached the topic
    failed: int = 0  # delivery failed (broker down longer than the producer's delivery timeout)
    not_queued: int = 0  # the producer did not even take them (its buffer stayed full while the broker hung)
    unconfirmed: int = 0  # handed over, but neither acknowledged nor failed when the run ended

    @property
    def undelivered(self) -> int:
        """Requests of the schedule that are not known to be on the topic."""
        return self.failed + self.not_queued + self.unconfirmed

    @property
    def achieved_qps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "not_queued": self.not_queued,
            "unconfirmed": self.unconfirmed,
            "seconds": round(self.seconds, 3),
            "target_qps": self.target_qps,
            "achieved_qps": round(self.achieved_qps, 1),
            "users": self.users,
            "labeled": self.labeled,
            "max_behind_ms": round(self.max_behind_ms, 1),
        }


def bundled_queries(corpus_name: str = "cranfield") -> tuple[QuerySource, int]:
    """The labeled queries of the bundled collection ``corpus_name`` (CANARY_CORPUS; the router's own)."""
    from router.backends.hybrid import bundled_corpus

    corpus = bundled_corpus(corpus_name)
    return corpus.query, corpus.n_queries


async def produce_load(
    bootstrap: Cluster,
    topics: Topics,
    qps: float,
    duration: float,
    users: int = 1000,
    seed: int = 42,
    queries: tuple[QuerySource, int] | None = None,
    progress: Callable[[int, float], None] | None = None,
    collection: str = "documents",
    labeled: bool = True,
) -> LoadReport:
    """Send ``qps`` requests per second for ``duration`` seconds on a fixed schedule (no coordinated
    omission: a late tick is sent at once and counted in ``max_behind_ms``). ``labeled=False`` sends the same
    queries without their relevance labels.

    The broker going away (stopped, or hung) does not end the run: requests the producer cannot take are
    counted as ``not_queued``, deliveries that fail as ``failed`` (the producer replaces itself after one, so
    the rest of the schedule still gets through once the broker is back), and the report says so."""
    query_of, n_queries = queries or bundled_queries()
    rng = random.Random(seed)
    producer = HealingProducer(
        lambda: AIOKafkaProducer(**client_kwargs(bootstrap), linger_ms=5, acks="all", enable_idempotence=True),
        "canary load",
    )
    try:
        await asyncio.wait_for(producer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    sent = n_labeled = not_queued = 0
    delivered = {"acked": 0, "failed": 0}

    def count(fut: asyncio.Future[Any]) -> None:
        delivered["failed" if fut.cancelled() or fut.exception() is not None else "acked"] += 1

    behind = 0.0
    interval = 1.0 / qps
    start = time.monotonic()
    next_report = start + 1.0
    try:
        while True:
            tick = sent + not_queued
            due = start + tick * interval
            now = time.monotonic()
            if due - start >= duration:
                break
            if due > now:
                await asyncio.sleep(due - now)
            else:
                behind = max(behind, (now - due) * 1000)
            q = rng.randrange(n_queries)
            text, relevant = query_of(q)
            if not labeled:
                relevant = ()
            user = f"user-{rng.randrange(users)}"
            body = {
                "request_id": f"load-{seed}-{tick}-{int(time.time() * 1000)}",
                "query": text,
                "collection": collection,
                "user_id": user,
                "ts": int(time.time() * 1000),
                "relevant_ids": list(relevant) if relevant else None,
            }
            try:
                ack = await producer.send(topics.search_requests, json.dumps(body).encode(), key=user.encode())
            except ProducerFailed:
                raise
            except Exception:  # the buffer stayed full for the producer's whole timeout: the broker hangs
                not_queued += 1
                continue
            ack.add_done_callback(count)
            sent += 1
            n_labeled += bool(relevant)
            if progress is not None and time.monotonic() >= next_report:
                progress(sent, time.monotonic() - start)
                next_report += 1.0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.flush(), FLUSH_TIMEOUT_S)
    finally:
        await producer.stop()
    acked, failed = delivered["acked"], delivered["failed"]
    return LoadReport(
        sent,
        time.monotonic() - start,
        qps,
        users,
        n_labeled,
        behind,
        acked,
        failed,
        not_queued,
        max(0, sent - acked - failed),
    )
