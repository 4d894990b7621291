"""The windows' request memory: which requests a partition already counted, by window start.

One outcome per request (:mod:`canary.core.windows`): a request key (``request_key``, 64 bits) is remembered
with the window start it was counted in, in arrival order, until its start falls out of the retention. Every
key is held once (a key is remembered only when it is not remembered), so "remembered" is a plain membership.

:class:`ReferenceRequestMemory` is the pure-Python memory (the reference); the native batch core has the same
memory in Rust (``native/src/dedup.rs``, wrapped by :mod:`canary.pipeline.memory`) — the same answers to the same
calls, checked against this one by ``tests/core/test_request_memory.py``. Keys and starts cross the interface as
numpy arrays (``uint64`` / ``int64``): one call per batch, never one per record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class RequestMemory(Protocol):
    def __len__(self) -> int:
        """Requests remembered."""

    def remembered(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` are remembered (bool per key)."""

    def repeats(self, keys: np.ndarray) -> np.ndarray | None:
        """Which of ``keys`` repeat a request: remembered, or equal to an earlier key of ``keys`` (bool per key);
        None when none does (the common case, answered without a mask)."""

    def remember(self, keys: np.ndarray, starts: np.ndarray) -> None:
        """Remember ``keys[i]`` as counted in the window starting at ``starts[i]``, in this order. None of
        ``keys`` is remembered and none repeats (the caller asked :meth:`repeats` or :meth:`remembered`)."""

    def restore(self, keys: np.ndarray, start: int) -> None:
        """Remember a checkpoint's keys of one start, in order; a key already remembered (a checkpoint not
        written by canary may list one twice) keeps its first start."""

    def forget_before(self, horizon: int) -> None:
        """Forget the requests of every start before ``horizon``."""

    def seal_before(self, limit: int) -> None:
        """No request will be remembered at a start before ``limit`` again (the watermark passed it): the memory
        may hold those more compactly. Changes no answer."""

    def starts(self) -> list[tuple[int, int]]:
        """``(start, requests)`` of every start holding a request, ascending."""

    def keys_of(self, start: int) -> bytes:
        """The keys of ``start`` in arrival order, little-endian ``uint64`` (the checkpoint's form)."""


MemoryFactory = Callable[[], RequestMemory]


