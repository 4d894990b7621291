from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core.sketch import QuantileSketch
from canary.errors import InvalidEvent

Gen = Callable[[np.random.Generator, int], np.ndarray]

DISTRIBUTIONS: dict[str, Gen] = {
    "uniform": lambda r, n: r.uniform(5, 2000, n),
    "lognormal": lambda r, n: r.lognormal(5.5, 0.8, n),
    "bimodal": lambda r, n: np.where(r.random(n) < 0.9, r.normal(200, 20, n), r.normal(3000, 300, n)).clip(1),
    "constant": lambda r, n: np.full(n, 123.456),
    "pareto": lambda r, n: (r.pareto(1.2, n) + 1) * 50,
    "with_zeros": lambda r, n: np.where(r.random(n) < 0.3, 0.0, r.uniform(1, 100, n)),
}
SIZES = [1, 2, 5, 20, 1000, 100_000]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_relative_error_vs_numpy(dist: str, n: int, q: float) -> None:
    values = DISTRIBUTIONS[dist](np.random.default_rng(42), n)
    s = QuantileSketch()
    s.add_many(values)
    exact = float(np.percentile(values, q * 100))
    got = s.quantile(q)
    assert got is not None
    assert got == pytest.approx(exact, rel=0.01, abs=1e-9)


def test_empty_and_single() -> None:
    s = QuantileSketch()
    assert s.quantile(0.95) is None and s.count == 0
    s.add(250.0)
    assert s.quantile(0.95) == pytest.approx(250.0, rel=0.005)
    assert s.quantile(0.0) == s.quantile(1.0)


def test_add_equals_add_many() -> None:
    values = np.random.default_rng(1).lognormal(5, 1, 500)
    a, b = QuantileSketch(), QuantileSketch()
    a.add_many(values)
    for v in values:
        b.add(float(v))
    assert a == b


def test_merge_equals_single_sketch() -> None:
    values = np.random.default_rng(2).lognormal(6, 1.2, 10_000)
    whole = QuantileSketch()
    whole.add_many(values)
    parts = [QuantileSketch() for _ in range(4)]
    for part, chunk in zip(parts, np.array_split(values, 4), strict=True):
        part.add_many(chunk)
    merged = parts[3].copy()
    for p in parts[:3]:
        merged.merge(p)
    assert merged == whole
    assert merged.quantile(0.95) == whole.quantile(0.95)


@pytest.mark.parametrize("max_bins", [2048, 64])
def test_order_and_batch_split_independent(max_bins: int) -> None:
    rng = np.random.default_rng(3)
    values = 10 ** rng.uniform(-3, 6, 5000)
    reference = QuantileSketch(max_bins=max_bins)
    reference.add_many(values)
    for seed in range(5):
        r = np.random.default_rng(seed)
        shuffled = r.permutation(values)
        cuts = np.sort(r.choice(np.arange(1, len(values)), size=7, replace=False))
        s = QuantileSketch(max_bins=max_bins)
        for chunk in np.split(shuffled, cuts):
            s.add_many(chunk)
        assert json.dumps(s.to_dict()) == json.dumps(reference.to_dict())


def test_memory_bound_after_million_wide_values() -> None:
    values = 10 ** np.random.default_rng(4).uniform(-200, 200, 1_000_000)
    s = QuantileSketch(max_bins=2048)
    for chunk in np.array_split(values, 10):
        s.add_many(chunk)
    assert s.count == 1_000_000
    assert s.bin_count <= 2048
    # Collapsing only ever merges the low tail: the top stays accurate.
    assert s.quantile(1.0) == pytest.approx(values.max(), rel=0.005)
    assert s.quantile(0.9999) == pytest.approx(np.percentile(values, 99.99), rel=0.01)


