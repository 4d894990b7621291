"""The windows stage's consumer reads a fetch's bytes natively into runs: exactly what aiokafka reads.

aiokafka's ``PartitionRecords`` is the reference: the same fetch bytes (hand-built v2 batches, random keys,
values, headers, timestamps, compression, transactions committed and aborted, control batches, a torn last
batch, a bad CRC) must give the same records, the same next fetch offset and the same errors through
``canary.kafka.runs``; then both consumers read one real topic of a real broker.
"""

from __future__ import annotations

import asyncio
import random
import struct
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record._crc32c import crc as crc32c_py
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.kafka import runs as runs_module
from canary.kafka.runs import AVAILABLE, RunConsumer, _KeptBytes, _RunRecords
from canary.pipeline.native import NATIVE
from canary.pipeline.runs import RecordRun, SpanValues, offset_reader, values_of

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)")

TP = TopicPartition("t", 0)
GZIP = 1
READ_UNCOMMITTED = 0


def test_the_pinned_aiokafka_takes_the_native_reader() -> None:
    """If an aiokafka release renames what ``canary.kafka.runs`` rebinds, this fails (the stage would fall back)."""
    assert AVAILABLE
    assert runs_module.consumer_class() is RunConsumer


def test_crc32c_is_kafkas() -> None:
    rng = random.Random(7)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert NATIVE.crc32c(data) == crc32c_py(data)


# -- hand-built fetch bytes -------------------------------------------------------------------------------
def _batch(
    base_offset: int,
    records: list[tuple[int, int | None, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    *,
    compression: int = 0,
    transactional: bool = False,
    producer_id: int = -1,
) -> bytes:
    """One v2 batch: records ``(offset delta, timestamp, key, value, headers)`` at ``base_offset``."""
    builder = DefaultRecordBatchBuilder(
        2,
        compression,
        int(transactional),
        producer_id,
        0 if producer_id >= 0 else -1,
        0 if producer_id >= 0 else -1,
        1 << 30,
    )
    for delta, ts, key, value, headers in records:
        builder.append(delta, timestamp=ts, key=key, value=value, headers=headers)
    out = bytearray(builder.build())
    struct.pack_into(">q", out, 0, base_offset)
    return bytes(out)


def _recrc(batch: bytearray) -> bytes:
    struct.pack_into(">I", batch, 17, crc32c_py(bytes(batch[21:])))
    return bytes(batch)


def _with_attributes(batch: bytes, set_bits: int, max_timestamp: int | None = None) -> bytes:
    out = bytearray(batch)
    (attrs,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, attrs | set_bits)
    if max_timestamp is not None:
        struct.pack_into(">q", out, 35, max_timestamp)
    return _recrc(out)


def _control(base_offset: int, producer_id: int, abort: bool) -> bytes:
    key = struct.pack(">hh", 0, 0 if abort else 1)
    value = struct.pack(">hi", 0, 0)
    batch = _batch(base_offset, [(0, 1000, key, value, [])], transactional=True, producer_id=producer_id)
    return _with_attributes(batch, 0x20)


def _read(cls: type, data: bytes, fetch_offset: int, committed: bool, aborted: list[tuple[int, int]]) -> Any:
    """(records as (offset, timestamp, value), next fetch offset), or the exception type the read raised."""
    records = _KeptBytes(data) if cls is _RunRecords else MemoryRecords(data)
    level = READ_COMMITTED if committed else READ_UNCOMMITTED
    pr = cls(TP, records, list(aborted), fetch_offset, None, None, True, level)
    out = []
    try:
        for item in pr:
            if isinstance(item, RecordRun):
                out.extend((r.offset, r.timestamp, r.value) for r in item)
            else:
                out.append((item.offset, item.timestamp, item.value))
    except Exception as exc:
        return type(exc)
    return out, pr.next_fetch_offset


def _random_fetch(rng: random.Random) -> tuple[bytes, int, list[tuple[int, int]]]:
    parts: list[bytes] = []
    aborted: list[tuple[int, int]] = []
    offset = rng.randrange(0, 1 << 40)
    first = offset
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(["plain", "plain", "txn", "txn_abort", "gzip", "append_time", "control"])
        if kind == "control":
            pid = rng.choice([5, 6])
            parts.append(_control(offset, pid, abort=rng.random() < 0.5))
            offset += 1
            continue
        n = rng.randint(1, 8)
        recs = []
        delta = 0
        for _ in range(n):
            value = rng.choice([None, b"", b"{}", bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))])
            key = rng.choice([None, b"k", uuid.uuid4().bytes])
            headers = [("h", rng.choice([None, b"v"]))] if rng.random() < 0.3 else []
            recs.append((delta, rng.randrange(0, 1 << 41), key, value, headers))
            delta += rng.choice([1, 1, 1, 2])  # compaction leaves gaps
        pid = rng.choice([5, 6]) if kind.startswith("txn") else -1
        batch = _batch(offset, recs, compression=GZIP if kind == "gzip" else 0, transactional=pid >= 0, producer_id=pid)
        if kind == "append_time":
            batch = _with_attributes(batch, 0x08, max_timestamp=rng.randrange(0, 1 << 41))
        if kind == "txn_abort":
            aborted.append((pid, offset))
        parts.append(batch)
        offset += delta
    data = b"".join(parts)
    if rng.random() < 0.2:
        data = data[: rng.randint(len(data) - len(parts[-1]), len(data))]  # a fetch that ends inside a batch
    fetch_offset = first + rng.choice([0, 0, 0, 1, 3])
    return data, fetch_offset, aborted


