"""The stop deadline is armed by the signal itself, even while the event loop is busy."""

from __future__ import annotations

import ast
import json
import platform
import resource
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from canary.pipeline.native import DEADLINE
from canary.runtime import EXIT_STOP_TIMED_OUT, NATIVE_BACKSTOP_S

BUSY_LOOP = """
import asyncio, signal, sys, time
from canary.runtime import StopDeadline

async def main():
    deadline = StopDeadline("test", seconds=1.0)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, deadline.arm)
    deadline.arm_on((signal.SIGTERM,))
    print("ready", flush=True)
    time.sleep(30)  # the loop is blocked: its own dispatch of SIGTERM would wait for this

asyncio.run(main())
"""


def _sigterm(cmd: list[str], ready: str, after_s: float = 0.0) -> tuple[int, float, str]:
    """Start ``cmd``, wait for its ``ready`` line (and ``after_s`` more: inside what it does next), SIGTERM it:
    (exit code, seconds from the signal to the exit, stderr)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == ready
        time.sleep(after_s)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        took = time.monotonic() - started
        return code, took, proc.stderr.read()


def test_sigterm_arms_the_deadline_while_the_loop_is_blocked() -> None:
    code, took, stderr = _sigterm([sys.executable, "-c", BUSY_LOOP], "ready")
    assert code == EXIT_STOP_TIMED_OUT, stderr
    assert "a clean stop did not finish" in stderr
    assert took < 10, took  # 1 s deadline; the loop alone would have held the process 30 s


LOOP_DISPATCH_KEPT = """
import asyncio, signal
from canary.runtime import StopDeadline

async def main():
    deadline = StopDeadline("test", seconds=30.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    deadline.arm_on((signal.SIGTERM,))
    print("ready", flush=True)
    await stop.wait()
    deadline.disarm()
    print("stopped cleanly", flush=True)

asyncio.run(main())
"""


def test_the_loops_own_handler_still_runs() -> None:
    with subprocess.Popen([sys.executable, "-c", LOOP_DISPATCH_KEPT], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stdout.read().strip() == "stopped cleanly"


GIL_HELD = """
import asyncio, itertools, json, logging, signal, sys
from canary.observability.logs import configure_logging
from canary.pipeline.native import DEADLINE
from canary.runtime import StopDeadline

async def main():
    configure_logging("json")
    deadline = StopDeadline("test", seconds=1.0, native=DEADLINE if sys.argv[1] == "native" else None)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    deadline.arm_on((signal.SIGTERM,))
    print("ready", int(deadline.backstop), flush=True)
    # One C call that holds the GIL for ~30 s: no bytecode runs, so neither the signal's Python handler nor the
    # deadline's timer thread can (a full collection over a large heap, a large JSON dump).
    sum(itertools.repeat(1, 10_000_000_000))
    await asyncio.sleep(30)  # a stop that never finishes

asyncio.run(main())
"""


@pytest.mark.skipif(DEADLINE is None, reason="canary_native is not built (no cargo)")
def test_the_native_backstop_ends_a_process_whose_interpreter_is_busy_in_c() -> None:
    code, took, stderr = _sigterm([sys.executable, "-c", GIL_HELD, "native"], "ready 1", after_s=0.3)
    assert code == EXIT_STOP_TIMED_OUT, stderr
    assert took < 1.0 + NATIVE_BACKSTOP_S + 3.0, took  # the C call alone would have held it ~30 s
    (line,) = [json.loads(text) for text in stderr.splitlines() if "did not finish" in text]
    # The line is the service's log format, its time the moment it was written.
    assert line["level"] == "CRITICAL" and line["logger"] == "canary.runtime" and line["message"].startswith("test: ")
    assert "the interpreter did not end it" in line["message"]  # the native thread's words, not the timer's
    written = datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()
    assert abs(written - time.time()) < took + 1.0, line


def test_without_the_backstop_a_busy_interpreter_holds_the_deadline_back() -> None:
    """What the backstop is for: the Python deadline alone is armed only once the C call returns."""
    cmd = [sys.executable, "-c", GIL_HELD.replace("10_000_000_000", "1_500_000_000"), "python"]
    code, took, stderr = _sigterm(cmd, "ready 0", after_s=0.3)
    assert code == EXIT_STOP_TIMED_OUT, stderr
    # The C call (~4 s here) ran to its end first, then the 1 s deadline.
    assert took > 2.0, took


SIGNALS_TAKEN_NATIVELY = """
import asyncio, os, signal, threading
from canary.pipeline.native import DEADLINE
from canary.runtime import StopDeadline

def blocked(tid: str) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)

