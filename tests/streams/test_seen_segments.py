"""The windows stage's request memory checkpointed by what changed (streams/seen_segments.py), without a broker:
each commit writes only the keys a window start gained, a restore joins the segments back into the memory a
finalizer restores (with either memory), and whatever does not fit is refused with the reason."""

from __future__ import annotations

import base64
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.core.dedup import ReferenceRequestMemory
from canary.core.windows import WindowFinalizer
from canary.errors import InvalidEvent
from canary.kafka.topics import Topics
from canary.pipeline.memory import request_memory
from streams.registry import DeploymentRegistry
from streams.seen_segments import SeenSegments
from streams.windowing import WindowingStage

MEMORIES = {"reference": ReferenceRequestMemory, "native": request_memory("auto")}


def _memory(kind: str) -> WindowFinalizer:
    if kind == "native" and MEMORIES["native"] is ReferenceRequestMemory:
        pytest.skip("the native extension is not built (no cargo)")
    return WindowFinalizer(5000, 1000, 12, memory=MEMORIES[kind])


def _remember(fin: WindowFinalizer, rng: random.Random, starts: list[int], n: int) -> None:
    keys = np.asarray([rng.getrandbits(64) for _ in range(n)], dtype=np.uint64)
    fresh = fin._memory.repeats(keys)
    if fresh is not None:
        keys = keys[~fresh]
    fin._memory.remember(keys, np.asarray([rng.choice(starts) for _ in range(keys.size)], dtype=np.int64))


def _applied(side: dict[str, bytes], records: list[tuple[str, bytes | None]]) -> None:
    """A compacted topic's view after a commit: the last value of each name, deletions gone."""
    for name, value in records:
        if value is None:
            side.pop(name, None)
        else:
            side[name] = value


@pytest.mark.parametrize("kind", ["reference", "native"])
@pytest.mark.parametrize("seed", range(4))
def test_segments_restore_the_memory_and_carry_only_what_grew(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    fin = _memory(kind)
    segments = SeenSegments()
    side: dict[str, bytes] = {}
    starts = [0, 5000]
    for step in range(40):
        _remember(fin, rng, starts, rng.randrange(0, 300))
        if step % 7 == 6:  # the watermark moves on: a new start, the older ones sealed, the oldest forgotten
            starts = [starts[-1], starts[-1] + 5000]
            fin._memory.seal_before(starts[0])
            fin._memory.forget_before(starts[0] - 15000)
        committed = dict(segments.written)
        records = segments.side_records(fin)
        _applied(side, records)
        written = sum(len(v) for _, v in records if v is not None)
        grown = sum(size - committed.get(start, 0) for start, size in fin.seen_starts())
        assert written == grown * 8  # only the keys the starts gained since the last commit
        # A restore from the listing and the side records gives the same memory, start by start.
        again, seen = SeenSegments.restore(segments.listing(), side)
        assert again.orphans == []
        restored = WindowFinalizer.from_dict({**fin.to_dict(seen=False), "seen": seen}, memory=MEMORIES[kind])
        assert restored.seen_starts() == fin.seen_starts()
        for start, _ in fin.seen_starts():
            assert restored.seen_keys(start) == fin.seen_keys(start)
        assert again.listing() == segments.listing()
    # Forgotten starts' segments were deleted: the topic holds what the listing names, nothing more.
    listed = {name for segs in segments.listing().values() for name, _ in segs}
    assert set(side) == listed


def test_a_start_written_again_whole_when_it_shrank() -> None:
    fin = _memory("reference")
    segments = SeenSegments()
    _remember(fin, random.Random(1), [0], 50)
    side: dict[str, bytes] = {}
    _applied(side, segments.side_records(fin))
    (first,) = segments.listing()["0"]
    segments.written[0] += 3  # as if more had been written than the memory holds
    records = segments.side_records(fin)
    assert (first[0], None) in records  # the old segment deleted …
    _applied(side, records)
    ((name, n),) = segments.listing()["0"]
    assert n == 50 and side[name] == fin.seen_keys(0)  # … and the start written whole


def test_orphans_are_deleted_with_the_next_commit() -> None:
    fin = _memory("reference")
    _remember(fin, random.Random(2), [0], 10)
    segments = SeenSegments()
    side: dict[str, bytes] = {}
    _applied(side, segments.side_records(fin))
    side["seen/0/left-by-a-crash"] = b"\x00" * 8
    again, _ = SeenSegments.restore(segments.listing(), side)
    assert again.orphans == ["seen/0/left-by-a-crash"]
    assert ("seen/0/left-by-a-crash", None) in again.side_records(fin)
    assert SeenSegments.fresh({"a": b"", "b": b""}).orphans == ["a", "b"]


@pytest.mark.parametrize(
    ("listing", "side", "why"),
    [
        ([], {}, "expected an object"),
        ({"x": [["a", 1]]}, {"a": b"\x00" * 8}, "is not an integer"),
        ({"0": []}, {}, "non-empty list"),
        ({"0": [["a", 0]]}, {"a": b""}, "is not [name, keys > 0]"),
        ({"0": [["a", True]]}, {"a": b"\x00" * 8}, "is not [name, keys > 0]"),
        ({"0": [["a", 1, 2]]}, {"a": b"\x00" * 8}, "is not [name, keys > 0]"),
        ({"0": ["a"]}, {"a": b"\x00" * 8}, "is not [name, keys > 0]"),
        ({"0": [["a", 1]]}, {}, "segment 'a' is missing"),
        ({"0": [["a", 2]]}, {"a": b"\x00" * 8}, "holds 8 bytes, not 2 keys"),
        ({"5": [["a", 1]], "05": [["b", 1]]}, {"a": b"\x00" * 8, "b": b"\x01" * 8}, "window start 5 listed twice"),
        ({"5": [["a", 1]], "10": [["a", 1]]}, {"a": b"\x00" * 8}, "segment 'a' listed twice"),
        ({"5": [["a", 1], ["a", 1]]}, {"a": b"\x00" * 8}, "segment 'a' listed twice"),
    ],
)
def test_a_listing_that_does_not_fit_is_refused_with_the_reason(
    listing: object, side: dict[str, bytes], why: str
) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(why)):
        SeenSegments.restore(listing, side)


