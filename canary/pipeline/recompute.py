"""Kafka-free recomputation of windows, verdicts and decisions from recorded records.

The same core objects as the live worker (``streams/app.py``) do the work:

* per source partition one :class:`~canary.core.windows.WindowFinalizer` with the worker's window
  settings, fed the partition's outcomes **in offset order, in micro-batches** (at most ``batch_max``
  records spanning at most ``batch_span_ms`` of Kafka time, as the live agent's
  ``take_events(batch_max, within=...)`` cuts them), with the source offsets (for dead-letter samples) and
  ``now_ms`` = the newest Kafka timestamp in the batch: a record's Kafka timestamp is the closest
  recorded stand-in for the moment the live worker received it, so the processing-time extrapolation of
  the watermark — and with it every lateness decision — behaves as it did live;
* ``due(now)`` after each batch, ``due(horizon)`` once the input ends (the live 100 ms tick that closes
  windows when traffic stops), then ``flush_all``;
* the finalizer's judge and per-key aggregator thresholds come from each deployment's ``slo`` section as
  folded from the control topic by :class:`~canary.core.deployment.ControlLedger` (the registry's
  rules), or from ``rules_override`` for a backtest;
* the merged windows go, in the order the SLO agent receives them, through the agent's whole decision
  loop (:func:`canary.pipeline.loop.run_loop`): verdicts, every decision (rollback, pause, rollout steps,
  gates, promotion, expiry) with the command it publishes and when, fed back into the control topic's
  ledger as the live registry folds it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple, overload

import numpy as np

from canary.core.aggregations import WindowAggregate
from canary.core.columns import ColumnBatch
from canary.core.merge import merge_all
from canary.core.models import ControlCommand, JSONDict, RouterWatermark, SearchOutcome, WindowResult
from canary.core.slo import SLOPolicy, SLORule
from canary.core.windows import AddResult, ClosedWindow, WindowFinalizer, window_bounds
from canary.pipeline.decode import DECODE_ERRORS, OutcomeDecoder, SourceRecord, as_core_outcomes
from canary.pipeline.loop import Judgement, PipelineDecision, fold_commands, run_loop
from canary.pipeline.memory import request_memory
from canary.pipeline.policies import PolicyBook
from canary.pipeline.settings import PipelineSettings

log = logging.getLogger("canary.pipeline")

_CHUNK = 16_384  # records decoded before they are cut into micro-batches (bounds memory)
MAX_SAMPLES = 50  # invalid / late records listed individually in the result (all are counted)


# -- results ---------------------------------------------------------------------------------------------------


@dataclass
class PartitionStats:
    partition: int
    records: int = 0
    outcomes: int = 0
    invalid: int = 0
    late: int = 0
    future: int = 0  # refused: beyond the event-time bound (dead-lettered live as future_ts)
    duplicates: int = 0  # a request already counted (redelivery, takeover by another router)
    watermarks: int = 0  # producer watermark records (not outcomes)
    batches: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None

    def to_dict(self) -> JSONDict:
        return {
            "partition": self.partition,
            "records": self.records,
            "outcomes": self.outcomes,
            "invalid": self.invalid,
            "late": self.late,
            "future": self.future,
            "duplicates": self.duplicates,
            "watermarks": self.watermarks,
            "batches": self.batches,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "first_timestamp_ms": self.first_timestamp_ms,
            "last_timestamp_ms": self.last_timestamp_ms,
        }


@dataclass
class Recomputation:
    """Everything a replay derives from the records (unfiltered windows; see :func:`in_span`)."""

    settings: PipelineSettings
    windows: list[WindowResult]
    judgements: list[Judgement]
    decisions: list[PipelineDecision]
    partitions: dict[int, PartitionStats]
    invalid_samples: list[JSONDict] = field(default_factory=list)
    late_samples: list[JSONDict] = field(default_factory=list)
    rules: dict[str, list[JSONDict]] = field(default_factory=dict)
    policies: dict[str, JSONDict] = field(default_factory=dict)  # each deployment's whole SLO policy
    # Recorded SLO-agent command ids the loop issued its own decisions in place of (apply_decisions).
    set_aside: list[str] = field(default_factory=list)
    apply_decisions: bool = True

    @property
    def outcomes(self) -> int:
        return sum(p.outcomes for p in self.partitions.values())

    @property
    def invalid(self) -> int:
        return sum(p.invalid for p in self.partitions.values())

    @property
    def late(self) -> int:
        return sum(p.late for p in self.partitions.values())


# -- the recomputation -----------------------------------------------------------------------------------------


class _Partition(NamedTuple):
    """One partition's records in offset order, each offset once (what reading it from Kafka yields), and their
    Kafka times (``int64``, ``-2**63`` for None) where the native batch core split them."""

    records: list[Any]
    times: np.ndarray | None = None


def _by_partition(
    records: Iterable[SourceRecord | tuple[int, int, int | None, bytes | None]], native: ModuleType | None = None
) -> dict[int, _Partition]:
    """Each partition's records (:class:`_Partition`): split by the native batch core when it is there and every
    record is a tuple of int fields, else by Python."""
    recs_all = records if isinstance(records, list) else list(records)
    if not recs_all:
        return {}
    group = getattr(native, "group_records", None)  # an extension built before it has none
    groups = group(recs_all) if group is not None else None
    if groups is None:
        return {p: _Partition(recs) for p, recs in _by_partition_python(recs_all).items()}
    return {p: _Partition(recs, np.frombuffer(times, dtype="<i8").astype(np.int64)) for p, recs, times in groups}


def _by_partition_python(recs_all: list[Any]) -> dict[int, list[Any]]:
    # Splitting and the order check run in C (map/itemgetter, numpy): a Python step per record here was a
    # quarter of replay's recompute once the decoding was native.
    partition_of = np.fromiter(map(_PARTITION, recs_all), dtype=np.int64, count=len(recs_all))
    parts: dict[int, list[Any]] = {}
    for p in np.unique(partition_of).tolist():
        rows = np.flatnonzero(partition_of == p).tolist()
        recs = list(operator.itemgetter(*rows)(recs_all)) if len(rows) > 1 else [recs_all[rows[0]]]
        offsets = list(map(_OFFSET, recs))
        if not all(map(operator.lt, offsets, itertools.islice(offsets, 1, None))):
            # Offset order, each offset once: what reading the partition from Kafka yields.
            recs.sort(key=_OFFSET)
            recs = [r for i, r in enumerate(recs) if i == 0 or r[1] != recs[i - 1][1]]
        parts[p] = recs
    return parts


_PARTITION = operator.itemgetter(0)
_OFFSET = operator.itemgetter(1)
_KAFKA_TIME = operator.itemgetter(2)
_VALUE = operator.itemgetter(3)


def recompute_partition(
    partition: int,
    records: Sequence[SourceRecord | tuple[int, int, int | None, bytes | None]],
    finalizer: WindowFinalizer,
    decoder: OutcomeDecoder,
    settings: PipelineSettings,
    horizon_ms: int | None = None,
    invalid_samples: list[JSONDict] | None = None,
    late_samples: list[JSONDict] | None = None,
) -> tuple[list[WindowResult], PartitionStats]:
    """Drive one partition's finalizer over its records (offset order) like the live windows agent.

    Returns the partition's *partial* windows (see :func:`recompute_partition_partials`) as results."""
    partials, stats = recompute_partition_partials(
        partition, records, finalizer, decoder, settings, horizon_ms, invalid_samples, late_samples
    )
    return [finalizer.result_of(c) for c in partials], stats


