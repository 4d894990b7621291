"""The router's clock and the bounded handling of its asyncio tasks (stopping them, stop steps that wait
for the broker): shared by the service and its request intake, which renews its consumer in-process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Final

log = logging.getLogger("canary.router")

STOP_STEP_S: Final = 2.0  # each step of a stop that waits for the broker gives up after this long


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], limit_s: float, owner: str) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that went on: Python 3.11's
    ``asyncio.wait_for`` loses a cancellation that arrives as its inner call completes (the control loop's
    freshness check uses it), and awaiting such a task would hang the stop forever. Bounded by ``limit_s``."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + limit_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("%s: stop: %d task(s) ignored cancellation; going on", owner, len(pending))
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.2, left))
    for task in tasks:  # retrieve their errors, so asyncio does not log them as never retrieved
        if task.done() and not task.cancelled():
            task.exception()


async def bounded(owner: str, what: str, step: Awaitable[Any]) -> bool:
    """One step of a stop, given up after STOP_STEP_S (the broker may be down): True if it finished."""
    try:
        await asyncio.wait_for(step, STOP_STEP_S)
        return True
    except asyncio.CancelledError:
        # aiokafka's consumer.stop() re-raises the CancelledError of the fetch task it cancels; only a
        # cancellation of this task itself must go on up.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s: stop: %s was cancelled inside the client; going on", owner, what)
    except TimeoutError:
        log.warning("%s: stop: %s did not finish within %.0f s; going on", owner, what, STOP_STEP_S)
    except Exception as exc:
        log.warning("%s: stop: %s failed (%s: %s); going on", owner, what, type(exc).__name__, exc)
    return False