def test_realistic_latency_range_fits_without_collapse() -> None:
    # 0.01 ms .. 100 s is seven decades, about 1600 buckets at a=0.005.
    values = 10 ** np.random.default_rng(5).uniform(-2, 5, 200_000)
    s = QuantileSketch(max_bins=2048)
    s.add_many(values)
    assert s.bin_count <= 2048
    for q in (0.01, 0.5, 0.95):
        assert s.quantile(q) == pytest.approx(np.percentile(values, q * 100), rel=0.01)


def test_serialization_round_trip() -> None:
    s = QuantileSketch()
    s.add_many([0.0, 0.5, 12.0, 12.1, 1500.0])
    d = json.loads(json.dumps(s.to_dict()))
    restored = QuantileSketch.from_dict(d)
    assert restored == s
    assert restored.count == 5
    assert restored.quantile(0.95) == s.quantile(0.95)


@pytest.mark.parametrize(
    "bad",
    [
        {"relative_accuracy": 0.005, "max_bins": 2048, "zero": 0},
        {"relative_accuracy": 0.005, "max_bins": 2048, "zero": 0, "bins": [[1, -3]]},
        {"relative_accuracy": 0.005, "max_bins": 2048, "zero": "x", "bins": []},
    ],
)
def test_from_dict_rejects_malformed(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidEvent, match="QuantileSketch"):
        QuantileSketch.from_dict(bad)


def test_rejects_non_finite_and_bad_args() -> None:
    s = QuantileSketch()
    with pytest.raises(InvalidEvent, match="finite"):
        s.add_many([1.0, float("inf")])
    assert s.count == 0
    with pytest.raises(ValueError, match="quantile"):
        s.quantile(1.5)
    with pytest.raises(ValueError, match="different parameters"):
        s.merge(QuantileSketch(relative_accuracy=0.01))


def _collapsed_from_scratch(bins: dict[int, int], max_bins: int) -> dict[int, int]:
    """The collapse rule applied to the buckets as they stand, with both ends found by scanning (as it was before
    the sketch followed its range)."""
    if not bins:
        return {}
    floor = max(bins) - max_bins + 1
    if min(bins) >= floor:
        return dict(bins)
    out = {k: c for k, c in bins.items() if k >= floor}
    out[floor] = out.get(floor, 0) + sum(c for k, c in bins.items() if k < floor)
    return out


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.floats(1e-6, 1e9), max_size=30), st.integers(0, 3)),
        st.tuples(st.just("merge"), st.lists(st.floats(1e-6, 1e9), max_size=30), st.integers(0, 3)),
        st.tuples(st.just("restore"), st.just([]), st.just(0)),
        st.tuples(st.just("copy"), st.just([]), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([2, 3, 16, 300, 2048]))
def test_the_followed_range_collapses_as_a_scan_of_the_buckets_would(
    ops: list[tuple[str, list[float], int]], max_bins: int
) -> None:
    """After any sequence of adds, merges (with sketches restored from JSON, whose range is not known), restores and
    copies, the buckets are what collapsing the same values from scratch gives, and the range followed is theirs."""
    s = QuantileSketch(max_bins=max_bins)
    seen: list[float] = []
    for op, values, zeros in ops:
        if op == "add":
            s.add_many(values + [0.0] * zeros)
        elif op == "merge":
            other = QuantileSketch(max_bins=max_bins)
            other.add_many(values + [0.0] * zeros)
            s.merge(QuantileSketch.from_dict(other.to_dict()) if zeros % 2 else other)
        elif op == "restore":
            s = QuantileSketch.from_dict(s.to_dict())
        else:
            s = s.copy()
        seen.extend(values if op in ("add", "merge") else [])
        reference = QuantileSketch(max_bins=max_bins)
        reference.add_many(seen)
        assert s._bins == _collapsed_from_scratch(s._bins, max_bins)
        assert sorted(s._bins.items()) == sorted(reference._bins.items())
        if s._range is not None:
            assert s._range == (min(s._bins), max(s._bins))