def test_runs_read_the_same_records_as_aiokafka_on_random_fetches() -> None:
    rng = random.Random(24)
    native = 0
    for _ in range(600):
        data, fetch_offset, aborted = _random_fetch(rng)
        for committed in (True, False):
            want = _read(PartitionRecords, data, fetch_offset, committed, aborted)
            got = _read(_RunRecords, data, fetch_offset, committed, aborted)
            assert got == want, (data.hex(), fetch_offset, committed, aborted)
        native += (
            NATIVE.parse_records(data, fetch_offset, read_committed=True, aborted=aborted, check_crcs=True) is not None
        )
    assert native > 200  # most fetches are plain: the native reader, not the fallback, was compared


def test_damaged_fetch_bytes_are_read_as_aiokafka_reads_them() -> None:
    """Bytes flipped anywhere (lengths, counts, offsets, varints, attributes), with and without the CRC check:
    the native reader never fails on its own — it reads what aiokafka reads, or leaves the bytes to aiokafka."""
    rng = random.Random(37)
    for _ in range(1500):
        data, fetch_offset, aborted = _random_fetch(rng)
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        for check in (True, False):
            native = NATIVE.parse_records(
                bytes(damaged), fetch_offset, read_committed=True, aborted=aborted, check_crcs=check
            )
            assert native is None or isinstance(native[1], int)
        got = _read(_RunRecords, bytes(damaged), fetch_offset, True, aborted)
        want = _read(PartitionRecords, bytes(damaged), fetch_offset, True, aborted)
        assert got == want, (bytes(damaged).hex(), fetch_offset, aborted)
    huge = bytearray(_batch(0, [(0, 5, b"k", b"v", [])]))
    struct.pack_into(">i", huge, 57, 2**31 - 1)  # a count no batch can hold: refused, nothing reserved for it
    assert NATIVE.parse_records(_recrc(huge), 0, read_committed=False, aborted=[], check_crcs=True) is None
    top = bytearray(_batch(2**63 - 1, [(0, 5, b"k", b"v", [])]))  # the next offset would overflow
    assert NATIVE.parse_records(bytes(top), 0, read_committed=False, aborted=[], check_crcs=True) is None


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=200),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    fetch_offset=st.integers(min_value=-5, max_value=20),
    check=st.booleans(),
)
def test_any_bytes_are_read_as_aiokafka_reads_them(
    prefix: bytes, flips: list[tuple[int, int]], fetch_offset: int, check: bool
) -> None:
    """Hypothesis: arbitrary bytes, or a valid batch with bytes flipped, never make the native reader fail on its
    own; the records class reads what aiokafka reads, or raises what it raises."""
    data = bytearray(prefix + _batch(0, [(0, 5, b"k", b"v", [("h", None)]), (1, 6, None, b"w", [])]))
    for at, byte in flips:
        data[at % len(data)] = byte
    parsed = NATIVE.parse_records(bytes(data), fetch_offset, read_committed=True, aborted=[], check_crcs=check)
    assert parsed is None or (isinstance(parsed[0], bytes) and isinstance(parsed[1], int))
    assert _read(_RunRecords, bytes(data), fetch_offset, True, []) == _read(
        PartitionRecords, bytes(data), fetch_offset, True, []
    )


