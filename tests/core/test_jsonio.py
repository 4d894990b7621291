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


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_is_found_wherever_it_sits(bad: float) -> None:
    import numpy as np

    from canary.core.jsonio import _finite

    class Tagged(float):
        pass

    shapes = [
        bad,
        [None, [1, [2, (3, bad)]]],
        {"a": {"b": [{"c": None}, {"d": bad}]}, "e": 1},
        ([[1, 2]] * 1000) + [[0, bad]],  # the sketch-pair lists of a checkpoint's open windows
        {"x": np.float64(bad)},  # a float subclass
        {"x": [Tagged(bad)]},
    ]
    for shape in shapes:
        assert not _finite(shape)
        with pytest.raises(ValueError):
            dumps({"state": shape, "null": None})
    fine = {"a": [1, 2.5, -0.0, None, True, "nan", (1e308, -1e308)], "b": {"c": np.float64(3.0)}, "d": Tagged(1.0)}
    assert _finite(fine)
