"""The typed sections of a preset. Plain immutable values: validation happens in presets._parse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from canary.core.custom import CustomMetric
from canary.core.slo import (
    DEFAULT_CONFIDENCE,
    DEFAULT_ERROR_RATE,
    DEFAULT_INCONCLUSIVE_LIMIT,
    METHODS,
    METRICS,
    QUANTILE_METRICS,
    SLOPolicy,
    SLORule,
    policy_from_slo_section,
    rules_from_slo_section,
)

RETRIEVER_TYPES: Final = ("hybrid", "dense", "bm25")
RERANKER_TYPES: Final = ("cross_encoder", "none")
# The SLO vocabulary is canary.core.slo's (the live SLO agent judges with it); config only mirrors it so
# that a bad value is reported as a FieldError at load. tests/config checks that the two agree.
OPERATORS: Final = ("le", "lt", "ge", "gt")  # the bucket passes if `metric <operator> threshold`
# Metrics an SLO rule may watch; a closed set so a misspelt metric fails at load, not silently never fires.
SLO_METRICS: Final[tuple[str, ...]] = METRICS
RATIO_METRICS: Final = ("recall_at_10", "error_rate")  # thresholds must lie in [0, 1]
LATENCY_METRICS: Final[tuple[str, ...]] = tuple(QUANTILE_METRICS)
SLO_METHODS: Final[tuple[str, ...]] = METHODS
DEFAULT_CONSECUTIVE_BUCKETS: Final = 2  # spec: roll back after 2 consecutive failing buckets
DEFAULT_MIN_SAMPLES: Final = 20  # spec: "min_samples, default 20"; a sparser bucket is inconclusive
# Rules derived from slo.p95_ms / slo.recall_at_10 / slo.error_rate by rules_from_slo_section: named after
# their metric.
BUILTIN_RULE_NAMES: Final = ("p95_ms", "recall_at_10", "error_rate")


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str
    description: str
    version: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MacroKnobs:
    """Operator-facing dials in [0, 1]; derived_params are the concrete values they were turned into."""

    latency_guard: float
    recall_bias: float


@dataclass(frozen=True, slots=True)
class DerivedParams:
    T: int  # collection size (vectors) below which an exact scan is used instead of the HNSW index
    Ncand_max: int  # hard cap on candidates gathered before reranking
    batch_size: int  # reranker batch size
    ef: int  # HNSW ef_search: graph breadth explored per query
    rerank_multiplier: int  # candidates sent to the reranker = top_k * rerank_multiplier


@dataclass(frozen=True, slots=True)
class RetrieverConfig:
    type: str  # one of RETRIEVER_TYPES
    alpha: float  # hybrid weight of the dense score; 1 - alpha goes to BM25
    vector_top_k: int
    bm25_top_k: int
    top_k: int


@dataclass(frozen=True, slots=True)
class RerankerConfig:
    type: str  # one of RERANKER_TYPES
    model: str | None
    top_k: int
    # WordPiece tokens per document the rerank model reads (router/backends/reranker.py); None = the
    # backend's default. Omitted from snapshots when None, so presets without it keep their hashes.
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class SLOConfig:
    p95_ms: float
    recall_at_10: float
    consecutive_buckets: int = DEFAULT_CONSECUTIVE_BUCKETS
    min_samples: int = DEFAULT_MIN_SAMPLES
    rules: tuple[SLORule, ...] = ()  # extra rules (canary.core.slo.SLORule) on top of the built-in ones
    error_rate: float | None = DEFAULT_ERROR_RATE  # None: no built-in error-rate rule
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "sequential"
    inconclusive_limit: int = DEFAULT_INCONCLUSIVE_LIMIT
    metrics: tuple[CustomMetric, ...] = ()  # custom metrics the rules may name (canary.core.custom)

    def to_dict(self) -> dict[str, Any]:
        """The preset's ``slo`` section as written in snapshots; canary.core.slo.policy_from_slo_section reads it."""
        return {
            "p95_ms": self.p95_ms,
            "recall_at_10": self.recall_at_10,
            "error_rate": self.error_rate,
            "consecutive_buckets": self.consecutive_buckets,
            "min_samples": self.min_samples,
            "confidence": self.confidence,
            "method": self.method,
            "inconclusive_limit": self.inconclusive_limit,
            "rules": [r.to_dict() for r in self.rules],
            # Absent without custom metrics, so presets written before them keep their content hashes.
            **({"metrics": [m.to_dict() for m in self.metrics]} if self.metrics else {}),
        }

    def all_rules(self) -> list[SLORule]:
        """What the SLO agent evaluates: exactly ``rules_from_slo_section(self.to_dict())``, i.e. the built-in
        ``p95_ms`` / ``recall_at_10`` / ``error_rate`` rules followed by the extra ``rules``."""
        return rules_from_slo_section(self.to_dict())

    def policy(self) -> SLOPolicy:
        return policy_from_slo_section(self.to_dict())