async def main():
    deadline = StopDeadline("test", seconds=5.0, native=DEADLINE)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    def on_term():
        print("handled in", threading.current_thread().name)
        stopped.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    deadline.arm_on((signal.SIGTERM,))
    later = threading.Thread(target=threading.Event().wait, name="later", daemon=True)  # started after the install
    later.start()
    term = 1 << (signal.SIGTERM - 1)
    masks = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            masks.append((f.read().strip(), bool(blocked(tid) & term)))
    print("masks", sorted(masks), flush=True)
    print("ready", int(deadline.backstop), flush=True)
    await stopped.wait()
    deadline.disarm()
    print("stopped cleanly", flush=True)

asyncio.run(main())
"""


@pytest.mark.skipif(DEADLINE is None, reason="canary_native is not built (no cargo)")
def test_the_native_thread_takes_the_signals_and_python_still_handles_them() -> None:
    """The kernel hands a process's signal to a thread that does not block it, preferring the main thread, and a
    main thread asleep where a handled signal does not wake it (a throttled log write) held SIGTERM back from both
    handlers (native/src/deadline.rs). With the backstop the main thread, and every thread started after, block
    the stop signals and the native thread takes them; Python's handler still runs in the main thread."""
    with subprocess.Popen(
        [sys.executable, "-c", SIGNALS_TAKEN_NATIVELY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            masks = ast.literal_eval(proc.stdout.readline().strip().removeprefix("masks "))
            assert proc.stdout.readline().strip() == "ready 1"
            # comm is 15 characters; Python's threads keep the process's name
            assert [b for name, b in masks if name == "canary-stop-dea"] == [False], masks
            others = [b for name, b in masks if name != "canary-stop-dea"]
            assert len(others) >= 2 and all(others), masks  # the main thread and the one started after
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stderr.read()
            assert proc.stdout.read().split("\n")[:2] == ["handled in MainThread", "stopped cleanly"]
        finally:
            proc.kill()  # a failed assertion must not leave it waiting for a signal


FAULTS = """
import resource, sys
from canary.runtime import reuse_freed_memory
print(int(reuse_freed_memory()))
chunk = b"x" * (256 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    buf = bytearray()
    for _ in range(24):  # a 6 MiB fetch response arriving in 256 KiB reads, then copied out
        buf.extend(chunk)
    frame = bytes(buf)
    del buf, frame
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_fetch_buffers_are_reused_not_faulted_in_again() -> None:
    """glibc keeps a freed fetch buffer for the next read: 40 responses of 6 MiB fault in about one response's pages
    (its buffer and its copy, ~3,072 pages of 4 KiB), not a fresh set each time."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's thresholds are glibc's")
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=60, check=True)
    took, faults = (int(line) for line in out.stdout.split())
    assert took == 1
    one_response = 2 * 6 * 1024 * 1024 // resource.getpagesize()
    assert faults < 1.5 * one_response, faults


_COLLECTOR = """
import gc, json, weakref
from canary.runtime import GC_THRESHOLDS, collect_garbage_less
import streams.worker  # a service's modules, imported before it runs
before = len(gc.get_objects())
collect_garbage_less()
frozen, after = gc.get_freeze_count(), len(gc.get_objects())

class Node:
    pass

# Cyclic garbage made after the freeze is still collected: by the young collections' threshold, no explicit call.
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
# Containers that stay: the collector counts allocations net of deallocations.
kept = [[i] for i in range(3 * GC_THRESHOLDS[0])]
print(json.dumps({"before": before, "frozen": frozen, "after": after, "thresholds": gc.get_threshold(),
                  "cycle_collected": gone() is None}))
"""


def test_a_service_collects_garbage_less_often_and_never_walks_its_code() -> None:
    out = subprocess.run([sys.executable, "-c", _COLLECTOR], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["thresholds"] == [20_000, 20, 10]
    assert got["frozen"] > 50_000  # modules, classes, functions: left out of every pass
    assert got["after"] < got["before"] / 10
    assert got["cycle_collected"]


LIBRARY_THREADS = """
import contextlib, io, os, signal
from canary.cli.main import main

with contextlib.redirect_stdout(io.StringIO()):
    main(["list", "--json"])  # builds the parser: the commands' modules load numpy, which starts OpenBLAS's pool
term = 1 << (signal.SIGTERM - 1) | 1 << (signal.SIGINT - 1)
masks = []
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/status") as f:
        blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    masks.append((tid == str(os.getpid()), blocked & term == term, blocked & term == 0))
print(sorted(masks))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_threads_libraries_start_as_the_cli_loads_do_not_take_the_stop_signals() -> None:
    """The CLI loads numpy (and so OpenBLAS's thread pool) long before a service installs its stop deadline; those
    threads block SIGINT and SIGTERM, and the main thread's mask is as it was (canary.runtime.stop_signals_held)."""
    out = subprocess.run([sys.executable, "-c", LIBRARY_THREADS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    masks = ast.literal_eval(out.stdout.strip())
    assert [(blocks, free) for main, blocks, free in masks if main] == [(False, True)], masks
    assert all(blocks for main, blocks, _ in masks if not main), masks