def recompute_partition_partials(
    partition: int,
    records: Sequence[SourceRecord | tuple[int, int, int | None, bytes | None]],
    finalizer: WindowFinalizer,
    decoder: OutcomeDecoder,
    settings: PipelineSettings,
    horizon_ms: int | None = None,
    invalid_samples: list[JSONDict] | None = None,
    late_samples: list[JSONDict] | None = None,
    pool: Executor | None = None,
    kafka_times: np.ndarray | None = None,
) -> tuple[list[ClosedWindow], PartitionStats]:
    """One partition's partial windows with their aggregates, batched like the live windows stage.

    Decoded a chunk at a time — into columns by the native decoder when it is there and the chunk allows (the
    live windows stage's path), else record by record — then cut into the live agent's micro-batches: a batch
    starts at a record and takes the following ones while they are within ``span`` of its first record's time
    (at most ``size``). The last, unfinished batch of a chunk is carried into the next chunk (its records,
    already counted, keep their decoded rows). With a ``pool`` the next chunk decodes while this one is windowed.
    ``kafka_times``: the records' Kafka times, where the caller read them (``-2**63``: None)."""
    stats = PartitionStats(partition)
    out: list[ClosedWindow] = []
    last_now = -(2**62)
    span = settings.batch_span_ms
    size = settings.batch_max
    due = finalizer.due_closed

    def flush(result: AddResult, batch_now: int, offset_of: Callable[[SearchOutcome], int | None]) -> None:
        late = result.late
        stats.batches += 1
        stats.future += len(result.future)
        stats.duplicates += result.duplicates
        stats.watermarks += result.watermarks
        if result.future and invalid_samples is not None:
            for o in result.future[: max(0, MAX_SAMPLES - len(invalid_samples))]:
                invalid_samples.append(
                    {"partition": partition, "offset": offset_of(o), "reason": f"future_ts: ts={o.ts}"}
                )
        if late:
            stats.late += len(late)
            if late_samples is not None:
                for o in late[: max(0, MAX_SAMPLES - len(late_samples))]:
                    late_samples.append(
                        {
                            "partition": partition,
                            "offset": offset_of(o),
                            "event_id": o.event_id,
                            "ts": o.ts,
                            "window_key": o.window_key.as_str(),
                            "replay_now_ms": batch_now,
                        }
                    )
        out.extend(due(batch_now))

    def tick(batch_now: int) -> int:
        nonlocal last_now
        last_now = max(batch_now, last_now)  # processing time never runs backwards
        return last_now

    def invalid(offset: int, exc: BaseException) -> None:
        stats.invalid += 1
        if invalid_samples is not None and len(invalid_samples) < MAX_SAMPLES:
            invalid_samples.append({"partition": partition, "offset": offset, "reason": str(exc)[:300]})

    if records:
        stats.records = len(records)
        stats.first_offset = records[0][1]
        stats.last_offset = records[-1][1]
    carried: list[tuple[Any, int]] = []  # (record, its processing time) of the unfinished batch
    carried_columns: ColumnBatch | None = None  # their decoded rows, when the last chunk was decoded to columns
    now = 0
    first_ts: int | None = None
    ahead = _Lookahead(records, decoder, pool)
    for chunk_start in range(0, len(records), _CHUNK):
        fresh = records[chunk_start : chunk_start + _CHUNK]
        final = chunk_start + _CHUNK >= len(records)
        chunk = [r for r, _ in carried] + list(fresh)
        columns, refused = ahead.columns(chunk_start, chunk, carried_columns, len(carried))
        # Rows of ``chunk`` that decoded, with their processing times (the carried ones kept theirs, and were
        # counted with their chunk); objects only on the record-by-record path.
        kept: list[int] = list(range(len(carried)))
        nows: list[int] = [t for _, t in carried]
        items: list[SearchOutcome | RouterWatermark] = []
        bad = dict(refused)
        stamps = None
        if columns is not None:
            stamps = _kafka_times(chunk, len(carried)) if kafka_times is None else _times_of(kafka_times, chunk_start)
        if stamps is not None:
            # Every fresh record has its Kafka time, so the rule below gives each kept row exactly that: the
            # same kept rows and times, without a Python step per row (replay's largest cost after decoding).
            for row in sorted(bad):
                invalid(int(chunk[row][1]), bad[row])
            fresh_ok = np.ones(len(stamps), dtype=bool)
            fresh_ok[[row - len(carried) for row in bad if row >= len(carried)]] = False
            kept += (len(carried) + np.flatnonzero(fresh_ok)).tolist()
            taken = stamps[fresh_ok].tolist()
            nows += taken
            if taken:
                now = taken[-1]
        for row in range(len(chunk)) if stamps is None else ():
            _, offset, ts_ms, raw = chunk[row]
            if columns is not None:
                if row < len(carried) or row in bad:
                    if row in bad:
                        invalid(offset, bad[row])
                    continue
                mark = columns.watermarks.get(row)
                own_ms, mark_ms = (int(columns.ts[row]), None) if mark is None else (None, mark.watermark_ms)
            else:
                try:
                    item = decoder.decode(raw)
                except DECODE_ERRORS as exc:
                    if row >= len(carried):
                        invalid(offset, exc)
                    continue
                items.append(item)
                if row < len(carried):
                    continue
                own_ms, mark_ms = (item.ts, None) if isinstance(item, SearchOutcome) else (None, item.watermark_ms)
            # The record's Kafka time; without one, the outcome's own time (a watermark never goes back).
            if ts_ms is not None and ts_ms >= 0:
                now = ts_ms
            elif own_ms is not None:
                now = own_ms
            elif mark_ms is not None:
                now = max(now, mark_ms)
            kept.append(row)
            nows.append(now)
        if first_ts is None and nows:
            first_ts = nows[0]
        times = np.asarray(nows, dtype=np.int64)
        i, n = 0, len(kept)
        while i < n:
            stop = min(i + size, n)
            over = np.flatnonzero(times[i + 1 : stop] - times[i] > span)
            j = i + 1 + int(over[0]) if over.size else stop
            if j == n and not final and j - i < size:
                break  # may go on in the next chunk
            batch_now = tick(int(times[i:j].max()))
            if columns is not None:
                lo, hi = kept[i], kept[j - 1] + 1
                part = columns.slice(lo, hi)
                result = finalizer.add_columns(partition, part, batch_now)
                flush(result, batch_now, part.offset_of)
            else:
                batch = items[i:j]
                result = finalizer.add(partition, as_core_outcomes(batch), batch_now)
                by_id = {id(o): int(chunk[r][1]) for o, r in zip(batch, kept[i:j], strict=True)}
                flush(result, batch_now, functools.partial(_by_identity, by_id))
            i = j
        carried = [(chunk[r], t) for r, t in zip(kept[i:], nows[i:], strict=True)]
        carried_columns = None if columns is None or not carried else columns.take(kept[i:])
    stats.first_timestamp_ms = first_ts
    stats.last_timestamp_ms = now if first_ts is not None else None
    stats.outcomes = stats.records - stats.invalid - stats.watermarks
    end = horizon_ms if horizon_ms is not None else (last_now if stats.batches else None)
    if end is not None:
        out.extend(due(max(end, last_now)))  # the live tick: processing time kept running after the input
        out.extend(finalizer.flush_all_closed(max(end, last_now)))
    return out, stats


