"""The typed sections of a preset. Plain immutable values: validation happens in presets._parse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from canary.core.policy import (
    BUILTIN_RULE_NAMES,
    DEFAULT_CONSECUTIVE_BUCKETS,
    DEFAULT_MIN_SAMPLES,
    METHODS,
    METRICS,
    OPERATORS,
    SLOSection,
)

RETRIEVER_TYPES: Final = ("hybrid", "dense", "bm25")
# cross_encoder: the model reads every pool document per request; bi_encoder: the pool is rescored with
# passage embeddings the model computed at index build (router/backends/cranfield.py); none: fused order.
RERANKER_TYPES: Final = ("cross_encoder", "bi_encoder", "none")
# The slo section is canary.core.policy's (one grammar for presets, rules files, environments, the API and the
# SLO agent); these names re-export its vocabulary for config's readers.
SLO_METRICS: Final[tuple[str, ...]] = METRICS
SLO_METHODS: Final[tuple[str, ...]] = METHODS
__all__ = [
    "BUILTIN_RULE_NAMES",
    "DEFAULT_CONSECUTIVE_BUCKETS",
    "DEFAULT_MIN_SAMPLES",
    "OPERATORS",
    "RERANKER_TYPES",
    "RETRIEVER_TYPES",
    "SLO_METHODS",
    "SLO_METRICS",
    "DerivedParams",
    "MacroKnobs",
    "Metadata",
    "RerankerConfig",
    "RetrieverConfig",
    "SLOConfig",
]


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


SLOConfig = SLOSection
"""A preset's ``slo`` section: the core's one validated model (canary.core.policy.SLOSection)."""
