"""canary.control.Freshness: the one freshness check of the control topic's live readers (router, registry)."""

from __future__ import annotations

import time

from canary.control import Freshness, throttled


def test_failures_are_logged_throttled_and_confirmation_clears_the_problem() -> None:
    said: list[str] = []
    fresh = Freshness(5.0, said.append)
    for _ in range(1000):
        fresh.note_problem(ConnectionError("broker away"))
    assert said == ["ConnectionError: broker away"] * 4  # the 1st, 10th, 100th and 1000th
    assert [n for n in range(1, 2001) if throttled(n)] == [1, 10, 100, 1000, 2000]
    assert fresh.problem == "ConnectionError: broker away" and fresh.failures == 1000
    fresh.fresh_at = time.monotonic() - 6.0
    assert fresh.stale and fresh.lag() >= 6.0
    fresh.confirmed()
    assert not fresh.stale and fresh.problem is None