class _Lookahead:
    """A partition's chunks decoded one ahead: the native decoder releases the GIL, so with a ``pool`` the next
    chunk decodes on the other core while this one is windowed. A chunk's rows decode alone (each row's decoding
    is its own), and the unfinished batch carried into the next chunk keeps the rows it was decoded to — the
    same columns as decoding the carried records again with the chunk."""

    def __init__(self, records: Sequence[Any], decoder: OutcomeDecoder, pool: Executor | None) -> None:
        self.records = records
        self.decoder = decoder
        self.pool = pool
        self.pending: dict[int, Future[tuple[ColumnBatch | None, list[tuple[int, Exception]]]]] = {}

    def _decode(self, start: int) -> tuple[ColumnBatch | None, list[tuple[int, Exception]]]:
        return self.decoder.decode_columns(list(map(_VALUE, self.records[start : start + _CHUNK])))

    def _fresh(self, start: int) -> tuple[ColumnBatch | None, list[tuple[int, Exception]]]:
        pending = self.pending.pop(start, None)
        found = pending.result() if pending is not None else self._decode(start)
        following = start + _CHUNK
        if self.pool is not None and following < len(self.records) and self.decoder.native is not None:
            self.pending[following] = self.pool.submit(self._decode, following)
        return found

    def columns(
        self, start: int, chunk: list[Any], carried_columns: ColumnBatch | None, carried: int
    ) -> tuple[ColumnBatch | None, list[tuple[int, Exception]]]:
        """The chunk's rows (``carried`` records of the last chunk, then the fresh ones) as columns and the rows
        refused, as :meth:`OutcomeDecoder.decode_columns` on the whole chunk."""
        fresh, refused = self._fresh(start)
        offset_at = functools.partial(_record_offset, chunk)
        if fresh is None:
            return None, []
        if not carried:
            fresh.offset_at = offset_at
            return fresh, refused
        if carried_columns is None:  # the last chunk went record by record: its carried records decode here
            carried_columns, carried_refused = self.decoder.decode_columns(list(map(_VALUE, chunk[:carried])))
            if carried_columns is None:
                return None, []
            refused = carried_refused + [(row + carried, exc) for row, exc in refused]
        else:
            refused = [(row + carried, exc) for row, exc in refused]
        return ColumnBatch.concat(carried_columns, fresh, _Values(chunk), offset_at), refused


