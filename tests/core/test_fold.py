"""The native batch core's fold (native/src/fold.rs) answers as the numpy reference does, on any columns.

``canary.core.aggregations.count_columns``, ``canary.core.sketch.bucket_counts`` and
``canary.core.aggregations.merged_pairs`` are the references; the native ``fold_parts``, ``bucket_add`` and
``merge_pairs`` are handed to the core by ``canary.pipeline.native`` and must give the same
counts — the windows' JSON, replay's comparison with the live run and every judgement rest on it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core import accel
from canary.core.aggregations import (
    ColumnCounts,
    CountSettings,
    OutcomeColumns,
    WindowAggregator,
    count_columns,
    merged_pairs,
    native_column_counts,
)
from canary.core.sketch import QuantileSketch, bucket_counts
from canary.pipeline.native import NATIVE

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (`make install`)")

latencies = st.one_of(
    st.floats(min_value=-5.0, max_value=1e7, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 1200.0, 10_000.0, 1e-300, 5e-324]),
)
recalls = st.one_of(st.just(math.nan), st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.0005, 0.3, 1.0]))


@st.composite
def column_batches(draw: st.DrawFn, *, allow_bad: bool = False) -> OutcomeColumns:
    n = draw(st.integers(min_value=1, max_value=80))
    lat = latencies | st.sampled_from([math.inf, -math.inf, math.nan]) if allow_bad else latencies
    return OutcomeColumns(
        np.asarray(draw(st.lists(lat, min_size=n, max_size=n)), dtype=np.float64),
        np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool),
        np.asarray(draw(st.lists(recalls, min_size=n, max_size=n)), dtype=np.float64),
        np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool),
        np.asarray(draw(st.lists(st.integers(min_value=-1, max_value=15), min_size=n, max_size=n)), dtype=np.int64),
    )


thresholds_st = st.lists(st.floats(min_value=-1.0, max_value=2e4, allow_nan=False), max_size=4, unique=True).map(
    lambda ts: tuple(sorted(ts))
)


def _same(a: ColumnCounts, b: ColumnCounts) -> None:
    if a.bad is not None or b.bad is not None:  # the batch is refused: only the culprit counts
        assert repr(a.bad) == repr(b.bad)
        return
    for field in ColumnCounts.__slots__:
        x, y = getattr(a, field), getattr(b, field)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field
        else:
            assert x == y, field


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(column_batches(allow_bad=True), min_size=1, max_size=3),
    error_latency=st.sampled_from([10_000.0, 0.0, 500.0]),
    latency_threshold=st.floats(min_value=0.0, max_value=2e4),
    recall_threshold=st.floats(min_value=0.0, max_value=1.0),
    thresholds=thresholds_st,
)
def test_the_native_fold_counts_as_the_reference(
    parts: list[OutcomeColumns],
    error_latency: float,
    latency_threshold: float,
    recall_threshold: float,
    thresholds: tuple[float, ...],
) -> None:
    assert NATIVE is not None
    settings = CountSettings(error_latency, latency_threshold, recall_threshold, thresholds)
    # Pieces counted where they are, as the reference counts them joined (a window's pending pieces).
    reference = count_columns(OutcomeColumns.concat(parts), settings)
    _same(native_column_counts(NATIVE.fold_parts, parts, settings), reference)


def test_columns_of_another_layout_are_counted_as_the_reference() -> None:
    """Strided, integer or byte columns (none of the core's own): converted, then counted as the reference."""
    assert NATIVE is not None
    latency = np.arange(40, dtype=np.float64)[::2] * 100.0
    flags = np.tile(np.asarray([0, 1], dtype=np.uint8), 10)
    odd = OutcomeColumns(latency, flags, np.full(20, 0.25), flags[::-1], np.arange(20, dtype=np.int32) % 16)
    plain = OutcomeColumns(
        latency.copy(), flags.astype(bool), np.full(20, 0.25), flags[::-1].astype(bool), np.arange(20) % 16
    )
    settings = CountSettings(10_000.0, 1200.0, 0.3, (500.0, 1200.0))
    reference = count_columns(OutcomeColumns.concat([plain, plain]), settings)
    _same(native_column_counts(NATIVE.fold_parts, [odd, plain], settings), reference)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-300, max_value=1e300), min_size=1, max_size=200), st.sampled_from([0.005, 0.01]))
