"""The merge step's typed decoder of partial-window records (canary.core.merge.decode_merge_record) stands in for
the reference (``parse_merge_record(wire.decode_object(raw, wire.PARTIAL))``): for any record, the same value or
the same refusal — and the partials the windows stage writes take the typed path."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core import jsonio, merge, wire
from canary.core.aggregations import WindowAggregate, WindowAggregator
from canary.core.custom import CustomStats
from canary.core.merge import (
    EncodedPartials,
    PartialWindow,
    Progress,
    decode_merge_record,
    parse_merge_record,
    partial_of,
)
from canary.core.models import WindowKey
from canary.core.windows import WindowFinalizer
from canary.pipeline.decode import OutcomeDecoder
from tests.core.helpers import outcome


def _aggregate(seed: int, *, groups: bool = True, recall: bool = True, thresholds: int = 2) -> WindowAggregate:
    rng = np.random.default_rng(seed)
    agg = WindowAggregator(exceed_thresholds_ms=[500.0, 1200.0, 2500.0][:thresholds])
    items = [
        outcome(
            i,
            float(rng.lognormal(6.3, 0.8)),
            recall_at_10=round(float(rng.random()), 3) if recall and i % 3 else None,
            error="timeout" if i % 23 == 0 else None,
            user_group=int(rng.integers(0, 16)) if groups else None,
        )
        for i in range(int(rng.integers(1, 400)))
    ]
    return agg.agg(agg.initialize(), items)


def _raw(partial: PartialWindow) -> bytes:
    """As the windows stage writes it."""
    return jsonio.dumps(partial.json_dict())


def _reference(raw: bytes | None) -> PartialWindow | Progress:
    return parse_merge_record(wire.decode_object(raw, wire.PARTIAL))


def _result(parse: Any, raw: bytes | None) -> tuple[Any, ...]:
    try:
        return ("ok", parse(raw))
    except Exception as exc:  # the refusal: its type, code and words
        return ("refused", type(exc).__name__, getattr(exc, "code", None), str(exc))


KEY = WindowKey("dep-1", "cand", "candidate")


def test_the_partials_the_windows_stage_writes_take_the_typed_path_with_the_reference_values() -> None:
    for seed in range(40):
        aggregate = _aggregate(seed, groups=seed % 3 != 0, recall=seed % 4 != 0, thresholds=seed % 4)
        partial = PartialWindow(seed % 6, KEY, 5_000 * seed, 5_000 * seed + 5_000, aggregate)
        raw = _raw(partial)
        assert merge._typed(raw) == partial
        assert decode_merge_record(raw) == _reference(raw) == partial
    progress = jsonio.dumps(Progress(3, 60_000).to_dict())
    assert merge._typed(progress) == decode_merge_record(progress) == _reference(progress) == Progress(3, 60_000)


def test_what_the_typed_path_does_not_take_the_reference_decides() -> None:
    base = json.loads(_raw(PartialWindow(1, KEY, 0, 5_000, _aggregate(7))))
    cases: list[dict[str, Any]] = []
    for path, value in [
        (("aggregate", "count"), 12.0),  # a float the reference reads as an int
        (("aggregate", "count"), -1),
        (("aggregate", "sketch", "zero"), True),
        (("aggregate", "recall_hist"), [[1001, 1]]),
        (("aggregate", "recall_hist"), [[3, 0]]),
        (("aggregate", "recall_source"), {"labels": 1, "elsewhere": 2}),
        (("aggregate", "groups", "n"), [0] * 15),
        (("aggregate", "groups", "errors"), [10**6] * 16),
        (("aggregate", "exceed"), {"not a number": 3}),
        (("aggregate", "custom"), {"m": {"n": 0}}),
        (("key",), "no bars"),
        (("kind",), "other"),
    ]:
        d = json.loads(json.dumps(base))
        target = d
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        cases.append(d)
    for d in cases:
        raw = json.dumps(d).encode()
        assert merge._typed(raw) is None, d
        assert _result(decode_merge_record, raw) == _result(_reference, raw)
    duplicate = b'{"kind": "progress", "source_partition": 1, "closed_until_ms": 5, "closed_until_ms": 7}'
    assert decode_merge_record(duplicate) == _reference(duplicate) == Progress(1, 7)  # the last one, as orjson
    for raw in (None, b"", b"[]", b"{", b"\xff", b'{"kind": "partial"}', b"[" * 64 + b"]" * 64):
        assert _result(decode_merge_record, raw) == _result(_reference, raw)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += _paths(v, (*prefix, i))
    return out


_BASES = [
    json.loads(_raw(PartialWindow(s % 6, KEY, 0, 5_000, _aggregate(s, groups=s % 2 == 0, thresholds=s % 3))))
    for s in range(4)
]
_HOSTILE = st.one_of(
    st.integers(min_value=-3, max_value=1_003),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.lists(st.integers(-2, 20), max_size=17),
    st.dictionaries(st.sampled_from(["labels", "exact_sample", "x", "1200"]), st.integers(-1, 9), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(_BASES),
    data=st.data(),
    value=_HOSTILE,
    delete=st.booleans(),
)
def test_any_change_to_a_partial_gets_the_reference_answer(
    base: dict[str, Any], data: Any, value: Any, delete: bool
) -> None:
    d = json.loads(json.dumps(base))
    path = data.draw(st.sampled_from(_paths(d)))
    target = d
    for step in path[:-1]:
        target = target[step]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    raw = json.dumps(d).encode()  # NaN and Infinity as the standard library writes them
    assert _result(decode_merge_record, raw) == _result(_reference, raw)


def test_partials_of_the_columnar_windows_read_back_as_written() -> None:
    """What :class:`EncodedPartials` rests on: every partial the windows core closes — native columns, many keys,
    late outcomes, errors, groups, unlabeled rows — reads back from its bytes as the very value written."""
    rng = np.random.default_rng(11)
    base = 1_700_000_000_000
    items = [
        outcome(
            base + int(rng.integers(0, 30_000)),
            float(rng.lognormal(6.0, 1.0)),
            deployment_id=f"dep-{i % 7}",
            arm="candidate" if i % 2 else "last_good",
            recall_at_10=round(float(rng.random()), 3) if i % 5 else None,
            error="timeout" if i % 31 == 0 else None,
            user_group=int(rng.integers(0, 16)) if i % 3 else None,
        )
        for i in range(3_000)
    ]
    # In time order, but every 40th outcome a window or more behind: late, counted in its key's next open window.
    ordered = sorted(items, key=lambda o: o.ts)
    behind = [
        msgspec.structs.replace(o, ts=o.ts - 12_000, request_id=f"{o.request_id}-b", event_id=f"{o.event_id}-b")
        for o in ordered[::40]
    ]
    values = [jsonio.dumps(o.to_dict()) for o in ordered + behind]
    fin = WindowFinalizer(aggregator=WindowAggregator(exceed_thresholds_ms=[500.0, 2500.0]))
    decoder = OutcomeDecoder(native="auto")
    closed = []
    for lo in range(0, len(values), 400):
        columns, refused = decoder.decode_columns(values[lo : lo + 400])
        assert columns is not None and not refused
        fin.add_columns(2, columns, base + 40_000)
        closed += fin.due_closed(base + 40_000)
    closed += fin.flush_all_closed(base + 10**6)
    assert len(closed) > 50 and any(c.aggregate.late_count for c in closed)
    for window in closed:
        partial = partial_of(window, window.aggregate, 2)
        assert decode_merge_record(_raw(partial)) == partial


def test_encoded_partials_are_taken_once_undecoded_and_bounded() -> None:
    partials = [PartialWindow(s % 6, KEY, 5_000 * s, 5_000 * s + 5_000, _aggregate(s)) for s in range(5)]
    written = EncodedPartials(capacity=3)
    for p in partials:
        written.remember(_raw(p), p)
    assert len(written) == 3  # the two oldest dropped
    read = [decode_merge_record(_raw(p), written) for p in partials]
    assert read == partials
    assert [r is p for r, p in zip(read, partials, strict=True)] == [False, False, True, True, True]
    assert written.hits == 3 and len(written) == 0 and written.size_bytes == 0
    again = decode_merge_record(_raw(partials[4]), written)  # taken once: decoded the second time
    assert again == partials[4] and again is not partials[4]
    sizes = [len(_raw(p)) for p in partials]
    by_size = EncodedPartials(capacity=100, capacity_bytes=sum(sizes[-2:]))
    for p in partials:
        by_size.remember(_raw(p), p)
    assert len(by_size) == 2 and by_size.size_bytes == sum(sizes[-2:])  # the newest that fit the bytes allowed
    assert [by_size.take(_raw(p)) is p for p in partials] == [False, False, False, True, True]


def test_bytes_remembered_are_still_bounded_and_custom_metrics_are_not_kept() -> None:
    written = EncodedPartials()
    partial = PartialWindow(1, KEY, 0, 5_000, _aggregate(3))
    deep = b"[" * 40 + b"]" * 40
    written.remember(deep, partial)
    with pytest.raises(wire.Rejected) as refused:
        decode_merge_record(deep, written)
    assert refused.value.code == "too_deep"
    custom = PartialWindow(1, KEY, 0, 5_000, replace(_aggregate(3), custom=(("clicks", CustomStats(n=1)),)))
    written.remember(b"{}", custom)
    assert len(written) == 1  # only the deep one: a partial with custom metrics is the reference's to read