class _Values(Sequence[bytes | None]):
    """The values of records, read when asked (a batch's values are read only for its rare object rows)."""

    __slots__ = ("records",)

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> bytes | None: ...

    @overload
    def __getitem__(self, index: slice) -> _Values: ...

    def __getitem__(self, index: int | slice) -> bytes | _Values | None:
        if isinstance(index, slice):
            return _Values(self.records[index])
        value: bytes | None = self.records[index][3]
        return value


@contextlib.contextmanager
def _collector_skips_what_exists() -> Iterator[None]:
    """The cyclic garbage collector leaves the objects that exist now — the caller's records above all, a
    tuple each, alive throughout — out of its passes until the recomputation ends: walking a million of them at
    each full pass was a tenth of a replay's recompute. What the recomputation creates is collected as always
    (``gc.freeze``; ``gc.unfreeze`` after, as if nothing had been frozen)."""
    if not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _times_of(times: np.ndarray, start: int) -> np.ndarray | None:
    """:func:`_kafka_times` of a chunk from the times read beforehand."""
    fresh = times[start : start + _CHUNK]
    return fresh if fresh.size == 0 or int(fresh.min()) >= 0 else None


def _kafka_times(chunk: Sequence[Any], carried: int) -> np.ndarray | None:
    """The Kafka times of the chunk's fresh records (after the ``carried`` ones) when every one has a time
    >= 0, else None (the record-by-record rule then decides each)."""
    stamps = list(map(_KAFKA_TIME, itertools.islice(chunk, carried, None)))
    if None in stamps:
        return None
    try:
        times = np.asarray(stamps, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):  # not a Kafka time (a caller's own records): the rule decides
        return None
    return times if times.size == 0 or int(times.min()) >= 0 else None