def test_a_bad_crc_is_aiokafkas_error() -> None:
    batch = bytearray(_batch(10, [(0, 5, b"k", b"value", [])]))
    batch[-1] ^= 0xFF
    assert NATIVE.parse_records(bytes(batch), 10, read_committed=False, aborted=[], check_crcs=True) is None
    assert _read(_RunRecords, bytes(batch), 10, False, []) is CorruptRecordException
    assert _read(PartitionRecords, bytes(batch), 10, False, []) is CorruptRecordException


def test_framing_that_does_not_add_up_is_left_to_aiokafka() -> None:
    batch = bytearray(_batch(0, [(0, 5, b"k", b"value", []), (1, 6, None, b"v2", [])]))
    struct.pack_into(">i", batch, 57, 3)  # claims 3 records, holds 2
    bad = _recrc(batch)
    assert NATIVE.parse_records(bad, 0, read_committed=False, aborted=[], check_crcs=True) is None
    assert _read(_RunRecords, bad, 0, False, []) == _read(PartitionRecords, bad, 0, False, [])


def test_a_failing_native_reader_leaves_the_bytes_to_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _batch(0, [(0, 5, b"k", b"v", []), (1, 6, None, b"w", [])])

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(NATIVE, name)

        def parse_records(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

    monkeypatch.setattr(runs_module, "NATIVE", Broken())
    assert _read(_RunRecords, data, 0, True, []) == _read(PartitionRecords, data, 0, True, [])


# -- runs --------------------------------------------------------------------------------------------------
def test_a_run_is_a_sequence_of_records_and_its_values_are_views() -> None:
    data = _batch(100, [(0, 7, b"a", b"one", []), (1, 8, None, None, []), (2, 9, b"c", b"three", [("h", b"x")])])
    entries, next_offset = NATIVE.parse_records(data, 100, read_committed=True, aborted=[], check_crcs=True)
    run = RecordRun("t", 3, buffer=data, entries=entries)
    assert next_offset == 103 and len(run) == 3 and run.native
    assert [(r.partition, r.offset, r.timestamp, r.value) for r in run] == [
        (3, 100, 7, b"one"),
        (3, 101, 8, None),
        (3, 102, 9, b"three"),
    ]
    assert run[-1].offset == 102 and run.first_offset == 100 and run.last_offset == 102
    values = values_of(run)
    assert isinstance(values, SpanValues)
    assert list(values) == [b"one", None, b"three"] and values[-1] == b"three"
    assert list(values[1:]) == [None, b"three"] and len(values[5:]) == 0
    assert offset_reader(run)(2) == 102
    with pytest.raises(IndexError):
        run[3]
    objects = RecordRun("t", 3, records=list(run))
    assert not objects.native and values_of(objects) == [b"one", None, b"three"] and objects.last_offset == 102
    with pytest.raises(ValueError):
        RecordRun("t", 0)


# -- a real broker ---------------------------------------------------------------------------------------
async def _read_all(
    consumer: AIOKafkaConsumer, topic: str, ends: dict[TopicPartition, int]
) -> tuple[list[Any], list[int]]:
    out: list[Any] = []
    runs = [0, 0]  # native, aiokafka's records
    await consumer.start()
    try:
        tps = list(ends)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for _ in range(200):
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                if isinstance(records, RecordRun):
                    runs[0 if records.native else 1] += 1
                out.extend((tp.partition, r.offset, r.timestamp, r.value) for r in records)
    finally:
        await consumer.stop()
    return sorted(out), runs


async def _two_partitions(bootstrap: str, prefix: str) -> str:
    """A new topic of two partitions."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    return topic


def test_both_consumers_read_one_real_topic_alike(kafka_bootstrap: str) -> None:
    async def main() -> None:
        topic = await _two_partitions(kafka_bootstrap, "runs")
        plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        gzip = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="gzip")
        txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"runs-{uuid.uuid4().hex[:6]}")
        for p in (plain, gzip, txn):
            await p.start()
        try:
            for i in range(300):
                await plain.send(topic, f'{{"i":{i}}}'.encode(), key=str(i).encode(), partition=i % 2)
                if i % 50 == 0:
                    await plain.send(topic, None, key=b"tombstone", partition=i % 2)
            await plain.flush()
            for i in range(40):
                await gzip.send(topic, f"gz{i}".encode() * 20, partition=0)  # partition 0's fetches: aiokafka's
            await gzip.flush()
            for round_ in range(4):
                async with txn.transaction():
                    for i in range(25):
                        await txn.send(topic, f"committed {round_} {i}".encode(), partition=i % 2)
                await txn.begin_transaction()
                for i in range(25):
                    await txn.send(topic, f"aborted {round_} {i}".encode(), partition=i % 2)
                await txn.abort_transaction()
            for i in range(100):
                await plain.send(topic, f"tail {i}".encode(), partition=i % 2)
            await plain.flush()
        finally:
            for p in (plain, gzip, txn):
                await p.stop()
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        probe = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed")
        await probe.start()
        try:
            ends = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        for level in ("read_committed", "read_uncommitted"):
            kwargs = {"bootstrap_servers": kafka_bootstrap, "isolation_level": level, "enable_auto_commit": False}
            want, _ = await _read_all(AIOKafkaConsumer(**kwargs), topic, ends)
            got, (native, objects) = await _read_all(RunConsumer(**kwargs), topic, ends)
            assert got == want
            assert native > 0 and objects > 0  # partition 1 read natively, partition 0 (gzip) by aiokafka
            values = [v for *_, v in got]
            assert values.count(None) == 6 and sum(1 for v in values if v and v.startswith(b"gz")) == 40
            aborted = sum(1 for v in values if v and v.startswith(b"aborted"))
            assert aborted == (0 if level == "read_committed" else 100)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_the_run_consumer_reads_its_frames_with_the_frame_reader(kafka_bootstrap: str) -> None:
    """Fetch responses of megabytes (far above the reader's 64 KiB limit) come whole through canary.kafka.frames,
    on the run consumer's connections only."""
    from canary.kafka.frames import FrameReader

    async def main() -> None:
        topic = await _two_partitions(kafka_bootstrap, "frames")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 << 20, linger_ms=20)
        await producer.start()
        try:
            for i in range(600):
                await producer.send(topic, bytes([i % 251]) * (8_000 + i), key=str(i).encode(), partition=i % 2)
            await producer.flush()
        finally:
            await producer.stop()
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        kwargs = {
            "bootstrap_servers": kafka_bootstrap,
            "enable_auto_commit": False,
            "max_partition_fetch_bytes": 4 << 20,
        }
        probe = AIOKafkaConsumer(**kwargs)
        await probe.start()
        try:
            ends = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        want, _ = await _read_all(AIOKafkaConsumer(**kwargs), topic, ends)
        consumer = RunConsumer(**kwargs)
        readers: list[Any] = []
        original = consumer.getmany

        async def getmany(*args: Any, **kw: Any) -> Any:
            readers.extend(type(conn._reader) for conn in consumer._client._conns.values())
            return await original(*args, **kw)

        consumer.getmany = getmany  # type: ignore[method-assign]
        got, (native, _objects) = await _read_all(consumer, topic, ends)
        assert got == want and len(got) == 600 and native > 0
        assert readers and set(readers) == {FrameReader}
        plain = AIOKafkaConsumer(**kwargs)  # other consumers in the process keep aiokafka's own reader
        await plain.start()
        try:
            await plain.end_offsets(tps)
            assert {type(conn._reader) for conn in plain._client._conns.values()} == {asyncio.StreamReader}
        finally:
            await plain.stop()

    asyncio.run(asyncio.wait_for(main(), 120))
