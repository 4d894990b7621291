"""The stop deadline is armed by the signal itself, even while the event loop is busy."""

from __future__ import annotations

import platform
import resource
import signal
import subprocess
import sys
import time

import pytest

from canary.runtime import EXIT_STOP_TIMED_OUT

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


def test_sigterm_arms_the_deadline_while_the_loop_is_blocked() -> None:
    cmd = [sys.executable, "-c", BUSY_LOOP]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - started
        stderr = proc.stderr.read()
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
