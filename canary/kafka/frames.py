"""A stream reader for Kafka's framing that keeps the socket's reads as they came and joins each frame once.

Why: aiokafka reads every response as ``readexactly(4)`` then ``readexactly(size)`` from an ``asyncio.StreamReader``,
which appends each socket read to one ``bytearray`` (a copy, and reallocations as it grows to the response's size),
copies the response out of it (a second copy) and moves what follows to its front; with a response larger than
twice its limit (64 KiB in aiokafka: a fetch response is megabytes) it also pauses and resumes the transport at every
read. For a backlog windows worker that was ~12 % of the main thread at 3 window keys (py-spy; ADR 0006, session 47),
0.30–0.53 ms a MiB against 0.20–0.22 for this reader in an isolated loop of 6 MiB frames fed in 256 KiB reads.

Only ``readexactly`` is served (all aiokafka's connection reads); the other reads of ``StreamReader`` raise
``NotImplementedError``. End of stream, exceptions and flow control keep ``StreamReader``'s contract: an end inside a
frame raises ``IncompleteReadError`` with the bytes that came, an exception set on the reader is raised by the next
read, and the transport is paused while more than twice the limit waits unread beyond what a pending read wants.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn


class FrameReader(asyncio.StreamReader):
    """``asyncio.StreamReader`` for ``readexactly`` alone: reads kept as they came, a frame joined once."""

    # StreamReader's own state and helpers, which its type stub does not declare.
    _eof: bool
    _paused: bool
    _transport: Any
    _limit: int
    _exception: BaseException | None
    _wakeup_waiter: Callable[[], None]
    _wait_for_data: Callable[[str], Awaitable[None]]

    def __init__(self, limit: int = 2**16, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._chunks: deque[bytes] = deque()
        self._have = 0  # bytes in _chunks not read yet
        self._head = 0  # of _chunks[0], already read
        self._wanted = 0  # what a pending readexactly waits for

    def __repr__(self) -> str:
        return f"<FrameReader {self._have} bytes{' eof' if self._eof else ''}>"

    def at_eof(self) -> bool:
        return self._eof and not self._have

    def feed_data(self, data: Any) -> None:
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        # The transport hands over a new bytes object per read; anything else is copied so it cannot change.
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self._have += len(chunk)
        self._wakeup_waiter()
        transport = self._transport
        if transport is not None and not self._paused and self._have > max(2 * self._limit, self._wanted):
            try:
                transport.pause_reading()
            except NotImplementedError:
                self._transport = None  # it cannot pause: everything is buffered, as StreamReader does
            else:
                self._paused = True

    def _maybe_resume_transport(self) -> None:
        if self._paused and self._have <= self._limit:
            self._paused = False
            self._transport.resume_reading()

    def _take(self, n: int) -> bytes:
        parts: list[Any] = []
        need = n
        while need:
            chunk = self._chunks[0]
            available = len(chunk) - self._head
            if available <= need:
                parts.append(chunk if not self._head else memoryview(chunk)[self._head :])
                self._chunks.popleft()
                self._head = 0
                need -= available
            else:
                parts.append(memoryview(chunk)[self._head : self._head + need])
                self._head += need
                need = 0
        self._have -= n
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]  # a whole read: no copy
        return b"".join(parts)

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        self._wanted = n
        try:
            while self._have < n:
                if self._eof:
                    raise asyncio.IncompleteReadError(self._take(self._have), n)
                await self._wait_for_data("readexactly")
        finally:
            self._wanted = 0
        data = self._take(n)
        self._maybe_resume_transport()
        return data

    def _only_readexactly(self, name: str) -> NoReturn:
        raise NotImplementedError(f"FrameReader serves readexactly only, not {name} (aiokafka's connections)")

    async def read(self, n: int = -1) -> bytes:
        self._only_readexactly("read")

    async def readline(self) -> bytes:
        self._only_readexactly("readline")

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        self._only_readexactly("readuntil")
