"""A consumer that returns each partition's fetch as one :class:`~canary.pipeline.runs.RecordRun`.

Why: aiokafka builds a Python ``ConsumerRecord`` per record — a fifth of a backlog windows worker's CPU
(docs/adr/0006-native-batch-core.md, "Built: reading the fetch's bytes"). This consumer is aiokafka's own —
its group membership, fetcher, positions, rebalances and errors are untouched — except for what one fetched
partition becomes: the native reader (``canary_native.parse_records``) reads the fetch's record bytes the way
aiokafka's ``PartitionRecords`` does (read-committed rules included) into a table of offsets, timestamps and
value positions, and ``getmany`` returns ``{partition: RecordRun}``. Whatever the native reader does not take
as plain (compressed batches, older formats, a CRC that does not match, framing that does not add up)
aiokafka reads as always, and its records become the run; errors are aiokafka's.

How, without patching aiokafka for other consumers in the process (Faust's): two of aiokafka's functions are
rebound to a namespace where ``Fetcher`` / ``MemoryRecords`` / ``PartitionRecords`` are ours
(:func:`_rebound`) — the same code, not a copy. Should an aiokafka release rename what they use,
:data:`AVAILABLE` is False and the windows stage uses a plain consumer (a warning says so); the tests assert
it is True with the aiokafka this project pins.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import client as _client_module
from aiokafka import conn as _conn_module
from aiokafka.consumer import fetcher as _fetcher_module

from canary.kafka.frames import FrameReader
from canary.pipeline.native import NATIVE
from canary.pipeline.runs import ENTRY, RecordRun
from canary.settings import NativeMode

log = logging.getLogger(__name__)


def _rebound(func: Callable[..., Any], **names: Any) -> Callable[..., Any] | None:
    """``func``'s code with these global names bound to other objects (None if it does not use them all)."""
    code = func.__code__
    if not set(names) <= set(code.co_names):
        return None
    namespace = dict(func.__globals__)
    namespace.update(names)
    out = types.FunctionType(code, namespace, func.__name__, func.__defaults__, func.__closure__)
    out.__kwdefaults__ = func.__kwdefaults__
    out.__qualname__ = func.__qualname__
    out.__doc__ = func.__doc__
    return out


