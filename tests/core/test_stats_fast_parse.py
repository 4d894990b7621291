"""The window statistics' parsers convert strict pairs in C (canary.core.structs.exactly) and read anything else
with their Python checks: for any input, the same value or the same refusal as the Python checks alone."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core import aggregations, jsonio, sketch
from canary.core.aggregations import WindowAggregator, WindowStats
from canary.core.evidence import RECALL_BINS
from canary.core.merge import PartialWindow
from canary.core.models import WindowKey
from canary.core.sketch import QuantileSketch
from canary.core.split import USER_GROUPS
from canary.errors import InvalidEvent
from tests.core.helpers import outcome

# What a hostile record may put where an integer belongs.
_NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=RECALL_BINS + 3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=1e4),
    st.sampled_from(["3", "x", None]),
)
_PAIR = st.one_of(
    st.tuples(_NUMBERS, _NUMBERS).map(list),
    st.lists(_NUMBERS, max_size=3),
    st.tuples(st.integers(0, RECALL_BINS), st.integers(1, 50)).map(list),  # mostly valid pairs
)
_PAIRS = st.one_of(st.lists(_PAIR, max_size=12), st.lists(st.tuples(st.integers(0, 40), st.integers(1, 9)).map(list)))


def _outcome(parse: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", parse(value)
    except InvalidEvent as exc:
        return "refused", str(exc)


def _both(monkeypatch: pytest.MonkeyPatch, parse: Any, value: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
    fast = _outcome(parse, value)
    with monkeypatch.context() as m:  # the Python checks alone: the reference
        m.setattr(aggregations, "exactly", lambda data, shape: None)
        m.setattr(sketch, "exactly", lambda data, shape: None)
        slow = _outcome(parse, value)
    return fast, slow


def _stats(hist: object, bins: object, row: object) -> dict[str, Any]:
    groups = {k: [0] * USER_GROUPS for k in ("errors", "recall_n", "recall_micros")}
    return {
        "count": 10**6,
        "error_count": 0,
        "sketch": {"relative_accuracy": 0.01, "max_bins": 2048, "zero": 0, "bins": bins},
        "exceed": {},
        "recall_hist": hist,
        "groups": {"n": row, **groups},
    }


@settings(max_examples=400, deadline=None)
@given(hist=_PAIRS, bins=_PAIRS, row=st.lists(_NUMBERS, min_size=USER_GROUPS, max_size=USER_GROUPS))
def test_any_statistics_parse_as_the_python_checks_parse_them(hist: Any, bins: Any, row: Any) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both(monkeypatch, WindowStats.from_dict, _stats(hist, bins, row))
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(bins=_PAIRS)
def test_any_sketch_bins_parse_as_the_python_checks_parse_them(bins: Any) -> None:
    d = {"relative_accuracy": 0.01, "max_bins": 2048, "zero": 1, "bins": bins}
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both(monkeypatch, QuantileSketch.from_dict, d)
    assert fast == slow
    if fast[0] == "ok":  # same contents, and the same count (the sum the fast path does not check)
        assert fast[1].count == slow[1].count


@pytest.mark.parametrize(
    "hist, says",
    [
        ([[0, 0]], "counts must be non-negative"),
        ([[RECALL_BINS + 1, 1]], "recall bins must be in"),
        ([[-1, 2]], "recall bins must be in"),
        ([[True, 1]], None),  # the Python checks read a bool as 1: so does the fast path (it leaves it to them)
        ([[1.0, 2]], None),
        ([["7", 2]], None),
        ([[3, 1], [1, 2], [3, 1]], None),  # unsorted, repeated: sorted as before
        ([[1, 2, 3]], "malformed"),
        ({"1": 2}, "malformed"),
    ],
)
def test_hostile_histograms_are_read_or_refused_as_before(hist: object, says: str | None) -> None:
    d = _stats(hist, [[5, 1]], [0] * USER_GROUPS)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both(monkeypatch, WindowStats.from_dict, d)
    assert fast == slow
    if says is None:
        assert fast[0] == "ok"
    else:
        assert fast[0] == "refused" and says in fast[1]


def test_a_real_window_takes_the_fast_path_and_round_trips() -> None:
    rng = random.Random(7)
    pairs = sorted({rng.randrange(RECALL_BINS + 1): rng.randrange(1, 9) for _ in range(700)}.items())
    d = _stats([list(p) for p in pairs], [[k, c] for k, c in pairs], [1] * USER_GROUPS)
    calls: list[object] = []
    real = aggregations.exactly

    def spy(data: object, shape: Any) -> object:
        out = real(data, shape)
        calls.append(out is not None)
        return out

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(aggregations, "exactly", spy)
        stats = WindowStats.from_dict(d)
    assert calls and all(calls)  # every group row and the histogram converted in C
    assert stats.recall_hist == tuple(pairs)
    assert WindowStats.from_dict(stats.to_dict()) == stats


# -- the JSON encoders' dicts: the same bytes as to_dict, without a list built per pair --------------------------


@settings(max_examples=60, deadline=None)
@given(
    latencies=st.lists(st.floats(0, 20_000, allow_nan=False), min_size=0, max_size=300),
    recalls=st.lists(st.one_of(st.none(), st.floats(0, 1, allow_nan=False)), min_size=300, max_size=300),
    groups=st.lists(st.one_of(st.none(), st.integers(0, USER_GROUPS - 1)), min_size=300, max_size=300),
    errors=st.lists(st.booleans(), min_size=300, max_size=300),
)
def test_json_dicts_write_the_same_bytes_as_to_dict(
    latencies: list[float], recalls: list[float | None], groups: list[int | None], errors: list[bool]
) -> None:
    agg = WindowAggregator(exceed_thresholds_ms=(250.0,))
    rows = [
        outcome(i, lat, recall_at_10=r, user_group=g, error="timeout" if e else None)
        for i, (lat, r, g, e) in enumerate(zip(latencies, recalls, groups, errors, strict=False))
    ]
    state = agg.agg(agg.initialize(), rows)
    partial = PartialWindow(2, WindowKey("dep-1", "cand", "candidate"), 0, 5000, state)
    for value in (state.sketch, state.stats, state, partial):
        reference = value.to_dict()
        fast = value.json_dict()
        assert orjson.dumps(fast) == orjson.dumps(reference)
        assert jsonio.dumps(fast) == jsonio.dumps(reference)
        # jsonio's fallback (the standard library) writes tuples as the same arrays too
        assert json.dumps(fast, separators=(",", ":")) == json.dumps(reference, separators=(",", ":"))
        assert json.loads(orjson.dumps(fast)) == reference
    assert orjson.dumps(state.stats.shared_dict()) == orjson.dumps(state.stats.to_dict())
