"""The thin Kafka side of a replay: read a time span of the topics a replay needs.

Offsets come from the records' timestamps (``offsets_for_times``): ``search_results`` (every
partition) from a little before the span to a little after it (see :func:`read_bounds`), the control
topic from the beginning to the end of that range (so every deployment and its rules are known), the
windows topic from the first reported window on (the live figures to compare with) and the outcome
dead-letter topic over the range (outcomes the live worker marked late). Values stay raw bytes for
``search_results``; decoding is the recomputation's job.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import operator
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from canary.control import fold_records, resolve
from canary.core import wire
from canary.core.judge import Judgement
from canary.core.models import ControlCommand, JSONDict, WindowResult
from canary.errors import CanaryError, KafkaError
from canary.kafka.clients import Cluster, consumer_kwargs
from canary.kafka.runs import consumer_class
from canary.kafka.topics import Topics, topic_partitions
from canary.pipeline.recompute import read_bounds, span_bounds
from canary.pipeline.runs import RecordRun
from canary.pipeline.settings import PipelineSettings
from canary.replay.span import RecordTuple, SpanData
from canary.security import CommandVerifier
from canary.settings import NativeMode


def new_consumer(bootstrap: Cluster, *, native: NativeMode = "off") -> AIOKafkaConsumer:
    """A group-less consumer tuned for bulk reads (big fetches, no CRC re-check on loopback data). ``native``
    not ``off``: each partition's fetch read natively into one run where the extension is
    (:func:`canary.kafka.runs.consumer_class`)."""
    return consumer_class(native)(
        **consumer_kwargs(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        check_crcs=False,
    )


_OFFSET = operator.itemgetter(1)


async def offset_ranges(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], from_ms: int | None, to_ms: int | None
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition ``[first offset with timestamp >= from_ms, first offset with timestamp >= to_ms)``;
    ``None`` bounds mean the beginning / the current end."""
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    begins = await consumer.beginning_offsets(tps)

    async def lookup(ts: int | None, default: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        if ts is None:
            return dict(default)
        found = await consumer.offsets_for_times({tp: max(0, ts) for tp in tps})
        return {tp: (ends[tp] if found.get(tp) is None else found[tp].offset) for tp in tps}

    starts = await lookup(from_ms, begins)
    stops = await lookup(to_ms, ends)
    return {tp: (starts[tp], max(starts[tp], stops[tp])) for tp in tps}


async def read_ranges(
    consumer: AIOKafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    sink: Callable[[Any], None],
    timeout: float,
    many: Callable[[list[RecordTuple]], None] | None = None,
) -> int:
    """Feed every record in the offset ranges to ``sink`` in offset order per partition; returns the count.
    ``many``: where the consumer returns runs (:mod:`canary.kafka.runs`), their records go to it as
    ``(partition, offset, timestamp, value)`` tuples, a run at a time."""
    active = {tp: stop for tp, (start, stop) in ranges.items() if stop > start}
    if not active:
        return 0
    consumer.assign(list(active))
    for tp in active:
        consumer.seek(tp, ranges[tp][0])
    count = 0
    deadline = time.monotonic() + timeout
    while active:
        if time.monotonic() > deadline:
            left = {f"{tp.topic}[{tp.partition}]": stop for tp, stop in active.items()}
            raise KafkaError(f"reading timed out after {timeout:.0f}s; still reading up to {left}")
        batch = await consumer.getmany(*active, timeout_ms=500)
        for tp, records in batch.items():
            stop = active.get(tp)
            if stop is None:
                continue
            if many is not None and isinstance(records, RecordRun):
                rows = records.tuples()
                if rows and rows[-1][1] >= stop:
                    rows = rows[: bisect.bisect_left(rows, stop, key=_OFFSET)]
                many(rows)
                count += len(rows)
                continue
            if records and records[-1].offset < stop:
                for r in records:
                    sink(r)
                count += len(records)
            else:
                for r in records:
                    if r.offset >= stop:
                        break
                    sink(r)
                    count += 1
        for tp in list(active):
            # Position, not the last record: transaction markers and compaction leave offset gaps.
            if await consumer.position(tp) >= active[tp]:
                del active[tp]
                consumer.pause(tp)
    return count


async def read_outcome_records(
    consumer: AIOKafkaConsumer, topic: str, from_ms: int | None, to_ms: int | None, timeout: float = 600.0
) -> tuple[list[RecordTuple], dict[int, tuple[int, int]]]:
    tps = await topic_partitions(consumer, topic)
    ranges = await offset_ranges(consumer, tps, from_ms, to_ms)
    out: list[RecordTuple] = []
    append = out.append

    def sink(r: Any) -> None:
        append((r.partition, r.offset, r.timestamp, r.value))

    await read_ranges(consumer, ranges, sink, timeout, many=out.extend)
    return out, {tp.partition: r for tp, r in ranges.items()}


async def read_span(
    bootstrap: Cluster,
    topics: Topics,
    from_ms: int,
    to_ms: int,
    settings: PipelineSettings | None = None,
    *,
    with_live: bool = True,
    timeout: float = 600.0,
    verifier: CommandVerifier | None = None,
) -> SpanData:
    """Read everything a replay of ``[from_ms, to_ms)`` needs. The control topic is read from its beginning
    and verified as the live readers verify it (``verifier``; None: the process settings' for
    ``topics.control``): a rejected command is counted in ``invalid_commands``, never applied."""
    verifier = resolve(verifier, topics.control)
    settings = settings or PipelineSettings()
    read_from, read_to = read_bounds(from_ms, to_ms, settings)
    first_window, _ = span_bounds(from_ms, to_ms, settings)
    # Two consumers: the small topics' reads (each mostly a broker round trip) overlap the bulk read.
    bulk, side = new_consumer(bootstrap, native=settings.native), new_consumer(bootstrap)
    try:
        await asyncio.wait_for(asyncio.gather(bulk.start(), side.start()), 15)
    except Exception as exc:
        for c in (bulk, side):
            with contextlib.suppress(Exception):
                await c.stop()
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    seconds: dict[str, float] = {}
    read_at = time.time_ns() // 1_000_000

    async def outcomes() -> tuple[list[RecordTuple], dict[int, tuple[int, int]]]:
        started = time.perf_counter()
        out = await read_outcome_records(bulk, topics.search_results, read_from, read_to, timeout)
        seconds["search_results"] = time.perf_counter() - started
        return out

    async def the_rest() -> tuple[
        list[ControlCommand],
        list[int | None],
        int,
        dict[TopicPartition, tuple[int, int]],
        list[WindowResult],
        int,
        list[JSONDict],
    ]:
        started = time.perf_counter()
        raw_commands: list[bytes | None] = []
        raw_times: list[int | None] = []
        control_tps = await topic_partitions(side, topics.control)
        control_ranges = await offset_ranges(side, control_tps, None, read_to)

        def control_record(r: Any) -> None:
            raw_commands.append(r.value)
            raw_times.append(r.timestamp)

        await read_ranges(side, control_ranges, control_record, timeout)
        commands, command_times, invalid_commands = parse_commands_timed(raw_commands, raw_times, verifier)
        seconds["control"] = time.perf_counter() - started

        live_windows: list[WindowResult] = []
        invalid_windows = 0
        live_late: list[JSONDict] = []
        if with_live:
            started = time.perf_counter()
            raw_windows: list[bytes | None] = []
            win_tps = await topic_partitions(side, topics.windows)
            await read_ranges(
                side,
                await offset_ranges(side, win_tps, first_window, None),
                lambda r: raw_windows.append(r.value),
                timeout,
            )
            raw_verdicts: list[bytes | None] = []
            verdict_tps = await topic_partitions(side, topics.verdicts, required=False)
            await read_ranges(
                side,
                await offset_ranges(side, verdict_tps, first_window, None),
                lambda r: raw_verdicts.append(r.value),
                timeout,
            )
            live_windows, invalid_windows = parse_windows(raw_windows, raw_verdicts)
            seconds["windows"] = time.perf_counter() - started

            started = time.perf_counter()
            dlq_tps = await topic_partitions(side, topics.results_dlq, required=False)
            raw_dlq: list[bytes | None] = []
            await read_ranges(
                side,
                await offset_ranges(side, dlq_tps, read_from, None),
                lambda r: raw_dlq.append(r.value),
                timeout,
            )
            live_late = parse_late_dead_letters(raw_dlq)
            seconds["dead_letters"] = time.perf_counter() - started
        return commands, command_times, invalid_commands, control_ranges, live_windows, invalid_windows, live_late

    try:
        (records, result_offsets), rest = await asyncio.gather(outcomes(), the_rest())
        commands, command_times, invalid_commands, control_ranges, live_windows, invalid_windows, live_late = rest
    finally:
        for c in (bulk, side):
            with contextlib.suppress(Exception):
                await c.stop()
    return SpanData(
        from_ms=from_ms,
        to_ms=to_ms,
        read_from_ms=read_from,
        read_to_ms=read_to,
        horizon_ms=min(read_to, read_at),
        records=records,
        commands=commands,
        command_times=command_times,
        live_windows=live_windows,
        live_late=live_late,
        invalid_commands=invalid_commands,
        invalid_windows=invalid_windows,
        read_seconds=seconds,
        offsets={
            topics.search_results: result_offsets,
            topics.control: {tp.partition: r for tp, r in control_ranges.items()},
        },
    )


def parse_commands(raws: list[bytes | None], verifier: CommandVerifier) -> tuple[list[ControlCommand], int]:
    commands, _, invalid = parse_commands_timed(raws, [None] * len(raws), verifier)
    return commands, invalid


def parse_commands_timed(
    raws: list[bytes | None], times: list[int | None], verifier: CommandVerifier
) -> tuple[list[ControlCommand], list[int | None], int]:
    """The commands among control records appended at ``times`` that ``verifier`` accepts, in topic order
    (:func:`canary.control.fold_records`), with their append times; how many were not (malformed or
    rejected)."""
    history = fold_records(raws, verifier, times)
    commands, accepted_times = history.accepted_commands()
    return commands, accepted_times, len(history.outcomes) - len(commands)


def parse_windows(
    raws: list[bytes | None], raw_verdicts: list[bytes | None] | None = None
) -> tuple[list[WindowResult], int]:
    """Live windows; a candidate window the SLO agent judged (``canary_verdicts``) replaces its unjudged
    copy from ``canary_windows``, so live windows carry verdicts as replayed ones do."""
    out: list[WindowResult] = []
    invalid = 0
    judged: dict[str, WindowResult] = {}
    for raw in raw_verdicts or []:
        try:
            window = Judgement.from_dict(wire.decode_object(raw, wire.JUDGEMENT)).window
        except (CanaryError, ValueError, TypeError, KeyError, AttributeError):
            invalid += 1
            continue
        judged.setdefault(window.window_id, window)
    for raw in raws:
        try:
            window = WindowResult.from_dict(wire.decode_object(raw, wire.WINDOW))
        except (CanaryError, ValueError, TypeError, KeyError, AttributeError):
            invalid += 1
            continue
        out.append(judged.get(window.window_id, window))
    return out, invalid


def parse_late_dead_letters(raws: list[bytes | None]) -> list[JSONDict]:
    """Outcomes the live windows agent dead-lettered as late, with when it did so."""
    out: list[JSONDict] = []
    for raw in raws:
        try:
            rec = wire.decode_object(raw, wire.DEAD_LETTER)
            if not str(rec.get("reason", "")).startswith("late"):
                continue
            outcome = wire.decode_object(rec["raw"], wire.OUTCOME)
            key = f"{outcome.get('deployment_id') or '-'}|{outcome.get('config_name')}|{outcome.get('arm')}"
            out.append(
                {
                    "partition": rec.get("partition"),
                    "event_id": outcome.get("event_id"),
                    "ts": outcome.get("ts"),
                    "key": key,
                    "dead_lettered_at_ms": rec.get("dead_lettered_at_ms"),
                }
            )
        except (CanaryError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return out