def test_the_keys_of_a_start_join_in_segment_order() -> None:
    keys = [np.asarray([i], dtype="<u8").tobytes() for i in range(3)]
    listing = {"5000": [["b", 2], ["a", 1]]}
    _, seen = SeenSegments.restore(listing, {"a": keys[2], "b": keys[0] + keys[1]})
    assert base64.b64decode(seen["5000"]) == keys[0] + keys[1] + keys[2]


def _stage() -> WindowingStage:
    topics = Topics("t.")
    return WindowingStage("127.0.0.1:1", topics, DeploymentRegistry("127.0.0.1:1", topics.control), "g")


def test_the_stage_restores_a_record_written_before_segments_and_writes_its_memory_as_segments() -> None:
    """The upgrade: a state record with the memory inline (``seen``) is restored, the side records beside it are
    orphans, and the partition's next commit writes the whole memory as segments and lists them."""
    old = _memory("reference")
    _remember(old, random.Random(3), [0, 5000], 200)
    stage = _stage()
    state = stage.new_state(2, old.to_dict(), {"seen/0/stray": b"\x00" * 8})
    assert state.seen_starts() == old.seen_starts()
    records = stage.state_side_records(2, state)
    assert ("seen/0/stray", None) in records
    side = {name: value for name, value in records if value is not None}
    assert b"".join(side.values()) == b"".join(old.seen_keys(s) for s, _ in old.seen_starts())
    record = stage.state_to_dict(2, state)
    assert "seen" not in record and set(record["seen_segments"]) == {"0", "5000"}
    # The next restore goes through the segments, and a commit with nothing new writes nothing.
    again = stage.new_state(2, record, side)
    assert again.seen_starts() == old.seen_starts()
    assert stage.state_side_records(2, again) == []


def test_the_stage_refuses_a_record_whose_segment_is_gone() -> None:
    fin = _memory("reference")
    _remember(fin, random.Random(4), [0], 20)
    stage = _stage()
    state = stage.new_state(0, fin.to_dict())
    side = {name: value for name, value in stage.state_side_records(0, state) if value is not None}
    record = stage.state_to_dict(0, state)
    with pytest.raises(InvalidEvent, match="is missing"):
        stage.new_state(0, record, {})
    assert stage.new_state(0, record, side).seen_starts() == fin.seen_starts()


_names = st.sampled_from(["seen/5/a", "seen/5/b", "seen/10/c", "x", ""]) | st.text(max_size=2)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_segment = st.one_of(st.tuples(_names, st.integers(-1, 3)).map(list), _json)
_listing = st.one_of(
    st.dictionaries(
        st.sampled_from(["5", "10", "-3", "x", "1e3", " 7", "05"]) | st.text(max_size=3),
        st.lists(_segment, max_size=3) | _json,
        max_size=3,
    ),
    _json,
)
_side = st.dictionaries(
    _names, st.binary(max_size=32).map(lambda b: b[: len(b) - len(b) % 8]) | st.binary(max_size=9), max_size=4
)


@st.composite
def _fitting(draw: st.DrawFn) -> tuple[object, dict[str, bytes]]:
    """Side records and a listing made of their names and lengths (mostly fitting, some starts spelt twice)."""
    side = draw(st.dictionaries(_names, st.binary(min_size=8, max_size=24).map(lambda b: b[: len(b) - len(b) % 8])))
    names = sorted(side)
    starts = st.sampled_from(["5", "05", "10", "-3"])
    segment = st.sampled_from(names).map(lambda n: [n, len(side[n]) // 8]) if names else _segment
    listing = draw(st.dictionaries(starts, st.lists(segment, min_size=1, max_size=3), max_size=3))
    return listing, side


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.tuples(_listing, _side), _fitting()))
def test_any_listing_and_side_records_restore_or_are_refused_with_invalid_event(
    case: tuple[object, dict[str, bytes]],
) -> None:
    """A restore's reader of the segments is total: whatever a state record lists and whatever side records the
    partition holds, the result is a consistent bookkeeping or InvalidEvent (the state dead-lettered), never
    another exception."""
    listing, side = case
    try:
        segments, seen = SeenSegments.restore(listing, side)
    except InvalidEvent:
        return
    listed = {name for segs in segments.by_start.values() for name, _ in segs}
    assert all(len(side[name]) == n * 8 and n > 0 for segs in segments.by_start.values() for name, n in segs)
    assert sorted(set(side) - listed) == segments.orphans
    for start, segs in segments.by_start.items():
        assert segments.written[start] == sum(n for _, n in segs)
        assert base64.b64decode(seen[str(start)]) == b"".join(side[name] for name, _ in segs)
