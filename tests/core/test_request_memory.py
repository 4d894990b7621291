"""The request memory (canary.core.dedup): the native batch core's answers every call as the reference does.

Seeded random sequences of every call — with keys from a small pool, so repeats, re-remembered forgotten keys and
checkpoint keys listed twice are common — go to both memories; every answer and the whole state (starts, keys in
arrival order, count) must be equal after every step. Table tests pin the reference's own rules.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from canary.core.dedup import ReferenceRequestMemory, RequestMemory
from canary.pipeline.memory import NativeRequestMemory, request_memory
from canary.pipeline.native import NATIVE

native_only = pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)")
SIZE = 5000


def keys(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def starts(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def state(memory: RequestMemory) -> tuple[int, list[tuple[int, int]], list[list[int]]]:
    held = memory.starts()
    return len(memory), held, [np.frombuffer(memory.keys_of(s), dtype="<u8").tolist() for s, _ in held]


@pytest.mark.parametrize(
    "memory",
    [ReferenceRequestMemory, pytest.param(NativeRequestMemory, marks=native_only)],
    ids=["reference", "native"],
)
def test_the_rules(memory: type) -> None:
    m = memory()
    assert m.repeats(keys(1, 2, 3)) is None
    assert m.repeats(keys(1, 2, 1, 1)).tolist() == [False, False, True, True]  # an earlier key of the same call
    m.remember(keys(1, 2, 3), starts(0, 0, SIZE))
    assert m.remembered(keys(3, 4, 1)).tolist() == [True, False, True]
    assert m.repeats(keys(4, 3)).tolist() == [False, True]
    assert state(m) == (3, [(0, 2), (SIZE, 1)], [[1, 2], [3]])
    m.seal_before(SIZE)  # changes no answer
    assert m.remembered(keys(1, 3, 9)).tolist() == [True, True, False]
    m.remember(keys(7), starts(0))  # a late request counted at a sealed start: after the start's earlier ones
    assert state(m) == (4, [(0, 3), (SIZE, 1)], [[1, 2, 7], [3]])
    m.restore(keys(3, 8, 8), 2 * SIZE)  # a key listed twice keeps its first start
    assert state(m) == (5, [(0, 3), (SIZE, 1), (2 * SIZE, 1)], [[1, 2, 7], [3], [8]])
    m.forget_before(SIZE)
    assert m.remembered(keys(1, 2, 7, 3, 8)).tolist() == [False, False, False, True, True]
    assert state(m) == (2, [(SIZE, 1), (2 * SIZE, 1)], [[3], [8]])
    m.remember(keys(1), starts(3 * SIZE))  # forgotten, then counted again
    assert state(m) == (3, [(SIZE, 1), (2 * SIZE, 1), (3 * SIZE, 1)], [[3], [8], [1]])
    assert m.keys_of(9 * SIZE) == b""


def random_calls(seed: int, steps: int = 400) -> list[tuple[str, tuple[object, ...]]]:
    """A call sequence valid for the contract: ``remember`` only takes keys the memory would accept, which the
    sequence learns by running the reference alongside."""
    rng = random.Random(seed)
    pool = [rng.getrandbits(64) for _ in range(60)] + [0, 2**64 - 1]
    ref = ReferenceRequestMemory()
    calls: list[tuple[str, tuple[object, ...]]] = []
    low = 0
    for _ in range(steps):
        op = rng.choice(["remembered", "repeats", "remember", "remember", "restore", "forget", "seal"])
        some = keys(*(rng.choice(pool) for _ in range(rng.choice([0, 1, 3, 20, 70]))))
        if op == "remember":
            again = ref.repeats(some)
            fresh = some if again is None else some[~again]
            at = starts(*sorted(low + SIZE * rng.randrange(6) for _ in range(fresh.size)))
            if rng.random() < 0.3:
                at = starts(*(low + SIZE * rng.randrange(6) for _ in range(fresh.size)))  # not in order
            args: tuple[object, ...] = (fresh, at)
        elif op == "restore":
            args = (some, low + SIZE * rng.randrange(6))
        elif op in ("forget", "seal"):
            low += SIZE * rng.choice([0, 1, 1, 2])
            args = (low - SIZE * rng.randrange(3),)
            op = "forget_before" if op == "forget" else "seal_before"
        else:
            args = (some,)
        getattr(ref, op)(*args)
        calls.append((op, args))
    return calls


def answer(value: object) -> object:
    return value.tolist() if isinstance(value, np.ndarray) else value


@native_only
@pytest.mark.parametrize("seed", range(40))
def test_the_native_memory_answers_as_the_reference(seed: int) -> None:
    ref, native = ReferenceRequestMemory(), NativeRequestMemory()
    for step, (op, args) in enumerate(random_calls(seed)):
        expected, got = getattr(ref, op)(*args), getattr(native, op)(*args)
        assert answer(got) == answer(expected), (step, op)
        assert state(native) == state(ref), (step, op)


@native_only
@native_only
@pytest.mark.parametrize("spread", ["random", "shared leading bits", "extremes"])
def test_many_sealed_keys_are_found_through_the_index(spread: str) -> None:
    """Sealed keys are looked up through an index of their leading bits: spread keys, keys a producer made share
    those bits (one bucket holds them all), and the smallest and largest keys answer as the reference does."""
    rng = np.random.default_rng(11)
    n = 40_000
    if spread == "random":
        pool = rng.integers(0, 2**64, size=2 * n, dtype=np.uint64)
    elif spread == "shared leading bits":
        pool = (np.uint64(0xABCD) << np.uint64(48)) | rng.integers(0, 2**40, size=2 * n, dtype=np.uint64)
    else:
        pool = np.concatenate(
            [
                np.arange(n, dtype=np.uint64),
                np.uint64(2**64 - 1) - np.arange(n, dtype=np.uint64),
            ]
        )
    pool = np.unique(pool)
    rng.shuffle(pool)
    held, asked = pool[: pool.size // 2], pool
    native, reference = NativeRequestMemory(), ReferenceRequestMemory()
    for memory in (native, reference):
        for i, chunk in enumerate(np.array_split(held, 8)):
            memory.remember(chunk, np.full(chunk.size, i * SIZE, dtype=np.int64))
        memory.seal_before(6 * SIZE)  # six starts sealed, two open
    expected = np.isin(asked, held)
    assert native.remembered(asked).tolist() == expected.tolist()
    assert reference.remembered(asked).tolist() == expected.tolist()
    for memory in (native, reference):
        memory.forget_before(3 * SIZE)  # the first three starts go; the index is made again
    kept = np.concatenate(np.array_split(held, 8)[3:])
    assert native.remembered(asked).tolist() == np.isin(asked, kept).tolist()
    assert state(native) == state(reference)


@native_only
def test_seals_a_window_at_a_time_with_late_keys_answer_as_the_reference() -> None:
    """A live memory: each window start sealed as the watermark passes it, late requests remembered at starts already
    sealed (sealed at the next call), old starts forgotten — the native memory's recently sealed keys wait apart
    and are merged into the indexed ones now and then; every answer and the whole state stay the reference's."""
    rng = np.random.default_rng(5)
    pool = np.unique(rng.integers(0, 2**64, size=60_000, dtype=np.uint64))
    rng.shuffle(pool)
    native, reference = NativeRequestMemory(), ReferenceRequestMemory()
    taken = 0
    for step in range(150):
        fresh = pool[taken : taken + 300]
        taken += fresh.size
        # Most requests in the newest start, a few late ones in starts the watermark already passed.
        at = np.where(rng.random(fresh.size) < 0.05, (step - rng.integers(1, 20, fresh.size)) * SIZE, step * SIZE)
        for memory in (native, reference):
            memory.remember(fresh, at.astype(np.int64))
            memory.seal_before((step - 1) * SIZE)
            if step % 25 == 24:
                memory.forget_before((step - 60) * SIZE)
        if step % 10 == 9:
            asked = pool[: taken + 500]
            assert native.remembered(asked).tolist() == reference.remembered(asked).tolist(), step
            assert state(native) == state(reference), step
    assert len(native) == len(reference) > 10_000


def test_the_native_memory_refuses_malformed_arguments_without_changing() -> None:
    m = NATIVE.RequestMemory()
    m.remember(keys(1).tobytes(), starts(0).tobytes())
    with pytest.raises(ValueError, match="whole number"):
        m.remembered(b"\x00" * 7)
    with pytest.raises(ValueError, match="1 keys but 2 starts"):
        m.remember(keys(2).tobytes(), starts(0, 5).tobytes())
    assert len(m) == 1 and m.starts() == [(0, 1)]


def test_the_pipeline_takes_the_native_memory_where_it_is_built() -> None:
    assert request_memory("off") is ReferenceRequestMemory
    expected = ReferenceRequestMemory if NATIVE is None else NativeRequestMemory
    assert request_memory("auto") is expected
