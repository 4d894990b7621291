"""jsonio: orjson speed, the standard library's contract."""

from __future__ import annotations

import json
import math

import pytest

from canary.core.jsonio import dumps, loads


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2.5, None, "x"], "c": {"d": True}},
        {"big": 2**70},  # beyond 64 bits: orjson refuses, the fallback writes it
        {"unicode": "ü→✓"},
        [],
    ],
)
def test_dumps_round_trips_like_the_standard_library(value: object) -> None:
    assert json.loads(dumps(value)) == value
    assert loads(dumps(value)) == value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_what_is_not_json_instead_of_writing_null(bad: float) -> None:
    with pytest.raises(ValueError):
        dumps({"x": [1.0, {"y": bad}]})


def test_a_literal_null_is_not_mistaken_for_nan() -> None:
    assert dumps({"x": None, "y": 1.5}) == b'{"x":null,"y":1.5}'


def test_loads_accepts_what_json_accepts_and_raises_what_it_raises() -> None:
    assert loads(b'{"x": NaN}')["x"] != loads(b'{"x": NaN}')["x"]  # NaN, via the fallback
    # The one documented difference: beyond 64 bits an integer arrives as a float, never as a wrong int.
    assert loads(b"123456789012345678901234567890") == pytest.approx(1.2345678901234568e29)
    assert loads(b"18446744073709551615") == 2**64 - 1
    with pytest.raises(json.JSONDecodeError):
        loads(b"{not json")