def _record_offset(chunk: Sequence[Any], row: int) -> int:
    return int(chunk[row][1])


def _by_identity(offsets: Mapping[int, int], outcome: SearchOutcome) -> int | None:
    return offsets.get(id(outcome))


def recompute(
    records: Iterable[SourceRecord | tuple[int, int, int | None, bytes | None]],
    commands: Sequence[ControlCommand],
    *,
    settings: PipelineSettings | None = None,
    rules_override: Sequence[SLORule] | SLOPolicy | None = None,
    horizon_ms: int | None = None,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
    strict_decode: bool = False,
    command_times: Sequence[int | None] | None = None,
    apply_decisions: bool = True,
    external: Mapping[str, Mapping[str, float | str]] | None = None,
) -> Recomputation:
    """Recompute windows, verdicts and decisions.

    ``records``: ``(partition, offset, kafka_timestamp_ms, raw_value)`` of ``search_results``, any order
    across partitions. ``commands``: the control topic's *verified* commands in order (at least everything
    up to the span's end; what :mod:`canary.control` accepted — the readers that call this verify first:
    :func:`canary.control.records.verify_control_records`, :func:`canary.replay.reader.read_span`,
    :func:`canary.replay.dumpfile.load_span`), appended at ``command_times`` (their record timestamps; the
    ledger holds rollout commands to them). ``horizon_ms``: processing time reached after the input (the
    live tick closes windows up to it); default: each partition's last record time. Only candidate windows
    starting in ``[judge_from_ms, judge_until_ms)`` reach the judge (windows before the span are incomplete).
    Candidate windows in the result carry the judge's verdicts, as the live verdicts topic does.
    ``apply_decisions``: the SLO agent's loop feeds its own commands back into the control topic's ledger
    (:mod:`canary.pipeline.loop`); False: decisions against the recorded control topic alone. ``external``:
    the external metrics' values the live agent judged, per window id (:func:`canary.pipeline.loop.run_loop`).
    """
    settings = settings or PipelineSettings()
    ledger = fold_commands(commands, command_times)
    book = PolicyBook(ledger, rules_override)
    decoder = OutcomeDecoder(strict=strict_decode, native=settings.native)
    memory = request_memory("off" if strict_decode else settings.native)
    partials: list[tuple[int, ClosedWindow, WindowAggregate]] = []
    partitions: dict[int, PartitionStats] = {}
    invalid_samples: list[JSONDict] = []
    late_samples: list[JSONDict] = []
    by_partition = _by_partition(records, decoder.native)
    # The native decoder releases the GIL: one thread decodes each partition's next chunk meanwhile.
    ahead = decoder.native is not None and any(len(part.records) > _CHUNK for part in by_partition.values())
    pool_or_none = ThreadPoolExecutor(1, thread_name_prefix="canary-decode") if ahead else contextlib.nullcontext()
    with _collector_skips_what_exists(), pool_or_none as pool:
        for partition, part in sorted(by_partition.items()):
            fin = WindowFinalizer(
                size_ms=settings.window_ms,
                grace_ms=settings.grace_ms,
                idle_windows=settings.idle_windows,
                aggregator=book.aggregator_for,
                memory=memory,
            )
            out, stats = recompute_partition_partials(
                partition,
                part.records,
                fin,
                decoder,
                settings,
                horizon_ms,
                invalid_samples,
                late_samples,
                pool,
                part.times,
            )
            partials.extend((partition, c, c.aggregate) for c in out)
            partitions[partition] = stats
    # The live merge step: one window per key and slot from the partials of every partition.
    windows = merge_all(partials)

    loop = run_loop(
        windows,
        book,
        commands,
        command_times=command_times,
        grace_ms=settings.grace_ms,
        judge_from_ms=judge_from_ms,
        judge_until_ms=judge_until_ms,
        apply_decisions=apply_decisions,
        external=external,
    )
    windows = [loop.judged.get(w.window_id, w) for w in windows]
    deps = sorted({w.deployment_id for w in windows if w.deployment_id} | set(ledger.deployments))
    rules = {d: [r.to_dict() for r in book.rules(d)] for d in deps}
    policies = {d: book.policy(d).to_dict() for d in deps}
    return Recomputation(
        settings,
        windows,
        loop.judgements,
        loop.decisions,
        partitions,
        invalid_samples,
        late_samples,
        rules,
        policies,
        loop.set_aside,
        apply_decisions,
    )