def test_the_native_bucket_counts_are_the_reference(values: list[float], accuracy: float) -> None:
    assert NATIVE is not None
    logs = np.log(np.asarray(values, dtype=np.float64))
    log_gamma = QuantileSketch(accuracy)._log_gamma
    native: dict[int, int] = {}
    NATIVE.bucket_add(native, logs, log_gamma)
    assert list(native.items()) == bucket_counts(logs, log_gamma)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(-400, 4000), st.integers(1, 2**64) | st.sampled_from([2**63 - 1, 1]), max_size=30),
    st.lists(st.floats(min_value=1e-3, max_value=1e5), max_size=200),
)
def test_the_native_bucket_add_is_the_sketch_loop(initial: dict[int, int], values: list[float]) -> None:
    """Added in place as QuantileSketch.add_split's loop adds the reference's pairs: the same counts (Python's ints
    beyond 64 bits included), the same order of keys, the batch's lowest and highest bucket."""
    assert NATIVE is not None
    logs = np.log(np.asarray(values, dtype=np.float64))
    log_gamma = QuantileSketch()._log_gamma
    expected = dict(initial)
    pairs = bucket_counts(logs, log_gamma) if values else []
    for k, c in pairs:
        expected[k] = expected.get(k, 0) + c
    native = dict(initial)
    batch = NATIVE.bucket_add(native, logs, log_gamma)
    assert batch == ((pairs[0][0], pairs[-1][0]) if pairs else None)
    assert list(native.items()) == list(expected.items())
    assert all(type(c) is int for c in native.values())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(-50, 50), st.integers(1, 2**64) | st.sampled_from([2**63 - 1, 1]), max_size=30),
    st.dictionaries(
        st.integers(-50, 50),
        st.integers(1, 2**64) | st.sampled_from([2**63 - 1, 1, True]) | st.floats(1.0, 10.0),
        max_size=30,
    ),
)
def test_the_native_add_counts_is_the_sketch_merge_loop(into: dict[int, int], other: dict[int, Any]) -> None:
    """Added in place as QuantileSketch.merge's loop adds them: values, their types, the order of keys."""
    assert NATIVE is not None
    expected = dict(into)
    for k, c in other.items():
        expected[k] = expected.get(k, 0) + c
    native = dict(into)
    NATIVE.add_counts(native, other)
    assert list(native.items()) == list(expected.items())
    assert [type(c) for c in native.values()] == [type(c) for c in expected.values()]


@settings(max_examples=100, deadline=None)
@given(st.lists(column_batches(), min_size=1, max_size=4), thresholds_st)
def test_an_aggregate_folded_natively_is_the_reference_aggregate(
    batches: list[OutcomeColumns], thresholds: tuple[float, ...]
) -> None:
    """The whole state, as JSON, after folds through either path: the counts' hand-over is all that differs."""
    assert NATIVE is not None
    agg = WindowAggregator(exceed_thresholds_ms=thresholds)
    states = []
    try:
        for native in (True, False):
            if not native:
                accel.clear()
            state = agg.initialize()
            for columns in batches:
                state = agg.agg_columns(state, columns)
            states.append(state.to_dict())
    finally:
        accel.install(NATIVE)
    assert states[0] == states[1]


def _reference_merge(a: object, b: object) -> object:
    try:
        accel.clear()
        return merged_pairs(a, b)  # type: ignore[arg-type]
    finally:
        accel.install(NATIVE)


ascending_hist = st.dictionaries(st.integers(0, 1000), st.integers(1, 10**6), max_size=60).map(
    lambda d: tuple(sorted(d.items()))
)


@settings(max_examples=300, deadline=None)
@given(ascending_hist, ascending_hist, st.sampled_from([tuple, list]))
def test_two_ascending_histograms_merge_natively_as_the_reference_adds_them(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...], kind: type
) -> None:
    assert NATIVE is not None
    merged = NATIVE.merge_pairs(a, kind(b))
    assert merged is not None
    assert merged == _reference_merge(a, b)
    assert [k for k, _ in merged] == sorted({k for k, _ in a + b})


# Anything a record could hold where a histogram's pairs are: repeats, disorder, bools, floats, huge counts, lists.
odd_keys = st.one_of(st.integers(-3, 1003), st.booleans(), st.integers(2**63 - 2, 2**70))
odd_counts = st.one_of(st.integers(-5, 10**6), st.booleans(), st.integers(2**63 - 2, 2**70), st.just(2.5))
odd_pairs = st.lists(st.tuples(odd_keys, odd_counts) | st.lists(st.integers(0, 5), min_size=2, max_size=2), max_size=12)


@settings(max_examples=400, deadline=None)
@given(odd_pairs | ascending_hist, odd_pairs | ascending_hist)
def test_any_pairs_merge_as_the_reference_merges_them(a: list[object], b: list[object]) -> None:
    """The native merge takes strictly ascending exact ints only and declines the rest (None), which the reference
    then reads: ``merged_pairs`` answers, or raises, as the reference alone does."""
    assert NATIVE is not None
    native = NATIVE.merge_pairs(a, b)
    try:
        expected = _reference_merge(a, b)
    except TypeError:  # a list is not a key: the reference refuses, so the native merge must have declined
        assert native is None
        return
    if native is not None:
        assert native == expected
        assert [type(x) for p in native for x in p] == [type(x) for p in expected for x in p]  # type: ignore[attr-defined]
    assert merged_pairs(a, b) == expected  # type: ignore[arg-type]


def test_the_native_fold_is_what_the_core_uses_when_it_is_built() -> None:
    assert NATIVE is not None
    assert accel.NATIVE.fold_parts is NATIVE.fold_parts
    assert accel.NATIVE.bucket_add is NATIVE.bucket_add
    assert accel.NATIVE.merge_pairs is NATIVE.merge_pairs
    assert accel.NATIVE.add_counts is NATIVE.add_counts


def test_a_column_that_is_not_contiguous_is_refused_with_its_name() -> None:
    assert NATIVE is not None
    latency = np.arange(10, dtype=np.float64)[::2]
    flags = np.zeros(5, dtype=bool)
    with pytest.raises(TypeError, match="latency"):
        NATIVE.fold_parts(
            [(latency, flags, np.full(5, math.nan), flags, np.full(5, -1))], 1e4, 1200.0, 0.3, [1200.0], 1e6, 1e3, 16
        )
