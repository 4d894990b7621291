"""Process lifecycle shared by the long-running services (router, worker), and how a canary process allocates.

A clean stop flushes the producer, commits offsets and leaves consumer groups — all of which wait for the
broker. With the broker down those waits only end at the clients' request timeouts (40 s and more, per
client, one after the other), so a service ignored SIGTERM for over a minute. The deadline below bounds
the whole stop: past it, the process says why and exits non-zero at once. Nothing is lost by that: an
outcome not acknowledged leaves its request offset uncommitted, so the request is consumed again.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Protocol

log = logging.getLogger("canary.runtime")

# The bound is 10 s from SIGTERM to exit. On CI's loaded 2-core machine a process once left 4.1 s
# after an 8 s deadline fired (and once 2.4 s after a clean stop), so the deadline leaves 4 s for that; a
# clean stop with the broker up takes ~1.3 s under CPU stress, well inside it.
STOP_DEADLINE_S = 6.0
LAST_WORDS_S = 0.5  # the exit does not wait longer than this for its log line (a stalled disk)
# The native backstop fires this long after the Python deadline: that one says more (its logging), so it goes first.
NATIVE_BACKSTOP_S = 1.0
EXIT_STOP_TIMED_OUT = 75  # EX_TEMPFAIL: the work is redelivered; a restart is safe


class NativeDeadline(Protocol):
    """What the optional extension (``native/src/deadline.rs``) offers: the deadline outside the interpreter."""

    def deadline_install(self, signals: list[int], seconds: float, code: int, last_words: bytes) -> bool: ...
    def deadline_arm(self) -> None: ...
    def deadline_disarm(self) -> None: ...


class StopDeadline:
    """Arm once a stop begins; if the process is still here after ``seconds``, exit with
    :data:`EXIT_STOP_TIMED_OUT`. A daemon thread, so it fires even while the event loop is blocked.

    Both the signal's Python handler and that thread need the interpreter: a main thread inside one long C call
    (holding the GIL, between no bytecodes) holds both back — a service on CI's loaded two cores armed its
    deadline 4.4 s after SIGTERM and so broke the 10 s bound. With the native extension (``native=``) a C-level
    handler notes the signal as it arrives and a thread without the GIL ends the process
    :data:`NATIVE_BACKSTOP_S` after ``seconds``, should the Python side not have done so by then. The installing
    (main) thread and the threads it starts after then block the stop signals, so the kernel hands them to that
    native thread: a main thread asleep in the kernel (a log write throttled while the disk flushes) no longer
    holds a signal back from both handlers. Python still runs its handlers in the main thread."""

    def __init__(self, what: str, seconds: float = STOP_DEADLINE_S, native: NativeDeadline | None = None) -> None:
        self.what = what
        self.seconds = seconds
        self._timer: threading.Timer | None = None
        self._native = native
        self.backstop = False  # the native backstop is installed

    def arm(self) -> None:
        if self._native is not None and self.backstop:
            self._native.deadline_arm()
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def arm_on(self, signals: Iterable[signal.Signals]) -> None:
        """Arm the moment one of ``signals`` arrives, not when the event loop gets round to it: a loop busy
        on a backlog or a reconnect took seconds to dispatch SIGTERM, eating into the bound. Call after the
        loop's own ``add_signal_handler``: its wakeup-fd dispatch goes on, since CPython writes the wakeup
        fd for any signal with a Python-level handler; this one only chains in front of it."""
        for sig in signals:
            before = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, before: object = before) -> None:
                self.arm()
                if callable(before):
                    before(signum, frame)

            signal.signal(sig, handler)
        if self._native is not None:
            # Chained in front of the handler just installed: it runs first, in whichever thread gets the signal.
            self.backstop = self._native.deadline_install(
                [int(sig) for sig in signals],
                self.seconds + NATIVE_BACKSTOP_S,
                EXIT_STOP_TIMED_OUT,
                self._last_words(self.seconds + NATIVE_BACKSTOP_S).encode(),
            )

    def disarm(self) -> None:
        if self._native is not None and self.backstop:
            self._native.deadline_disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _last_words(self, seconds: float) -> str:
        """The native backstop's line, formatted now as the root handler formats lines, its time left to be
        filled in when written (``%TS%``: UTC to the millisecond, no zone letter): where the formatter puts the
        time is found by formatting twice."""
        message = (
            f"{self.what}: a clean stop did not finish within {seconds:.0f} s and the interpreter did not end it "
            f"(busy in C code?); exiting now with code {EXIT_STOP_TIMED_OUT} — unacknowledged work is redelivered "
            "to the next instance"
        )
        handlers = logging.getLogger().handlers
        if not handlers:
            return f"%TS%Z CRITICAL canary.runtime: {message}\n"
        handler = handlers[0]

        def formatted(created: float) -> str:
            record = logging.LogRecord("canary.runtime", logging.CRITICAL, __file__, 0, message, None, None)
            record.created, record.msecs = created, (created - int(created)) * 1000
            handler.filter(record)  # the filters add what the format names (a deployment)
            return handler.format(record)

        try:
            # Times unlike in every digit, first to last (1970-01-01T00:00:00.000Z, 2005-03-18T01:58:31.125Z).
            first, second = formatted(0.0), formatted(1_111_111_111.125)
        except Exception:  # a formatter this cannot drive: a plain line
            return f"%TS%Z CRITICAL canary.runtime: {message}\n"
        start = _shared_length(first, second)
        end = _shared_length(first[start:][::-1], second[start:][::-1])
        return f"{first[:start]}%TS%{first[len(first) - end :]}\n"

    def _expire(self) -> None:
        # Saying why must not hold the exit: a log write can stall on a busy disk.
        backstop = threading.Timer(LAST_WORDS_S, os._exit, (EXIT_STOP_TIMED_OUT,))
        backstop.daemon = True
        backstop.start()
        log.critical(
            "%s: a clean stop did not finish within %.0f s (Kafka unreachable?); exiting now with code %d — "
            "unacknowledged work is redelivered to the next instance",
            self.what,
            self.seconds,
            EXIT_STOP_TIMED_OUT,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # exiting anyway
                handler.flush()
        os._exit(EXIT_STOP_TIMED_OUT)


def _shared_length(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Block the stop signals in this thread for the block, then restore its mask. Threads that libraries start
    meanwhile inherit the block: OpenBLAS starts its pool when numpy loads, and the CLI loads numpy long before a
    service installs its stop deadline (StopDeadline.arm_on), after which only the deadline's native thread is to
    take the stop signals — a pool thread started with them unblocked was a second taker (tests/test_runtime.py).
    A stop signal arriving meanwhile waits for the end of the block."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep the buffers a Kafka read frees for the next read (True where it took the settings).

    A fetch response is a few MiB: aiokafka's stream reader grows a buffer to hold it, copies it out, and both are
    freed once the records are read. With glibc's defaults such blocks are mapped fresh from the kernel each time
    and the heap top is given back, so every fetch faults its pages in again: reading 1M records through the
    windows stage's consumer cost 0.53-0.73 µs a record, half of it in the kernel (150-200k page faults). Blocks
    up to 16 MiB from the heap, and up to 32 MiB of free heap top kept: 0.33-0.35 µs, 8.5k faults (ADR 0006). The
    price is at most 32 MiB of freed memory a process keeps instead of returning. Called once at the CLI's start
    (every canary process); elsewhere (musl, macOS) it does nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


# CPython's default is (700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 10)


def collect_garbage_less() -> None:
    """Tune the cyclic garbage collector for a long-running stream service; call once it is built, before it runs.

    What exists then (modules, classes, the app: ~100k objects that are never garbage) is frozen out of the
    collector's passes (``gc.freeze``), and young collections wait for 20,000 new containers instead of 700. A
    backlog worker at 41 window keys spent a fifth of its CPU in the collector (gc callbacks: 25 full passes of
    ~59 ms in 12 s, promoted by the window statistics' short-lived tuples that outlived 700 allocations); frozen
    and with these thresholds, 0.3 s in 12 s instead of 1.9 s (ADR 0006). The price: cyclic garbage waits for up to
    20,000 allocations before it is freed (a few ms of a busy worker's work)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