def evaluate(
    windows: Sequence[WindowResult],
    book: PolicyBook,
    commands: Sequence[ControlCommand],
    settings: PipelineSettings,
    *,
    judge_from_ms: int | None = None,
    judge_until_ms: int | None = None,
    command_times: Sequence[int | None] | None = None,
    apply_decisions: bool = True,
) -> tuple[list[Judgement], list[PipelineDecision], dict[str, WindowResult]]:
    """The SLO agent's loop over the windows: :func:`canary.pipeline.loop.run_loop` (the pipeline owns it)."""
    loop = run_loop(
        windows,
        book,
        commands,
        command_times=command_times,
        grace_ms=settings.grace_ms,
        judge_from_ms=judge_from_ms,
        judge_until_ms=judge_until_ms,
        apply_decisions=apply_decisions,
    )
    return loop.judgements, loop.decisions, loop.judged


def span_bounds(from_ms: int, to_ms: int, settings: PipelineSettings) -> tuple[int, int]:
    """Reported windows: those starting in ``[window start of from_ms, to_ms)``."""
    return window_bounds(from_ms, settings.window_ms)[0], to_ms


def read_bounds(from_ms: int, to_ms: int, settings: PipelineSettings) -> tuple[int, int]:
    """Kafka-time range of ``search_results`` to read for a span: warm-up before, late arrivals after."""
    first, last = span_bounds(from_ms, to_ms, settings)
    end = window_bounds(max(last - 1, first), settings.window_ms)[1]
    return first - settings.lookback_ms, end + settings.lookahead_ms


def in_span(window: WindowResult | Mapping[str, Any], first_ms: int, until_ms: int, deployment_id: str | None) -> bool:
    if isinstance(window, WindowResult):
        start, dep = window.window_start_ms, window.deployment_id
    else:
        start, dep = int(window["window_start_ms"]), window.get("deployment_id")
    return first_ms <= start < until_ms and (deployment_id is None or dep == deployment_id)
