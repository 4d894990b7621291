"""jsonio: orjson speed, the standard library's contract."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core.jsonio import dumps, loads
from canary.pipeline.native import NATIVE


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
    checks = [_finite] if NATIVE is None else [_finite, NATIVE.all_finite]
    for shape in shapes:
        assert not any(check(shape) for check in checks)
        with pytest.raises(ValueError):
            dumps({"state": shape, "null": None})
    fine = {"a": [1, 2.5, -0.0, None, True, "nan", (1e308, -1e308)], "b": {"c": np.float64(3.0)}, "d": Tagged(1.0)}
    assert all(check(fine) for check in checks)


native_only = pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)")


class _Float(float):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


class _List(list):  # type: ignore[type-arg]
    pass


class _Tuple(tuple):  # type: ignore[type-arg]
    __slots__ = ()


_leaves = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True).map(_Float),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.lists(inner, max_size=5).map(_List),
        st.lists(inner, max_size=5).map(_Tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=5),
        st.dictionaries(st.text(max_size=3), inner, max_size=5).map(_Dict),
        st.dictionaries(st.floats(allow_nan=True), inner, max_size=3),  # keys are not looked at
    ),
    max_leaves=40,
)


@native_only
@settings(max_examples=400, deadline=None)
@given(_values)
def test_the_native_check_answers_as_the_reference_walk(value: object) -> None:
    from canary.core.jsonio import _finite

    assert NATIVE is not None
    assert NATIVE.all_finite(value) is _finite(value)


@native_only
def test_dumps_uses_the_native_check_where_the_extension_is_built() -> None:
    from canary.core import accel

    assert NATIVE is not None
    assert accel.NATIVE.all_finite is NATIVE.all_finite
    with pytest.raises(ValueError):
        dumps({"state": [[1, 2]] * 100 + [[0, _Float(math.nan)]], "null": None})
    assert dumps({"state": [[1, 2.5]], "null": None}) == b'{"state":[[1,2.5]],"null":null}'


@settings(max_examples=300, deadline=None)
@given(_values)
def test_the_verdicts_writer_reads_back_as_the_standard_library_wrote_it(value: object) -> None:
    from canary.core.jsonio import dumps_as_json_would

    def same(a: object, b: object) -> bool:  # NaN equals NaN here; containers compared item by item
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or a == b
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return type(a) is type(b) and a == b

    assert same(json.loads(dumps_as_json_would(value)), json.loads(json.dumps(value)))
