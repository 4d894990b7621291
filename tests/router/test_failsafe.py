"""Fail-safe routing and supervision, without Kafka: a router whose control view is stale sends nothing to
the candidate; a dead essential loop is reported so the process can exit non-zero."""

from __future__ import annotations

import asyncio
import time

from canary.core.models import ControlCommand
from canary.kafka.topics import Topics
from devtools.harness import make_backend, preset_ref, start_command
from router.requests import SearchRequest
from router.service import RouterService


def _router() -> RouterService:
    router = RouterService("unused:9092", Topics("t."), make_backend(), preset_ref("last_good"), consume_requests=False)
    cmd: ControlCommand = start_command("candidate_high_recall", weight=1.0)
    assert router.ledger.apply(cmd).applied
    return router


def _arm(router: RouterService, user: str) -> str:
    _, used = router.route(SearchRequest(f"r-{user}", "q", "documents", user, 0, None))
    return used.arm


def test_a_stale_control_view_sends_everything_to_last_good() -> None:
    router = _router()
    assert {_arm(router, f"u{i}") for i in range(20)} == {"candidate"}  # weight 1.0, fresh view
    router.control.freshness.fresh_at = time.monotonic() - router.control.freshness.stale_after_s - 0.1
    assert router.control.stale
    assert {_arm(router, f"u{i}") for i in range(20)} == {"last_good"}
    assert router.stats.failsafe_requests == 20
    router.control.freshness.fresh_at = time.monotonic()
    assert _arm(router, "u0") == "candidate"


async def test_a_dead_essential_loop_is_reported() -> None:
    router = _router()

    async def dies() -> None:
        raise RuntimeError("OutOfOrderSequenceNumber")

    task = asyncio.create_task(dies())
    router._loops.append(task)
    await asyncio.gather(task, return_exceptions=True)
    failed = router.failure()
    assert isinstance(failed, RuntimeError) and "OutOfOrder" in str(failed)


def test_a_stop_does_not_hang_on_a_loop_that_swallowed_its_cancellation() -> None:
    """Python 3.11's asyncio.wait_for returns the inner result when a cancellation arrives as the inner call
    completes: a loop around it goes on. The stop cancels again instead of awaiting it forever."""
    from router.service import cancel_and_wait

    async def stubborn(swallow: int) -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallow == 0:
                    raise
                swallow -= 1  # what a lost cancellation looks like from the loop's side

    async def failing() -> None:
        raise RuntimeError("a loop that died earlier")

    async def run() -> tuple[float, list[bool]]:
        tasks = [asyncio.create_task(stubborn(3)), asyncio.create_task(stubborn(0)), asyncio.create_task(failing())]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await cancel_and_wait(tasks, 2.0, "router-test")
        return time.monotonic() - started, [t.done() for t in tasks]

    took, done = asyncio.run(run())
    assert done == [True, True, True] and took < 1.5
