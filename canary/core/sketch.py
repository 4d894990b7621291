"""A mergeable relative-error quantile sketch (DDSketch-style logarithmic buckets).

Written here rather than taken from the ``ddsketch`` package because the window state needs three things
at once: a micro-batch goes in as one vectorized numpy operation; the state serializes to small,
deterministic JSON for a changelog topic; and the result depends only on the multiset of values, never
on insertion order or batch split, so a replay is bit-identical to the live run.

A positive value ``x`` goes to bucket ``ceil(log(x) / log(gamma))`` with ``gamma = (1 + a) / (1 - a)``;
every value in bucket ``i`` is within relative error ``a`` of ``2 * gamma**i / (gamma + 1)``. Values
<= 0 share one zero bucket (latencies are never negative; a 0 ms answer is still an answer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from canary.core import accel
from canary.core.structs import exactly
from canary.errors import SHAPE_ERRORS, InvalidEvent

_BINS = list[tuple[int, Annotated[int, msgspec.Meta(gt=0)]]]  # the pairs QuantileSketch.from_dict accepts as they are


def not_finite(value: float) -> InvalidEvent:
    """What a sketch raises for a value it cannot hold (a NaN or an infinity)."""
    return InvalidEvent(f"QuantileSketch: values must be finite, got {value!r}")


def bucket_counts(logs: npt.NDArray[np.float64], log_gamma: float) -> list[tuple[int, int]]:
    """The buckets of positive values from their logarithms: ``ceil(log / log_gamma)`` each, counted, ascending as
    ``(index, count)`` pairs — the reference (the native batch core's ``bucket_add`` adds the same into a sketch). The
    logarithms are numpy's on both paths: numpy's vectorized ``log`` and the C library's may differ in the last bit,
    which could move a value on a bucket's edge."""
    idx = np.ceil(logs / log_gamma).astype(np.int64)
    low = int(idx.min())
    # Counting by offset from the lowest index: indices span a few hundred at most (the value range's log), so
    # bincount beats sorting, above all on small micro-batches.
    counts = np.bincount(idx - low)
    present = np.flatnonzero(counts)
    return list(zip((present + low).tolist(), counts[present].tolist(), strict=True))


def _joined(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    """The range covering both (None: one is not known, nor then is the whole)."""
    if a is None or b is None:
        return None
    return (min(a[0], b[0]), max(a[1], b[1]))


class QuantileSketch:
    """Counts per logarithmic bucket; ``quantile`` is within ``relative_accuracy`` of the exact value."""

    __slots__ = ("_bins", "_count", "_gamma", "_log_gamma", "_range", "_zero", "max_bins", "relative_accuracy")

    def __init__(self, relative_accuracy: float = 0.005, max_bins: int = 2048) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if max_bins < 2:
            raise ValueError(f"max_bins must be >= 2, got {max_bins!r}")
        self.relative_accuracy = relative_accuracy
        self.max_bins = max_bins
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._bins: dict[int, int] = {}
        # (lowest, highest) bucket in use when known, else None: the collapse check needs both after every batch,
        # and a batch's buckets come ascending, so the range follows them instead of two scans of ~300 buckets
        # (~10 µs of a ~100 µs fold at 41 window keys).
        self._range: tuple[int, int] | None = None
        self._zero = 0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def bin_count(self) -> int:
        """Buckets in use, including the zero bucket; bounded by ``max_bins + 1``."""
        return len(self._bins) + (1 if self._zero else 0)

    def add(self, x: float) -> None:
        # Through numpy as well: math.log and np.log may differ in the last bit, which could move a
        # value that sits on a bucket edge and break add/add_many equivalence.
        self.add_many([x])

    def add_many(self, values: Sequence[float] | npt.NDArray[np.floating[Any]]) -> None:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        finite = np.isfinite(arr)
        if not finite.all():
            raise not_finite(float(arr[~finite][0]))
        positive = arr[arr > 0.0]
        self.add_split(int(arr.size - positive.size), positive)

    def add_split(self, zero: int, positive: npt.NDArray[np.float64]) -> None:
        """Add finite values already split: ``zero`` of them <= 0, ``positive`` the rest (the window aggregator
        counts them in its own pass over the rows: canary.core.aggregations)."""
        self._zero += zero
        self._count += zero + int(positive.size)
        if positive.size:
            bins = self._bins
            fresh = not bins
            # numpy's logarithm on either path (see bucket_counts); its buckets ascend.
            logs = np.log(positive)
            add = accel.NATIVE.bucket_add
            if add is not None:
                batch = add(bins, logs, self._log_gamma)
            else:
                pairs = bucket_counts(logs, self._log_gamma)
                batch = (pairs[0][0], pairs[-1][0])
                for k, c in pairs:
                    bins[k] = bins.get(k, 0) + c
            self._range = batch if fresh else _joined(self._range, batch)
            self._collapse()

    def merge(self, other: QuantileSketch) -> None:
        if other.relative_accuracy != self.relative_accuracy or other.max_bins != self.max_bins:
            raise ValueError(
                "cannot merge sketches with different parameters: "
                f"({self.relative_accuracy}, {self.max_bins}) "
                f"vs ({other.relative_accuracy}, {other.max_bins})"
            )
        bins = self._bins
        if other._bins:
            self._range = other._range if not bins else _joined(self._range, other._range)
        add = accel.NATIVE.add_counts
        if add is not None:
            add(bins, other._bins)
        else:
            for k, c in other._bins.items():
                bins[k] = bins.get(k, 0) + c
        self._zero += other._zero
        self._count += other._count
        self._collapse()

    def _collapse(self) -> None:
        # Fold every bucket below (top - max_bins + 1) into that floor bucket. The floor depends only on
        # the top bucket, only rises, and clamping twice equals clamping once at the higher floor, so the
        # final state is a function of the values seen: order and batch split cannot change it (a rule
        # like "collapse when more than max_bins buckets are in use" would not have that property). Only
        # the low tail loses accuracy, which a p95 never looks at.
        if not self._bins:
            return
        if self._range is None:
            self._range = (min(self._bins), max(self._bins))
        low, top = self._range
        floor = top - self.max_bins + 1
        if low >= floor:
            return
        folded = sum(c for k, c in self._bins.items() if k < floor)
        self._bins = {k: c for k, c in self._bins.items() if k >= floor}
        self._bins[floor] = self._bins.get(floor, 0) + folded
        self._range = (floor, top)

    def _value(self, index: int) -> float:
        return 2.0 * self._gamma**index / (self._gamma + 1.0)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1), ``None`` when empty.

        Same rank convention as ``numpy.percentile(method="linear")``: rank ``q * (n - 1)``, linearly
        interpolated between the bucket values at the two neighbouring ranks. Interpolating (rather than
        returning the bucket at the floor rank) keeps the relative-error bound even for tiny n, where
        neighbouring order statistics can be far apart.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        if self._count == 0:
            return None
        rank = q * (self._count - 1)
        lo = math.floor(rank)
        hi = min(lo + 1, self._count - 1)
        frac = rank - lo
        v_lo = self._value_at_rank(lo)
        v_hi = v_lo if hi == lo else self._value_at_rank(hi)
        return v_lo + (v_hi - v_lo) * frac

    def _value_at_rank(self, rank: int) -> float:
        seen = self._zero
        if rank < seen:
            return 0.0
        for k in sorted(self._bins):
            seen += self._bins[k]
            if rank < seen:
                return self._value(k)
        raise AssertionError("rank beyond count")  # unreachable: rank < count

    def copy(self) -> QuantileSketch:
        out = QuantileSketch(self.relative_accuracy, self.max_bins)
        out._bins = dict(self._bins)
        out._range = self._range
        out._zero = self._zero
        out._count = self._count
        return out

    def to_dict(self) -> dict[str, Any]:
        """Sorted ``[index, count]`` pairs: small, and identical JSON for identical contents."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_bins": self.max_bins,
            "zero": self._zero,
            "bins": list(map(list, sorted(self._bins.items()))),  # [index, count] lists; map in C: ~4x a listcomp
        }

    def json_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` for a JSON encoder: the pairs as ``(index, count)`` tuples, which JSON writes as the
        same arrays (the same bytes), without a list built per pair. Not equal (``==``) to the parsed JSON."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_bins": self.max_bins,
            "zero": self._zero,
            "bins": sorted(self._bins.items()),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantileSketch:
        try:
            out = cls(float(d["relative_accuracy"]), int(d["max_bins"]))
            zero = d["zero"]
            pairs = d["bins"]
            # Strict pairs (a window's hundreds) converted in C; anything else read and checked in Python.
            checked = exactly(pairs, _BINS) if isinstance(pairs, list) else None
            bins = dict(checked) if checked is not None else {int(k): int(c) for k, c in pairs}
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"QuantileSketch: malformed state ({exc!r}): {dict(d)!r:.200}") from None
        if not isinstance(zero, int) or zero < 0 or (checked is None and any(c <= 0 for c in bins.values())):
            raise InvalidEvent(f"QuantileSketch: counts must be positive integers: {dict(d)!r:.200}")
        out._restore(zero, bins)
        return out

    @classmethod
    def restored(cls, relative_accuracy: float, max_bins: int, zero: int, bins: dict[int, int]) -> QuantileSketch:
        """A sketch from its parts as :meth:`from_dict` accepts them (``zero`` >= 0, every count > 0: the caller
        has checked); ValueError for settings the constructor refuses."""
        out = cls(relative_accuracy, max_bins)
        out._restore(zero, bins)
        return out

    def _restore(self, zero: int, bins: dict[int, int]) -> None:
        self._bins = bins
        self._range = None  # worked out at the next collapse check
        self._zero = zero
        self._count = zero + sum(bins.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable: equal contents must not imply a stable hash

    def __repr__(self) -> str:
        return f"QuantileSketch(count={self._count}, bins={self.bin_count}, a={self.relative_accuracy})"
