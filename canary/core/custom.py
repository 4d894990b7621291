"""Custom metrics: extra numbers per request (``SearchOutcome.metrics``) with declared aggregations.

A preset declares them under ``slo.metrics`` (``{name, aggregation, low, high}``) and may put rules on them
in ``slo.rules`` like on the built-in metrics, judged with the same evidence machinery:

* ``mean``  — a bounded mean: values are clipped to ``[low, high]`` (default ``[0, 1]``: ndcg@10, mrr@10)
  and kept as a 1/1000-step histogram of the normalised value, the betting martingale of recall@10;
* ``rate``  — the share of requests whose value is above 0 (a Bernoulli rate, as the error rate);
* ``p50`` / ``p90`` / ``p95`` / ``p99`` — a quantile: a sketch for the value shown, and exact counts above
  each rule threshold for the evidence (distribution-free, as the latency quantiles; upper bounds only).

Only requests that carry the metric count for it (``n``); a window's stats hold one :class:`CustomStats`
per declared metric, a plain sum that pools and merges by addition like every other window statistic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np

from canary.core.evidence import RECALL_BINS
from canary.core.sketch import QuantileSketch
from canary.errors import SHAPE_ERRORS, ConfigError, InvalidEvent

AGGREGATIONS: Final = ("mean", "rate", "p50", "p90", "p95", "p99")
# Where a custom metric's values come from: the outcomes the routers publish, or one external number per
# window from a Prometheus query (docs/contracts.md, "External metrics").
SOURCES: Final = ("outcomes", "prometheus")
# What a Prometheus query may name: replaced by the window's values (PromQL-escaped strings, numbers).
QUERY_PLACEHOLDERS: Final = ("deployment", "arm", "config", "window_start", "window_end", "window_s")
QUERY_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")  # the one reader of them
MAX_QUERY_CHARS: Final = 2000
DEFAULT_QUERY_TIMEOUT_MS: Final = 2000
QUANTILE_LEVELS: Final = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
MAX_CUSTOM_METRICS: Final = 16


@dataclass(frozen=True, slots=True)
class CustomMetric:
    name: str
    aggregation: str = "mean"
    low: float = 0.0
    high: float = 1.0
    description: str = ""
    source: str = "outcomes"  # one of SOURCES
    query: str = ""  # source prometheus: the PromQL, with QUERY_PLACEHOLDERS
    timeout_ms: int = DEFAULT_QUERY_TIMEOUT_MS

    @property
    def external(self) -> bool:
        return self.source != "outcomes"

    def __post_init__(self) -> None:
        where = f"slo.metrics {self.name!r}"
        if self.source not in SOURCES:
            raise ConfigError(f"{where}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.external and (self.aggregation != "mean" or not self.query):
            raise ConfigError(f"{where}: an external metric is one value per window: aggregation mean and a query")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"{where}: aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        for bound in (self.low, self.high):
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise ConfigError(f"{where}: low and high must be finite numbers, got {bound!r}")
        if not self.low < self.high:
            raise ConfigError(f"{where}: low ({self.low:g}) must be below high ({self.high:g})")

    @property
    def quantile(self) -> float | None:
        return QUANTILE_LEVELS.get(self.aggregation)

    def normalise(self, value: float) -> float:
        return min(max((value - self.low) / (self.high - self.low), 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        if not self.external:  # absent for the outcomes' own metrics: older snapshots keep their hashes
            for key in ("source", "query", "timeout_ms"):
                del d[key]
        return d


# Result-diff metrics (docs/contracts.md, "Result-diff metrics"): the router measures them on a sampled share of
# the candidate's requests against last_good's answer to the same query. A rule may name them without
# declaring them (the section then carries their declaration, so a snapshot shows what is applied).
RESULT_DIFF_METRICS: Final = {
    "rbo_at_10": CustomMetric(
        "rbo_at_10", "mean", 0.0, 1.0, "rank-biased overlap (p = 0.9) of the top 10 with last_good's for the query"
    ),
    "jaccard_at_10": CustomMetric(
        "jaccard_at_10", "mean", 0.0, 1.0, "|A ∩ B| / |A ∪ B| of the top-10 sets, against last_good's"
    ),
    "top1_changed": CustomMetric("top1_changed", "rate", 0.0, 1.0, "share of queries whose first result changed"),
}


@dataclass(frozen=True, slots=True)
class CustomStats:
    """Sufficient statistics of one custom metric in one window (sums only: pools by addition)."""

    n: int = 0
    hist: tuple[tuple[int, int], ...] = ()  # mean: normalised value in 1/1000 steps → count
    hits: int = 0  # rate: requests with a value above 0
    exceed: tuple[tuple[str, int], ...] = ()  # quantiles: requests above each rule threshold
    sketch: QuantileSketch | None = None  # quantiles: the value shown

    def merge(self, other: CustomStats) -> CustomStats:
        hist = dict(self.hist)
        for b, c in other.hist:
            hist[b] = hist.get(b, 0) + c
        exceed = dict(self.exceed)
        for t, c in other.exceed:
            exceed[t] = exceed.get(t, 0) + c
        sketch = self.sketch.copy() if self.sketch is not None else None
        if other.sketch is not None:
            if sketch is None:
                sketch = other.sketch.copy()
            else:
                sketch.merge(other.sketch)
        return CustomStats(
            self.n + other.n,
            tuple(sorted(hist.items())),
            self.hits + other.hits,
            tuple(sorted(exceed.items(), key=lambda kv: float(kv[0]))),
            sketch,
        )

    def exceedances(self, threshold: float) -> int | None:
        key = format(float(threshold), "g")
        return next((c for t, c in self.exceed if t == key), None)

    def value(self, metric: CustomMetric) -> float | None:
        """The window's point value, in the metric's own units."""
        if self.n == 0:
            return None
        if metric.aggregation == "rate":
            return self.hits / self.n
        if metric.quantile is not None:
            return None if self.sketch is None else self.sketch.quantile(metric.quantile)
        total = sum(b * c for b, c in self.hist)
        return metric.low + (total / self.n / RECALL_BINS) * (metric.high - metric.low)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        if self.hist:
            out["hist"] = [[b, c] for b, c in self.hist]
        if self.hits:
            out["hits"] = self.hits
        if self.exceed:
            out["exceed"] = dict(self.exceed)
        if self.sketch is not None:
            out["sketch"] = self.sketch.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CustomStats:
        try:
            out = cls(
                int(d["n"]),
                tuple(sorted((int(b), int(c)) for b, c in d.get("hist", []))),
                int(d.get("hits", 0)),
                tuple(sorted(((str(t), int(c)) for t, c in d.get("exceed", {}).items()), key=lambda kv: float(kv[0]))),
                QuantileSketch.from_dict(d["sketch"]) if "sketch" in d else None,
            )
        except SHAPE_ERRORS as exc:
            raise InvalidEvent(f"CustomStats: malformed ({exc!r})") from None
        # The judge weighs the histogram as a dense one of RECALL_BINS + 1 bins (canary.core.evidence.Histogram).
        if any(not 0 <= b <= RECALL_BINS or c <= 0 for b, c in out.hist):
            raise InvalidEvent(f"CustomStats: hist bins must be in [0, {RECALL_BINS}] with positive counts: {d!r:.200}")
        return out


@dataclass(frozen=True, slots=True)
class CustomAggregation:
    """How a window aggregator folds the declared metrics: which, and the quantile rule thresholds."""

    metrics: tuple[CustomMetric, ...] = ()
    thresholds: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def agg(self, outcomes: Sequence[Any]) -> dict[str, CustomStats]:
        out: dict[str, CustomStats] = {}
        carried = [m for o in outcomes if (m := getattr(o, "metrics", None))]  # most outcomes carry none
        if not carried:
            return out
        for metric in self.metrics:
            values = [m[metric.name] for m in carried if metric.name in m]
            if not values:
                continue
            arr = np.asarray(values, dtype=np.float64)
            if metric.aggregation == "rate":
                out[metric.name] = CustomStats(len(values), hits=int((arr > 0).sum()))
            elif metric.quantile is not None:
                sketch = QuantileSketch()
                sketch.add_many(np.maximum(arr, 0.0))  # the sketch holds non-negative values
                exceed = tuple(
                    (format(float(t), "g"), int((arr > t).sum())) for t in self.thresholds.get(metric.name, ())
                )
                out[metric.name] = CustomStats(len(values), exceed=exceed, sketch=sketch)
            else:
                norm = np.clip((arr - metric.low) / (metric.high - metric.low), 0.0, 1.0)
                bins, counts = np.unique(np.rint(norm * RECALL_BINS).astype(np.int64), return_counts=True)
                hist = tuple(zip(bins.tolist(), counts.tolist(), strict=True))
                out[metric.name] = CustomStats(len(values), hist=hist)
        return out


def result_diff(customs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The result-diff metrics pooled over windows' ``stats.custom`` (as written in window records): each
    metric's value over every sampled request, and ``samples`` (the requests compared); None when no window
    holds any. Malformed stats are skipped: a display must not fail on one bad record."""
    pooled: dict[str, CustomStats] = {}
    for custom in customs:
        if not isinstance(custom, Mapping):
            continue
        for name in RESULT_DIFF_METRICS:
            raw = custom.get(name)
            if not isinstance(raw, Mapping):
                continue
            try:
                stats = CustomStats.from_dict(raw)
            except InvalidEvent:
                continue
            pooled[name] = pooled[name].merge(stats) if name in pooled else stats
    if not pooled:
        return None
    out: dict[str, Any] = {
        name: (round(v, 4) if (v := stats.value(RESULT_DIFF_METRICS[name])) is not None else None)
        for name, stats in pooled.items()
    }
    out["samples"] = max(stats.n for stats in pooled.values())
    return out


