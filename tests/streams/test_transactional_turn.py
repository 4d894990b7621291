"""How long a transactional stage's turn waits for input (streams/transactional.py, ``_held_back``), without a broker:
output a reader waits for, held back by its partition's open transaction, goes out as soon as that transaction ends,
not after a whole fetch wait with no input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from canary.kafka.topics import Topics
from streams.transactional import TransactionalStage, _Outbox

FETCH_WAIT_MS = 2000


class Stage(TransactionalStage[dict[str, Any]]):
    name = "windows"

    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        return {}


@pytest.fixture
def stage() -> Stage:
    return Stage("127.0.0.1:1", Topics("t."), "t.search_results", "g", fetch_max_wait_ms=FETCH_WAIT_MS)


async def _transaction(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _held_back_ms(stage: Stage) -> tuple[int, float]:
    async def go() -> tuple[int, float]:
        started = time.monotonic()
        wait = await stage._held_back()
        return wait, (time.monotonic() - started) * 1000

    return asyncio.run(go())


def test_nothing_held_back_waits_the_whole_fetch(stage: Stage) -> None:
    stage._outbox[0] = _Outbox(urgent=True)  # urgent, but its partition has no open transaction: it commits this turn
    assert _held_back_ms(stage)[0] == FETCH_WAIT_MS


@pytest.mark.parametrize(
    ("urgent", "open_s", "expected_wait_ms", "at_most_ms"),
    [
        (True, 0.02, 0, 1000),  # a window behind an open transaction: this turn waits for that one, no longer
        (False, 0.02, FETCH_WAIT_MS, 50),  # output nobody waits for: the fetch waits as usual
        (True, 30.0, 0, FETCH_WAIT_MS + 1000),  # a transaction that does not end (broker gone): bounded by the fetch
    ],
)
def test_urgent_output_behind_an_open_transaction(
    stage: Stage, urgent: bool, open_s: float, expected_wait_ms: int, at_most_ms: float
) -> None:
    async def go() -> tuple[int, float]:
        stage._outbox[3] = _Outbox(records=[("t.window_partials", b"{}", None, 0)], windows=1, urgent=urgent)
        stage._inflight[3] = asyncio.create_task(_transaction(open_s))
        started = time.monotonic()
        wait = await stage._held_back()
        spent = (time.monotonic() - started) * 1000
        stage._inflight[3].cancel()
        return wait, spent

    wait, spent = asyncio.run(go())
    assert wait == expected_wait_ms
    assert spent <= at_most_ms
    if urgent and open_s < 1:
        assert spent >= open_s * 1000 * 0.9  # it waited for the transaction itself
    if urgent and open_s > 1:
        assert spent >= FETCH_WAIT_MS * 0.9


@pytest.mark.parametrize(
    ("cost_s", "urgent", "expected"),
    [
        (0.005, True, (80, 101)),  # the guard holds commits back 20 x 5 ms: the fetch waits no longer than that
        (1.0, True, (FETCH_WAIT_MS, FETCH_WAIT_MS)),  # a guard longer than the fetch wait: the fetch wait
        (0.0, True, (FETCH_WAIT_MS, FETCH_WAIT_MS)),  # held by nothing it waits for (a partition recovering)
        (0.005, False, (FETCH_WAIT_MS, FETCH_WAIT_MS)),  # nothing urgent: the guard does not matter
    ],
)
def test_urgent_output_behind_the_cost_guard(
    stage: Stage, cost_s: float, urgent: bool, expected: tuple[int, int]
) -> None:
    stage._outbox[1] = _Outbox(urgent=urgent)
    stage._last_commit = time.monotonic()
    stage._checkpoint_cost_s = cost_s
    wait, spent = _held_back_ms(stage)
    assert expected[0] <= wait <= expected[1]
    assert spent < 50  # it only says how long the fetch may wait
