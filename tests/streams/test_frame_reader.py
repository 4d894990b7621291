"""canary.kafka.frames.FrameReader against asyncio.StreamReader: the same reads, ends and flow control."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.kafka.frames import FrameReader


class _Transport:
    """What a reader asks of its transport: pausing and resuming reads."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False


async def _session(cls: type[asyncio.StreamReader], stream: bytes, cuts: list[int], asks: list[int], end: str) -> Any:
    """Feed ``stream`` in pieces cut at ``cuts`` while reading ``asks`` sizes with readexactly; then end the stream
    (``eof`` or ``error``). Returns every read's outcome in order."""
    reader = cls(limit=16)
    reader.set_transport(_Transport())  # type: ignore[arg-type]
    out: list[Any] = []

    async def read() -> None:
        for n in asks:
            try:
                out.append(await reader.readexactly(n))
            except asyncio.IncompleteReadError as exc:
                out.append(("incomplete", exc.partial, exc.expected))
                return
            except (ValueError, RuntimeError) as exc:
                out.append((type(exc).__name__, str(exc)))
                return

    task = asyncio.ensure_future(read())
    at = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        piece = stream[at:cut]
        if piece:
            reader.feed_data(piece)
        at = max(at, cut)
        await asyncio.sleep(0)
    if end == "eof":
        reader.feed_eof()
    else:
        reader.set_exception(RuntimeError("connection reset"))
    await asyncio.wait_for(task, 5)
    return out, reader.at_eof()


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=30),
    asks=st.lists(st.integers(-1, 120), max_size=12),
    end=st.sampled_from(["eof", "error"]),
)
def test_reads_ends_and_errors_are_stream_readers(stream: bytes, cuts: list[int], asks: list[int], end: str) -> None:
    want = asyncio.run(_session(asyncio.StreamReader, stream, cuts, asks, end))
    got = asyncio.run(_session(FrameReader, stream, cuts, asks, end))
    assert got == want


def test_a_frame_larger_than_the_limit_is_read_without_pausing_and_a_backlog_pauses() -> None:
    async def main() -> None:
        reader = FrameReader(limit=16)
        transport = _Transport()
        reader.set_transport(transport)  # type: ignore[arg-type]
        frame = bytes(range(256)) * 4
        stream = struct.pack(">i", len(frame)) + frame
        waiting = asyncio.ensure_future(reader.readexactly(4))
        await asyncio.sleep(0)
        reader.feed_data(stream[:4])
        size = struct.unpack(">i", await waiting)[0]
        body = asyncio.ensure_future(reader.readexactly(size))
        await asyncio.sleep(0)
        for i in range(4, len(stream), 100):  # a pending read wants all of it: no pause while it comes
            reader.feed_data(stream[i : i + 100])
        assert await body == frame and transport.pauses == 0
        reader.feed_data(b"x" * 40)  # nobody reading: more than twice the limit waits, the transport pauses
        assert transport.paused
        assert await reader.readexactly(40) == b"x" * 40 and not transport.paused

    asyncio.run(main())


def test_a_whole_read_is_handed_over_without_a_copy() -> None:
    async def main() -> None:
        reader = FrameReader()
        piece = b"abc" * 1000
        reader.feed_data(piece)
        assert await reader.readexactly(len(piece)) is piece

    asyncio.run(main())


@pytest.mark.parametrize("name", ["read", "readline", "readuntil"])
def test_other_reads_are_refused(name: str) -> None:
    async def main() -> None:
        await getattr(FrameReader(), name)()

    with pytest.raises(NotImplementedError, match="readexactly only"):
        asyncio.run(main())