def merge_custom(
    a: tuple[tuple[str, CustomStats], ...], b: Mapping[str, CustomStats] | tuple[tuple[str, CustomStats], ...]
) -> tuple[tuple[str, CustomStats], ...]:
    merged = dict(a)
    for name, stats in b.items() if isinstance(b, Mapping) else b:
        merged[name] = merged[name].merge(stats) if name in merged else stats
    return tuple(sorted(merged.items()))


def custom_to_dict(custom: tuple[tuple[str, CustomStats], ...]) -> dict[str, Any]:
    return {name: stats.to_dict() for name, stats in custom}


def custom_from_dict(d: Any) -> tuple[tuple[str, CustomStats], ...]:
    if not d:
        return ()
    if not isinstance(d, Mapping):
        raise InvalidEvent(f"custom metric stats: expected an object, got {type(d).__name__}")
    return tuple(sorted((str(k), CustomStats.from_dict(v)) for k, v in d.items()))


# -- external metrics: one value per window ---------------------------------------------------------------------
def render_query(metric: CustomMetric, deployment_id: str, arm: str, config: str, start_ms: int, end_ms: int) -> str:
    """The metric's PromQL for one window: strings as escaped PromQL string contents, times in seconds."""

    def text(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    values = {
        "deployment": text(deployment_id),
        "arm": text(arm),
        "config": text(config),
        "window_start": format(start_ms / 1000, ".3f"),
        "window_end": format(end_ms / 1000, ".3f"),
        "window_s": str(max(1, round((end_ms - start_ms) / 1000))),
    }
    return QUERY_PLACEHOLDER.sub(lambda m: values[m.group(1)], metric.query)


def with_external(
    stats: Mapping[str, Any] | None, values: Mapping[str, float | str], metrics: Sequence[CustomMetric]
) -> dict[str, Any]:
    """A window's stats with its external metrics written in: a value becomes the metric's one sample
    (``custom.<name>``, n = 1, so the point judge reads it like any custom mean), a missing one (a reason:
    ``timeout``, ``error``, ``empty``, ``not_configured``) no sample — inconclusive, never a pass — and
    ``external.<name>`` records either, for readers."""
    out = dict(stats or {})
    custom = dict(out.get("custom") or {})
    external = dict(out.get("external") or {})
    for metric in metrics:
        got = values.get(metric.name, "not_queried")
        if isinstance(got, float) and math.isfinite(got):
            bin_ = round(metric.normalise(got) * RECALL_BINS)
            custom[metric.name] = CustomStats(1, hist=((bin_, 1),)).to_dict()
            external[metric.name] = {"value": got}
        else:
            custom.pop(metric.name, None)
            external[metric.name] = {"missing": str(got)}
    if custom:
        out["custom"] = custom
    out["external"] = external
    return out


def recorded_external(stats: Mapping[str, Any] | None) -> dict[str, float | str]:
    """What :func:`with_external` wrote into a window's stats, read back (a replay judges these again rather
    than query Prometheus for the past); malformed entries are skipped."""
    raw = (stats or {}).get("external")
    out: dict[str, float | str] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, entry in raw.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            continue
        value, missing = entry.get("value"), entry.get("missing")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(missing, str):
            out[name] = missing[:64]
    return out
