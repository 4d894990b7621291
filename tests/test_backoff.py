"""The one retry pacing: doubling from base to the cap, counted per failure, reset by a success."""

from __future__ import annotations

import pytest

from canary.backoff import Backoff


@pytest.mark.parametrize(
    ("base", "cap", "delays"),
    [
        (0.5, 5.0, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        (0.1, 1.0, [0.1, 0.2, 0.4, 0.8, 1.0]),
        (1.0, 1.0, [1.0, 1.0, 1.0]),
    ],
)
def test_delays_double_up_to_the_cap(base: float, cap: float, delays: list[float]) -> None:
    pace = Backoff(base, cap)
    assert [pace.delay() for _ in delays] == pytest.approx(delays)
    assert pace.failures == len(delays)


def test_reset_starts_over_and_a_long_outage_stays_capped() -> None:
    pace = Backoff(0.05, 5.0)
    for _ in range(10_000):
        pace.delay()
    assert pace.delay() == 5.0
    pace.reset()
    assert pace.delay() == 0.05


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_pacing_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base, cap)