class _KeptBytes:
    """aiokafka's ``MemoryRecords`` for one partition's fetch, keeping the bytes it reads (the C class hides them)."""

    __slots__ = ("_records", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = _fetcher_module.MemoryRecords(data)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def next_batch(self) -> Any:
        return self._records.next_batch()


class _RunRecords(_fetcher_module.PartitionRecords):  # type: ignore[misc]
    """One partition's fetch, yielded as one run (aiokafka's ``FetchResult`` counts it as one record)."""

    def _unpack_records(self) -> Iterator[RecordRun]:
        tp: TopicPartition = self._tp
        raw = self._records.data
        fetch_offset = int(self.next_fetch_offset)  # type: ignore[has-type]
        assert NATIVE is not None
        try:
            parsed = NATIVE.parse_records(
                raw,
                fetch_offset,
                read_committed=self._isolation_level == _fetcher_module.READ_COMMITTED,
                aborted=[(int(p), int(o)) for p, o in self._aborted_transactions],
                check_crcs=bool(self._check_crcs),
            )
        except Exception:  # a bug in the extension (it refuses what it cannot read): aiokafka reads the bytes
            log.exception("the native record reader failed on %s (%d bytes); aiokafka reads them", tp, len(raw))
            parsed = None
        if parsed is None:  # not plain v2: aiokafka reads it (and raises what it raises)
            records = list(super()._unpack_records())
            if records:
                yield RecordRun(tp.topic, tp.partition, records=records)
            return
        entries, next_offset = parsed
        self.next_fetch_offset = next_offset  # before the yield: FetchResult may read it on the first item
        if entries:
            yield RecordRun(tp.topic, tp.partition, buffer=raw, entries=entries)


_proc_fetch_request = _rebound(
    _fetcher_module.Fetcher._proc_fetch_request, MemoryRecords=_KeptBytes, PartitionRecords=_RunRecords
)


class _RunFetcher(_fetcher_module.Fetcher):  # type: ignore[misc]
    pass


_start: Callable[..., Any] | None = None
if _proc_fetch_request is not None:
    _RunFetcher._proc_fetch_request = _proc_fetch_request
    _start = _rebound(AIOKafkaConsumer.start, Fetcher=_RunFetcher)

# The consumer's connections read Kafka's frames with FrameReader (canary.kafka.frames: a fetch response joined
# once, not appended to a buffer and copied out of it): aiokafka's connection, its `create_conn` and its client's
# `_get_conn` with `asyncio.StreamReader`, `AIOKafkaConnection` and `create_conn` bound to ours.
_asyncio_with_frames = types.SimpleNamespace(**{**vars(asyncio), "StreamReader": FrameReader})
_connect = _rebound(_conn_module.AIOKafkaConnection.connect, asyncio=_asyncio_with_frames)


class _FrameConnection(_conn_module.AIOKafkaConnection):  # type: ignore[misc]
    pass


_create_conn = _rebound(_conn_module.create_conn, AIOKafkaConnection=_FrameConnection)
_get_conn = _rebound(_client_module.AIOKafkaClient._get_conn, create_conn=_create_conn)


class _FrameClient(_client_module.AIOKafkaClient):  # type: ignore[misc]
    pass


_init: Callable[..., Any] | None = None
if _connect is not None and _create_conn is not None and _get_conn is not None:
    _FrameConnection.connect = _connect
    _FrameClient._get_conn = _get_conn
    _init = _rebound(AIOKafkaConsumer.__init__, AIOKafkaClient=_FrameClient)
if _init is None:
    log.warning(
        "aiokafka's connection code is not as canary.kafka.runs expects: the bulk readers read frames as aiokafka does"
    )

# The native reader and aiokafka's functions as this module expects them.
AVAILABLE = NATIVE is not None and _start is not None and getattr(NATIVE, "ENTRY_BYTES", None) == ENTRY.itemsize


class RunConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """``AIOKafkaConsumer`` whose ``getmany`` returns ``{partition: RecordRun}`` (raw values: no deserializers)."""

    def __init__(self, *topics: str, **kwargs: Any) -> None:
        if not AVAILABLE:
            raise RuntimeError("RunConsumer: the native record reader is not available (see canary.kafka.runs)")
        if kwargs.get("key_deserializer") or kwargs.get("value_deserializer"):
            raise ValueError("RunConsumer: runs carry raw bytes; no deserializers")
        if _init is not None:
            _init(self, *topics, **kwargs)
        else:  # an aiokafka whose connection code moved: its own reading (a warning at import says so)
            super().__init__(*topics, **kwargs)

    async def start(self) -> None:
        assert _start is not None
        await _start(self)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        """``{partition: RecordRun}``: each partition's buffered fetch whole (``max_records`` counts runs)."""
        fetched = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        out: dict[TopicPartition, RecordRun] = {}
        for tp, runs in fetched.items():
            if len(runs) == 1:
                out[tp] = runs[0]
            elif runs:  # not with aiokafka today (one fetch result per partition at a time); kept exact anyway
                records = [r for run in runs for r in run]
                out[tp] = RecordRun(tp.topic, tp.partition, records=records)
        return out


def consumer_class(native: NativeMode = "auto") -> type[AIOKafkaConsumer]:
    """The consumer of the bulk readers (the windows stage, replay's ``search_results``): :class:`RunConsumer`
    where the native reader is and ``native`` (``CANARY_NATIVE``) is not ``off``, else aiokafka's own."""
    return RunConsumer if AVAILABLE and native != "off" else AIOKafkaConsumer
