"""The windows stage: search_results → partial 5 s windows per source partition → canary_window_partials.

Faust delivers records one event at a time through its stream machinery; measured on our 2-core
machines, a no-op Faust agent tops out near 5k records/s, an order of magnitude below what one worker
must aggregate. This stage therefore runs *inside the Faust worker* (started and stopped with the app)
but fetches with aiokafka's ``getmany`` and hands whole batches to the Kafka-free core: one
:class:`~canary.core.windows.WindowFinalizer` per assigned ``search_results`` partition, fed outcomes and
the routers' watermark records in partition order.

Outcomes are spread over all partitions by request id, so a partition's windows are *partials*: each is
published as a :class:`~canary.core.merge.PartialWindow` (key: deployment id), and whenever the
partition's watermark passes a window boundary a :class:`~canary.core.merge.Progress` mark goes to every
partition of the partials topic; the merge step (``streams/merging.py``) combines them into exactly one
window per key. Outcomes beyond the event-time bound are dead-lettered as ``future_ts``; poison records
as ``invalid outcome``; late outcomes count in their key's next window (never dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from canary.core import wire
from canary.core.jsonio import dumps
from canary.core.merge import EncodedPartials, Progress, partial_of
from canary.core.windows import DEFAULT_FUTURE_BOUND_MS, DEFAULT_ROUTER_TIMEOUT_MS, AddResult, WindowFinalizer
from canary.kafka.clients import Cluster
from canary.kafka.runs import RunConsumer, consumer_class
from canary.kafka.topics import Topics, topic_partitions
from canary.observability.metrics import WorkerMetrics
from canary.pipeline.decode import AHEAD_ROWS, Columns, Decoded, OutcomeDecoder, as_core_outcomes
from canary.pipeline.memory import request_memory
from canary.pipeline.runs import offset_reader, values_of
from canary.pipeline.settings import DEFAULTS
from canary.settings import NativeMode
from streams.registry import DeploymentRegistry
from streams.seen_segments import SeenSegments
from streams.transactional import COMMIT_INTERVAL_MS, TransactionalStage, now_ms

log = logging.getLogger("canary.streams.windows")
rejected_log = logging.getLogger("canary.streams.rejected.outcomes")  # rate-limited: a flood is one line per 5 s


@dataclass
class WindowingStats:
    outcomes: int = 0
    invalid_outcomes: int = 0
    late_outcomes: int = 0
    future_outcomes: int = 0
    duplicate_outcomes: int = 0
    watermark_records: int = 0
    partials_emitted: int = 0
    progress_marks: int = 0
    checkpoints: int = 0
    batches: int = 0
    by_partition: dict[int, int] = field(default_factory=dict)


class WindowingStage(TransactionalStage[WindowFinalizer]):
    name = "windows"

    def __init__(
        self,
        bootstrap: Cluster,
        topics: Topics,
        registry: DeploymentRegistry,
        group_id: str,
        window_ms: int = DEFAULTS.window_ms,
        grace_ms: int = DEFAULTS.grace_ms,
        idle_windows: int = DEFAULTS.idle_windows,
        checkpoint_ms: int = COMMIT_INTERVAL_MS,
        max_records: int = DEFAULTS.batch_max,
        session_timeout_ms: int = 10_000,
        instance_id: str | None = None,
        router_timeout_ms: int = DEFAULT_ROUTER_TIMEOUT_MS,
        future_bound_ms: int = DEFAULT_FUTURE_BOUND_MS,
        metrics: WorkerMetrics | None = None,
        native: NativeMode = "auto",
        written: EncodedPartials | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topics,
            topics.search_results,
            group_id,
            checkpoint_ms=checkpoint_ms,
            max_records=max_records,
            session_timeout_ms=session_timeout_ms,
            instance_id=instance_id,
            fetch_min_bytes=DEFAULTS.batch_min_bytes,
        )
        self.registry = registry
        self.written = written  # the partials it writes, for this worker's merge step (canary.core.merge)
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self.idle_windows = idle_windows
        self.router_timeout_ms = router_timeout_ms
        self.future_bound_ms = future_bound_ms
        self.stats = WindowingStats()
        self.metrics = metrics or WorkerMetrics()
        self._decoder = OutcomeDecoder(native=native)
        self._memory = request_memory(native)
        # The fetch's bytes read natively into runs where the native decoder reads the values (canary.kafka.runs).
        self.consumer_class = consumer_class(native)
        self._partials_partitions = 1
        self._progress_sent: dict[int, tuple[int, float]] = {}  # partition -> (closed_until, monotonic s)
        self._segments: dict[int, SeenSegments] = {}  # partition -> where its request memory is written
        # One thread decodes a batch's next partition while the loop windows this one (the native decoder releases
        # the GIL on large batches): made on the first batch large enough, shut down when the stage stops.
        self._ahead: ThreadPoolExecutor | None = None

    @property
    def finalizers(self) -> dict[int, WindowFinalizer]:
        return self.states

    # -- state ------------------------------------------------------------------------------------------
    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> WindowFinalizer:
        if restored is not None:
            segments = SeenSegments.fresh(side)
            if "seen_segments" in restored:  # the request memory in side records (streams/seen_segments.py)
                segments, seen = SeenSegments.restore(restored["seen_segments"], side or {})
                restored = {**restored, "seen": seen}
            finalizer = WindowFinalizer.from_dict(
                restored, now_ms=now_ms(), aggregator=self.registry.aggregator_for, memory=self._memory
            )
            self._segments[partition] = segments
            return finalizer
        self._segments[partition] = SeenSegments.fresh(side)
        return WindowFinalizer(
            size_ms=self.window_ms,
            grace_ms=self.grace_ms,
            idle_windows=self.idle_windows,
            aggregator=self.registry.aggregator_for,
            router_timeout_ms=self.router_timeout_ms,
            future_bound_ms=self.future_bound_ms,
            memory=self._memory,
        )

    def state_side_records(self, partition: int, state: WindowFinalizer) -> list[tuple[str, bytes | None]]:
        return self._segments.setdefault(partition, SeenSegments()).side_records(state)

    def state_to_dict(self, partition: int, state: WindowFinalizer) -> dict[str, Any]:
        out = state.to_dict(seen=False)
        out["seen_segments"] = self._segments.setdefault(partition, SeenSegments()).listing()
        return out

    def complete(self, state: WindowFinalizer) -> None:
        state.fold_pending()

    async def started(self) -> None:
        assert self._consumer is not None
        self._partials_partitions = len(await topic_partitions(self._consumer, self.topics.window_partials))
        how = (
            "each partition's fetched bytes read natively into runs, decoded where they lie"
            if isinstance(self._consumer, RunConsumer)
            else "aiokafka's records" + (", decoded into columns natively" if self._decoder.native else "")
        )
        log.info("windows stage: reading %s (docs/adr/0006-native-batch-core.md)", how)

    async def run(self) -> None:
        await self.registry.caught_up.wait()  # policies (per-request thresholds) must be known first
        try:
            await super().run()
        finally:
            if self._ahead is not None:
                self._ahead.shutdown(wait=False, cancel_futures=True)
                self._ahead = None

    # -- the loop ---------------------------------------------------------------------------------------
    def _decode(self, records: list[Any]) -> Columns:
        return self._decoder.decode_columns(values_of(records), offset_reader(records))

    def _decode_ahead(self, records: list[Any]) -> Future[Columns] | None:
        """The partition's records decoding on the other core, or None (decoded when their turn comes): only batches
        the native decoder decodes with the GIL released are worth a thread's hand-over."""
        if self._decoder.native is None or len(records) < AHEAD_ROWS:
            return None
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="canary-decode")
            log.info("windows stage: a batch's next partition decodes on another core while this one is windowed")
        return self._ahead.submit(self._decode, records)

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        # Synchronous on purpose: no await between a partition's decode and its windowing (a rebalance callback
        # runs only while the loop waits elsewhere). The next partition decodes in the thread meanwhile (replay's
        # lookahead does the same: canary.pipeline.recompute).
        now = now_ms()
        parts = list(batch.items())
        following: Future[Columns] | None = None
        for i, (tp, records) in enumerate(parts):
            fin = self.states[tp.partition]
            current, following = following, self._decode_ahead(parts[i + 1][1]) if i + 1 < len(parts) else None
            columns, refused = current.result() if current is not None else self._decode(records)
            if columns is None:
                self._process_objects(tp.partition, fin, records, now)
                continue
            for row, exc in refused:
                rejected = wire.rejection_of(exc)
                self._dead_letter(tp.partition, records[row].offset, records[row].value, rejected.code, rejected.detail)
                self.stats.invalid_outcomes += 1
            try:
                result = fin.add_columns(tp.partition, columns, now)
            except Exception:
                # The core never raises on decoded outcomes; should it, the object path below decodes the batch's
                # records again and finds the one that makes it raise (the refused ones are dead-lettered above).
                log.exception(
                    "windows: partition %s: a batch of %d records failed as columns; as objects",
                    tp.partition,
                    len(records),
                )
                bad = {row for row, _ in refused}
                self._process_objects(tp.partition, fin, [r for i, r in enumerate(records) if i not in bad], now)
                continue
            self._account(tp.partition, fin, result, len(columns) - len(refused), columns.offset_of)

    def _process_objects(self, partition: int, fin: WindowFinalizer, records: list[Any], now: int) -> None:
        """One partition's records decoded one at a time (no native decoder, or a record the columns cannot hold)."""
        items, offsets = [], []
        for record in records:
            try:
                items.append(self._decoder.decode(record.value))
                offsets.append(record.offset)
            except Exception as exc:  # poison (the decoder raises only Rejected): dead-lettered, never fatal
                rejected = wire.rejection_of(exc)
                self._dead_letter(partition, record.offset, record.value, rejected.code, rejected.detail)
                self.stats.invalid_outcomes += 1
        if not items:
            return
        try:
            result = fin.add(partition, as_core_outcomes(items), now)
        except Exception:
            # The core never raises on decoded outcomes; if it ever does, find the record that makes it
            # raise instead of crash-looping on the batch: one by one, the culprit quarantined. Outcomes
            # the failed batch already took are dropped as repeats (the finalizer dedups by request).
            log.exception("windows: partition %s: a batch of %d outcomes failed; one by one", partition, len(items))
            result = self._add_one_by_one(fin, partition, items, offsets, records, now)
        offset_of = {id(o): off for o, off in zip(items, offsets, strict=True)} if result.future else {}
        self._account(partition, fin, result, len(items), lambda o: offset_of.get(id(o)))

    def _account(
        self,
        partition: int,
        fin: WindowFinalizer,
        result: AddResult,
        items: int,
        offset_of: Callable[[Any], int | None],
    ) -> None:
        """Counters, metrics and dead letters of one partition's batch (``items``: outcomes and watermark records)."""
        n = items - result.watermarks
        self.stats.outcomes += n
        self.stats.watermark_records += result.watermarks
        self.stats.late_outcomes += len(result.late)
        self.stats.duplicate_outcomes += result.duplicates
        self.stats.batches += 1
        self.metrics.outcomes.inc(n)
        self.metrics.late_outcomes.inc(len(result.late))
        self.metrics.duplicate_outcomes.inc(result.duplicates)
        self.stats.by_partition[partition] = self.stats.by_partition.get(partition, 0) + n
        self._dead_letter_quarantined(partition, fin)
        for outcome in result.future:
            self.stats.future_outcomes += 1
            self._dead_letter(
                partition,
                offset_of(outcome),
                None,
                "future_ts",
                "event time beyond the bound ahead of its producer's watermark",
                extra={"event_id": outcome.event_id, "ts": outcome.ts, "router_id": outcome.router_id},
            )

    def _add_one_by_one(
        self,
        fin: WindowFinalizer,
        partition: int,
        items: list[Decoded],
        offsets: list[int],
        records: list[Any],
        now: int,
    ) -> AddResult:
        raw_of = {record.offset: record.value for record in records}
        total = AddResult()
        for item, offset in zip(items, offsets, strict=True):
            try:
                total.merge(fin.add(partition, as_core_outcomes([item]), now))
            except Exception as exc:
                log.exception("windows: outcome at %s/%s quarantined", partition, offset)
                detail = f"the window core raised {type(exc).__name__}: {exc}"
                self._dead_letter(partition, offset, raw_of.get(offset), "quarantined", detail)
        return total

    def _dead_letter_quarantined(self, partition: int, fin: WindowFinalizer) -> None:
        """Outcomes the window core could not fold into their window (it folds when a window closes or a
        checkpoint reads it, so this comes after the add that took them): dead-lettered, never fatal."""
        if not fin.quarantined:
            return
        taken, fin.quarantined = fin.quarantined, []
        for outcome, why in taken:
            log.error("windows: outcome %s of partition %s quarantined: %s", outcome.event_id, partition, why)
            extra = {"event_id": outcome.event_id, "request_id": outcome.request_id, "ts": outcome.ts}
            self._dead_letter(partition, None, None, "quarantined", why, extra=extra)

    async def emit_due(self) -> None:
        now = now_ms()
        assert self._consumer is not None
        for partition, fin in list(self.states.items()):
            if fin.watermark is None and partition not in self._pending:
                # A partition nobody writes to must not hold the merge back: once the consumer is at its
                # end, its event time follows processing time.
                tp = self.tp(partition)
                end = self._consumer.last_stable_offset(tp)
                if end is not None and await self._consumer.position(tp) >= end:
                    fin.mark_idle(partition, now)
            due = fin.due_closed(now)
            self._dead_letter_quarantined(partition, fin)
            for window in due:
                partial = partial_of(window, window.aggregate, partition)
                key = (window.deployment_id or "-").encode()
                body = dumps(partial.json_dict())
                if self.written is not None:
                    self.written.remember(body, partial)
                self.emit(partition, self.topics.window_partials, body, key=key, window=True)
                self.stats.partials_emitted += 1
                self.metrics.partials_emitted.inc()
            if due:
                self.mark_dirty(partition)
            self._progress(partition, fin, force=bool(due))

    def _progress(self, partition: int, fin: WindowFinalizer, *, force: bool) -> None:
        """Tell every merge partition how far this partition's windows are closed."""
        closed = fin.watermark
        if closed is None:
            return
        closed -= closed % self.window_ms  # windows end on boundaries: report the last one passed
        sent, at = self._progress_sent.get(partition, (None, 0.0))
        # A mark that moved goes out at once; the same mark again once a window. A repeat serves only a merge
        # partition that starts afresh (its state unreadable), which merges nothing before every source partition's
        # mark: a moved one comes at the next boundary anyway. Repeated every second, the marks were a transaction
        # a second per partition, windows and merge stages both: a third of an idle worker's CPU (bench_live).
        stale = time.monotonic() - at > self.window_ms / 1000
        if closed == sent and not stale and not force:
            return
        moved = closed != sent or force
        body = dumps(Progress(partition, closed).to_dict())
        for target in range(self._partials_partitions):
            # A mark that moves the boundary lets the merge step close a window: at once. A repeat (stale) can wait.
            self.emit(partition, self.topics.window_partials, body, key=b"progress", partition=target, urgent=moved)
        self._progress_sent[partition] = (closed, time.monotonic())
        self.stats.progress_marks += 1

    def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self._progress_sent.pop(p, None)
            self._segments.pop(p, None)

    def _dead_letter(
        self,
        partition: int,
        offset: int | None,
        raw: bytes | None,
        reason: wire.DeadLetterReason,
        detail: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        record = wire.dead_letter(
            reason,
            detail,
            source_topic=self.topics.search_results,
            partition=partition,
            offset=offset,
            raw=raw,
            extra=extra,
        )
        self.emit(partition, self.topics.results_dlq, orjson.dumps(record))
        self.metrics.dlq.labels(reason).inc()
        rejected_log.warning(
            "dead-lettered outcome (partition %s offset %s): %s: %s", partition, offset, reason, detail
        )
