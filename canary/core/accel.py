"""The faster stand-ins for a few of the core's pure functions: the native batch core's (``native/``, built by
`make install` where cargo is), handed over once by :mod:`canary.pipeline.native`. Each answers as the Python
reference it stands in for (tests compare them on arbitrary inputs); without the extension every one is None and
the references run.

This module imports nothing heavy, so the hand-over loads no numpy: numpy's thread pool must start after a
service's stop deadline is installed, or its thread takes the stop signals (canary.runtime)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


@dataclass(slots=True)
class StandIns:
    all_finite: Callable[[Any], bool] | None = None
    """For ``canary.core.jsonio._finite``: is there no NaN or infinity in a value orjson encoded."""
    structure: Callable[[bytes], tuple[int, int]] | None = None
    """For ``canary.core.wire.structure_of``: a record's deepest nesting and its number of arrays and objects."""
    fold_parts: Callable[..., tuple[Any, ...]] | None = None
    """For ``canary.core.aggregations.count_columns``: what pieces of outcome columns (a window's pending ones) add
    to it, counted where they are."""
    bucket_add: Callable[[dict[int, int], Any, float], tuple[int, int] | None] | None = None
    """For ``QuantileSketch.add_split``'s loop: the buckets of ``canary.core.sketch.bucket_counts`` added into the
    sketch's dict in place (the batch's lowest and highest index; None for no values)."""
    add_counts: Callable[[dict[Any, Any], dict[Any, Any]], None] | None = None
    """For ``QuantileSketch.merge``'s loop: another sketch's counts added into a sketch's dict in place."""
    merge_pairs: Callable[[Any, Any], tuple[tuple[int, int], ...] | None] | None = None
    """For ``canary.core.aggregations.merged_pairs``: two ascending ``(key, count)`` histograms added up (None: the
    reference decides, for pairs that are not exact ints with strictly ascending keys)."""


NATIVE = StandIns()


def install(module: object) -> None:
    """Take every stand-in ``module`` has (an extension built before one existed lacks it: its reference runs)."""
    for f in fields(StandIns):
        setattr(NATIVE, f.name, getattr(module, f.name, None))


def clear() -> None:
    """The references alone (tests compare both paths)."""
    install(object())
