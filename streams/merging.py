"""The merge step: canary_window_partials → exactly one window per (deployment, config, arm) → canary_windows.

Partial windows are keyed by deployment id, so every partial of a deployment reaches the same partials
partition and one :class:`~canary.core.merge.WindowMerger`; progress marks of every source partition reach
every partials partition. A window is emitted once every source partition has passed its end. The merger's
state (pending partials, progress, what it emitted) is committed in the same Kafka transaction as the windows
it emitted and the partials offset (streams/transactional.py, like the windows stage), and the partials are
read ``read_committed``: restarts and rebalances neither lose a window nor emit one twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition

from canary.core import wire
from canary.core.jsonio import dumps
from canary.core.merge import EncodedPartials, Progress, WindowMerger, decode_merge_record
from canary.errors import CanaryError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics, topic_partitions
from canary.observability.metrics import WorkerMetrics
from streams.transactional import COMMIT_INTERVAL_MS, TransactionalStage, now_ms

log = logging.getLogger("canary.streams.merge")
rejected_log = logging.getLogger("canary.streams.rejected.partials")  # rate-limited


@dataclass
class MergeStats:
    partials: int = 0
    progress_marks: int = 0
    invalid_records: int = 0
    windows_emitted: int = 0
    dropped_partials: int = 0


# How long the merge step's fetch waits at the broker when nothing arrives. Its input (a partial a window and
# partition, progress marks) completes the fetch as it comes, so the wait costs no latency (windows out p50
# ~220 ms after their end either way, bench_live at 8k/s); at a 50 ms wait (the windows stage's then) the idle
# step went to the broker 20 times a second.
MERGE_FETCH_WAIT_MS = 500


class MergeStage(TransactionalStage[WindowMerger]):
    name = "merge"

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        group_id: str,
        checkpoint_ms: int = COMMIT_INTERVAL_MS,
        session_timeout_ms: int = 10_000,
        instance_id: str | None = None,
        metrics: WorkerMetrics | None = None,
        written: EncodedPartials | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topics,
            topics.window_partials,
            group_id,
            checkpoint_ms=checkpoint_ms,
            session_timeout_ms=session_timeout_ms,
            instance_id=instance_id,
            fetch_max_wait_ms=MERGE_FETCH_WAIT_MS,
        )
        self.stats = MergeStats()
        self.metrics = metrics or WorkerMetrics()
        self.written = written  # the partials this worker's windows stage wrote: read without decoding them again
        self.sources = 0

    async def started(self) -> None:
        assert self._consumer is not None
        self.sources = len(await topic_partitions(self._consumer, self.topics.search_results))

    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> WindowMerger:
        if restored is not None:
            merger = WindowMerger.from_dict(restored["merger"])
            if merger.sources != self.sources:
                raise CanaryError(
                    f"checkpoint merges {merger.sources} source partitions, {self.topics.search_results} has "
                    f"{self.sources}"
                )
            return merger
        return WindowMerger(self.sources)

    def state_to_dict(self, partition: int, state: WindowMerger) -> dict[str, Any]:
        return {"merger": state.to_dict()}

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            merger = self.states[tp.partition]
            for record in records:
                try:
                    item = decode_merge_record(record.value, self.written)
                except Exception as exc:  # poison: dead-lettered with its code, the loop goes on
                    rejected = wire.rejection_of(exc)
                    self._dead_letter(record, rejected.code, rejected.detail)
                    continue
                before = merger.dropped
                try:
                    merger.add(item)
                except CanaryError as exc:  # the merger's refusal (e.g. a source partition that does not exist)
                    self._dead_letter(record, "invalid", str(exc))
                    continue
                except Exception as exc:  # a partial the merger cannot take: quarantined, never fatal
                    log.exception("merge: record at %s/%s quarantined", tp.partition, record.offset)
                    self._dead_letter(record, "quarantined", f"the merger raised {type(exc).__name__}: {exc}")
                    continue
                if merger.dropped > before:
                    self.stats.dropped_partials += 1
                elif isinstance(item, Progress):
                    self.stats.progress_marks += 1
                else:
                    self.stats.partials += 1

    def _dead_letter(self, record: Any, reason: wire.DeadLetterReason, detail: str) -> None:
        self.stats.invalid_records += 1
        dead = wire.dead_letter(
            reason,
            detail,
            source_topic=self.topics.window_partials,
            partition=record.partition,
            offset=record.offset,
            raw=record.value,
        )
        self.emit(record.partition, self.topics.results_dlq, orjson.dumps(dead))
        self.metrics.dlq.labels(reason).inc()
        rejected_log.warning(
            "merge: dead-lettered record at %s/%s: %s: %s", record.partition, record.offset, reason, detail
        )

    async def emit_due(self) -> None:
        now = now_ms()
        for partition, merger in list(self.states.items()):
            due = merger.due(now)
            for window in due:
                key = (window.deployment_id or "-").encode()
                self.emit(partition, self.topics.windows, dumps(window.to_dict()), key=key, window=True)
                self.stats.windows_emitted += 1
                self.metrics.windows_emitted.inc()
                self.metrics.window_lag.observe(max(0.0, (now - window.window_end_ms) / 1000))
            if due:
                self.mark_dirty(partition)
