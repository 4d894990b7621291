"""Which request memory the windows use (:mod:`canary.core.dedup`): the native batch core's where it is built and
``CANARY_NATIVE`` is not ``off``, the Python reference otherwise — live (the windows stage) and in replay alike."""

from __future__ import annotations

import numpy as np

from canary.core.dedup import MemoryFactory, ReferenceRequestMemory
from canary.pipeline.native import NATIVE
from canary.settings import NativeMode


class NativeRequestMemory:
    """``canary_native.RequestMemory`` (native/src/dedup.rs) behind the :class:`~canary.core.dedup.RequestMemory`
    interface: numpy arrays in, numpy arrays out, as byte strings across."""

    __slots__ = ("_native",)

    def __init__(self) -> None:
        assert NATIVE is not None
        self._native = NATIVE.RequestMemory()

    def __len__(self) -> int:
        return len(self._native)

    def remembered(self, keys: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._native.remembered(_le(keys, np.uint64)), dtype=bool)

    def repeats(self, keys: np.ndarray) -> np.ndarray | None:
        found = self._native.repeats(_le(keys, np.uint64))
        return None if found is None else np.frombuffer(found, dtype=bool)

    def remember(self, keys: np.ndarray, starts: np.ndarray) -> None:
        self._native.remember(_le(keys, np.uint64), _le(starts, np.int64))

    def restore(self, keys: np.ndarray, start: int) -> None:
        self._native.restore(_le(keys, np.uint64), start)

    def forget_before(self, horizon: int) -> None:
        self._native.forget_before(horizon)

    def seal_before(self, limit: int) -> None:
        self._native.seal_before(limit)

    def starts(self) -> list[tuple[int, int]]:
        starts: list[tuple[int, int]] = self._native.starts()
        return starts

    def keys_of(self, start: int) -> bytes:
        keys: bytes = self._native.keys_of(start)
        return keys


def _le(values: np.ndarray, dtype: type[np.integer]) -> bytes:
    return np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def request_memory(native: NativeMode) -> MemoryFactory:
    """The memory factory for a ``CANARY_NATIVE`` mode (``on`` without the extension is refused by the decoder
    the same stage builds first: :class:`canary.pipeline.decode.OutcomeDecoder`)."""
    if NATIVE is None or native == "off" or not hasattr(NATIVE, "RequestMemory"):
        return ReferenceRequestMemory
    return NativeRequestMemory