def _without(union: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """The sorted multiset ``union`` less the sorted multiset ``gone`` (every element of which it holds)."""
    if not gone.size:
        return union
    # The i-th copy of a value in ``gone`` removes the i-th copy in ``union``: its first position plus its rank.
    rank = np.arange(gone.size) - np.searchsorted(gone, gone, side="left")
    return np.delete(union, np.searchsorted(union, gone, side="left") + rank)


class ReferenceRequestMemory:
    """Open starts in dicts (fast to add to); sealed starts as arrays, 8 bytes a request instead of ~120 in the
    dicts: at 16k outcomes/s a partition remembers ~10^5 requests, and the dicts grew the worker's memory for
    minutes (bench_live). ``_sealed`` is the sealed keys' sorted union, for membership."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}  # request key -> the (open) start it was counted in
        self._seen_by_start: dict[int, list[int]] = {}  # open start -> request keys, arrival order
        self._sealed_by_start: dict[int, np.ndarray] = {}  # sealed start -> request keys, arrival order
        self._sealed: np.ndarray = np.empty(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._seen) + int(self._sealed.size)

    def _sealed_hits(self, keys: np.ndarray) -> np.ndarray | None:
        sealed = self._sealed
        if not sealed.size:
            return None
        at = np.minimum(np.searchsorted(sealed, keys), sealed.size - 1)
        return np.asarray(sealed[at] == keys)

    def remembered(self, keys: np.ndarray) -> np.ndarray:
        seen = self._seen
        out = np.fromiter(map(seen.__contains__, keys.tolist()), dtype=bool, count=keys.size)
        hits = self._sealed_hits(keys)
        return out if hits is None else out | hits

    def repeats(self, keys: np.ndarray) -> np.ndarray | None:
        listed: list[int] = keys.tolist()
        seen = self._seen
        hits = self._sealed_hits(keys)
        if (hits is None or not hits.any()) and seen.keys().isdisjoint(listed) and len(set(listed)) == len(listed):
            return None
        out = np.zeros(len(listed), dtype=bool)
        fresh: set[int] = set()
        olds = [False] * len(listed) if hits is None else hits.tolist()
        for i, (key, old) in enumerate(zip(listed, olds, strict=True)):
            if old or key in seen or key in fresh:
                out[i] = True
            else:
                fresh.add(key)
        return out

    def remember(self, keys: np.ndarray, starts: np.ndarray) -> None:
        if not keys.size:
            return
        listed: list[int] = keys.tolist()
        self._seen.update(zip(listed, starts.tolist(), strict=True))
        by_start = self._seen_by_start
        first, last = int(starts.min()), int(starts.max())
        if first == last:  # the common case: one window start
            groups: dict[int, list[int]] = {first: listed}
        else:
            groups = {}
            for key, start in zip(listed, starts.tolist(), strict=True):
                if (bucket := groups.get(start)) is None:
                    groups[start] = [key]
                else:
                    bucket.append(key)
        for start, group in groups.items():
            bucket = by_start.get(start)
            if bucket is None:
                by_start[start] = list(group)
            else:
                bucket.extend(group)

    def restore(self, keys: np.ndarray, start: int) -> None:
        hits = self._sealed_hits(keys)
        olds = [False] * keys.size if hits is None else hits.tolist()
        seen = self._seen
        bucket = self._seen_by_start.setdefault(start, [])
        for key, old in zip(keys.tolist(), olds, strict=True):
            if not old and key not in seen:
                seen[key] = start
                bucket.append(key)
        if not bucket:
            del self._seen_by_start[start]

    def _take_open_start(self, start: int) -> list[int]:
        """Remove ``start``'s requests from the dicts (forgotten, or moving into an array); returns them."""
        requests = self._seen_by_start.pop(start)
        seen = self._seen
        for request in requests:
            seen.pop(request, None)  # every key is held once, so it is this start's
        return requests

    def forget_before(self, horizon: int) -> None:
        for start in [s for s in self._seen_by_start if s < horizon]:
            self._take_open_start(start)
        for start in [s for s in self._sealed_by_start if s < horizon]:
            self._sealed = _without(self._sealed, np.sort(self._sealed_by_start.pop(start)))

    def seal_before(self, limit: int) -> None:
        for start in [s for s in self._seen_by_start if s < limit]:
            requests = self._take_open_start(start)
            keys = np.fromiter(requests, dtype=np.uint64, count=len(requests))
            earlier = self._sealed_by_start.get(start)  # a late request counted at a start sealed before
            self._sealed_by_start[start] = keys if earlier is None else np.concatenate((earlier, keys))
            # Merged into the sorted union, not re-sorted with it: a full sort of ~10^6 keys at every window
            # was 9 % of a worker draining a backlog. Two sorted runs: the stable sort (timsort) merges them.
            self._sealed = np.sort(np.concatenate((self._sealed, np.sort(keys))), kind="stable")

    def starts(self) -> list[tuple[int, int]]:
        sizes = {s: len(k) for s, k in self._seen_by_start.items()}
        for s, k in self._sealed_by_start.items():
            sizes[s] = sizes.get(s, 0) + int(k.size)
        return [(s, n) for s, n in sorted(sizes.items()) if n]

    def keys_of(self, start: int) -> bytes:
        sealed = self._sealed_by_start.get(start, np.empty(0, dtype=np.uint64))
        keys = np.concatenate((sealed, np.asarray(self._seen_by_start.get(start, []), dtype=np.uint64)))
        return keys.astype("<u8", copy=False).tobytes()
