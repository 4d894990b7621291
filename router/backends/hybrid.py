"""The bundled default backend: a real hybrid retriever (BM25 + IVF dense ANN + fusion + rerank).

It searches the deterministic generated corpus of :mod:`router.backends.corpus` (every ``collection``
name maps to that one corpus) and honours a preset snapshot's knobs, so they move latency and recall:

1. **BM25** – term-at-a-time over the corpus's inverted index (exact Okapi BM25); keeps
   ``retriever.bm25_top_k`` hits.
2. **Dense ANN** – an IVF index (spherical k-means cells, built deterministically when the backend is
   created) over **int8-quantised** vectors. ``derived_params.ef`` is the breadth knob, as ``ef_search`` is
   for HNSW: ``ceil(ef / ef_per_cell)`` cells (default 8 per cell, ≈ 80 vectors each) closest to the query
   are scanned; keeps ``retriever.vector_top_k`` hits by approximate (quantised) cosine. When the collection
   has fewer than ``derived_params.T`` vectors the index is bypassed for an exact full-precision scan.
3. **Fusion** – each retriever's scores are min-max normalised between the best and the
   :data:`~router.backends.corpus.NORM_DEPTH`-th (100th) best score *it saw* (every matched document for
   BM25, every scanned vector for the index – however few hits it keeps), clipped at 0; a document
   missing from a list scores 0 there. Then ``alpha * dense + (1 - alpha) * bm25`` with
   ``retriever.alpha``; the best ``derived_params.Ncand_max`` candidates are kept. This is the same
   normalisation the corpus's relevance labels use.
4. **Rerank** (``reranker.type == "cross_encoder"``) – the best ``top_k * rerank_multiplier`` fused
   candidates are rescored *exactly* (full-precision cosine instead of int8, exact BM25), normalised and
   fused the same way with the preset's alpha. The final ranking is the best
   ``min(retriever.top_k, reranker.top_k)`` of those. With ``reranker.type == "none"`` the fused order is
   returned (``retriever.top_k`` ids) and no rerank happens.

The cross-encoder itself is a **latency model, not a model**: nothing can be downloaded here, so the rerank
costs ``pairs * ms_per_pair + ceil(pairs / batch_size) * ms_per_batch`` of ``asyncio.sleep`` (defaults
1.5 ms per pair – a typical CPU figure for ms-marco-MiniLM-L-6 – and 4 ms per batch call), while the
scores come from the exact rescoring above. ``retriever.type`` ``dense`` / ``bm25`` run a single stage.

CPU work runs in a worker thread (``asyncio.to_thread``; numpy releases the GIL), so the router's event
loop stays responsive. With the default corpus (20 000 docs) construction takes a few seconds, once per
process (corpus and index are cached).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from router.backends.corpus import Corpus, default_corpus, depth_stats, normalize_list
from router.backends.exact import exact_top_k, run_exact

__all__ = ["HybridBackend", "IvfIndex", "Retrieval", "SearchPlan"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DEFAULT_MS_PER_PAIR: Final = 1.5  # ms-marco-MiniLM-L-6-v2 on a few CPU cores, ~670 pairs/s
DEFAULT_MS_PER_BATCH: Final = 4.0  # fixed cost of one model call (tokenisation, dispatch)
DEFAULT_EF_PER_CELL: Final = 8
DOCS_PER_CELL: Final = 80


def _top(scores: F32, ids: I64, k: int) -> tuple[I64, F32]:
    """The best ``k`` (ids, scores), best first; ties broken by ascending id (deterministic)."""
    if k <= 0 or len(scores) == 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        keep = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]


class IvfIndex:
    """Inverted-file ANN index over int8-quantised unit vectors (inner product = cosine)."""

    def __init__(self, vectors: F32, nlist: int, seed: int = 0, iterations: int = 10) -> None:
        n, dim = vectors.shape
        nlist = max(1, min(nlist, n))
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, size=min(n, max(40 * nlist, 10_000)), replace=False))]
        centroids = sample[np.sort(rng.choice(len(sample), size=nlist, replace=False))].copy()
        for _ in range(iterations):  # spherical k-means (Lloyd), empty cells re-seeded from the sample
            assign = np.argmax(sample @ centroids.T, axis=1)
            sums = np.zeros_like(centroids)
            np.add.at(sums, assign, sample)
            counts = np.bincount(assign, minlength=nlist)
            empty = np.flatnonzero(counts == 0)
            sums[empty] = sample[rng.choice(len(sample), size=len(empty), replace=False)]
            centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        self.centroids: F32 = centroids.astype(np.float32)
        assign = np.argmax(vectors @ self.centroids.T, axis=1)
        self.order: I64 = np.argsort(assign, kind="stable").astype(np.int64)  # row -> doc index
        self.cell_start: I64 = np.concatenate(([0], np.cumsum(np.bincount(assign, minlength=nlist)))).astype(np.int64)
        self.scale: F32 = (np.abs(vectors).max(axis=0) / 127.0).astype(np.float32)  # symmetric, per dimension
        self.scale[self.scale == 0] = 1.0
        self.codes: npt.NDArray[np.int8] = np.round(vectors[self.order] / self.scale).astype(np.int8)
        self.nlist = nlist
        self.dim = dim

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.centroids.nbytes + self.order.nbytes)

    def search(self, query: F32, nprobe: int, k: int) -> tuple[I64, F32, tuple[float, float], int]:
        """Scan the ``nprobe`` closest cells: (doc indices, approximate cosines, normalisation stats of all
        scanned scores (see :func:`depth_stats`), vectors scanned)."""
        nprobe = max(1, min(nprobe, self.nlist))
        cell_scores = self.centroids @ query
        cells = np.lexsort((np.arange(self.nlist), -cell_scores))[:nprobe]
        starts, ends = self.cell_start[cells], self.cell_start[cells + 1]
        rows = np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
        approx = (self.codes[rows].astype(np.float32) @ (query * self.scale)).astype(np.float32)
        ids, scores = _top(approx, self.order[rows], k)
        return ids, scores, depth_stats(approx), len(rows)


@functools.lru_cache(maxsize=4)
def _index_for(corpus: Corpus, nlist: int) -> IvfIndex:
    return IvfIndex(corpus.doc_vectors, nlist, seed=corpus.spec.seed + 1)


def _section(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = params.get(name)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """The knobs this backend reads from a preset snapshot (missing values fall back to last_good's)."""

    retriever_type: str = "hybrid"
    alpha: float = 0.5
    vector_top_k: int = 100
    bm25_top_k: int = 100
    top_k: int = 20
    ef: int = 64
    ncand_max: int = 1000
    rerank_multiplier: int = 2
    batch_size: int = 128
    exact_below: int = 700  # derived_params.T
    reranker_type: str = "none"
    reranker_top_k: int = 20

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SearchPlan:
        r, d, rr = _section(params, "retriever"), _section(params, "derived_params"), _section(params, "reranker")
        base = _DEFAULT_PLAN
        top_k = int(r.get("top_k", base.top_k))
        return cls(
            retriever_type=str(r.get("type", base.retriever_type)),
            alpha=float(r.get("alpha", base.alpha)),
            vector_top_k=int(r.get("vector_top_k", base.vector_top_k)),
            bm25_top_k=int(r.get("bm25_top_k", base.bm25_top_k)),
            top_k=top_k,
            ef=int(d.get("ef", base.ef)),
            ncand_max=int(d.get("Ncand_max", base.ncand_max)),
            rerank_multiplier=int(d.get("rerank_multiplier", base.rerank_multiplier)),
            batch_size=max(1, int(d.get("batch_size", base.batch_size))),
            exact_below=int(d.get("T", base.exact_below)),
            reranker_type=str(rr.get("type", "none")),
            reranker_top_k=int(rr.get("top_k", top_k)),
        )

    @property
    def reranks(self) -> bool:
        return self.reranker_type == "cross_encoder"


_DEFAULT_PLAN: Final = SearchPlan()


@dataclass(frozen=True, slots=True)
class Retrieval:
    """The CPU side of one search: final ranking plus what was spent on it."""

    ids: list[str]
    pairs: int  # candidates the cross-encoder scores (0 without a reranker)
    vectors_scanned: int
    candidates: int  # fused candidates after the Ncand_max cap


class HybridBackend:
    """Hybrid BM25 + IVF-int8 dense retrieval with alpha fusion and exact rerank over a generated corpus.

    ``corpus`` defaults to :func:`~router.backends.corpus.default_corpus`. ``ms_per_pair`` /
    ``ms_per_batch`` parametrise the cross-encoder *latency model* (no model runs). ``nlist`` defaults to
    one cell per ~80 documents; ``ef_per_cell`` maps ``ef`` to probed cells.
    """

    def __init__(
        self,
        corpus: Corpus | None = None,
        *,
        nlist: int | None = None,
        ef_per_cell: int = DEFAULT_EF_PER_CELL,
        ms_per_pair: float = DEFAULT_MS_PER_PAIR,
        ms_per_batch: float = DEFAULT_MS_PER_BATCH,
    ) -> None:
        self.corpus = corpus if corpus is not None else default_corpus()
        self.index = _index_for(self.corpus, nlist or max(1, self.corpus.n_docs // DOCS_PER_CELL))
        self.ef_per_cell = max(1, ef_per_cell)
        self.ms_per_pair = ms_per_pair
        self.ms_per_batch = ms_per_batch

    # -- protocol -------------------------------------------------------------------------------------------
    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        """Ranked doc ids for ``query``; ``collection`` is ignored (one generated corpus serves them all)."""
        plan = SearchPlan.from_params(params)
        result = await asyncio.to_thread(self.retrieve, query, plan)
        if plan.reranks and result.pairs:
            await asyncio.sleep(self.cross_encoder_ms(result.pairs, plan.batch_size) / 1000.0)
        return result.ids

    async def exact_search(self, query: str, collection: str, k: int) -> Sequence[str]:
        """Brute-force top-``k`` (:mod:`router.backends.exact`): the truth sampled recall is measured against."""
        return await run_exact(exact_top_k, self.corpus, query, k)

    # -- pieces (synchronous, for tests and benchmarks) ------------------------------------------------------
    def cross_encoder_ms(self, pairs: int, batch_size: int) -> float:
        """Modelled cross-encoder inference time for ``pairs`` (query, document) pairs."""
        if pairs <= 0:
            return 0.0
        return pairs * self.ms_per_pair + math.ceil(pairs / max(1, batch_size)) * self.ms_per_batch

    def nprobe(self, ef: int) -> int:
        return max(1, min(self.index.nlist, math.ceil(ef / self.ef_per_cell)))

    def retrieve(self, query: str, plan: SearchPlan) -> Retrieval:
        c = self.corpus
        use_dense = plan.retriever_type != "bm25"
        use_bm25 = plan.retriever_type != "dense"
        alpha = 1.0 if not use_bm25 else 0.0 if not use_dense else min(1.0, max(0.0, plan.alpha))
        term_ids, qtf, unknown = c.terms(query)
        if not term_ids and not unknown:  # nothing to search for
            return Retrieval([], 0, 0, 0)
        qvec = c.embed(query)
        all_ids = np.arange(c.n_docs, dtype=np.int64)

        # Each retriever normalises by the best and the NORM_DEPTH-th best score it *saw* (all matched
        # documents for BM25, all scanned vectors for the index), however few hits it then keeps.
        bm_all = c.bm25_terms(term_ids, qtf) if use_bm25 else np.zeros(c.n_docs, dtype=np.float32)
        no_stats = (0.0, 0.0)
        if use_bm25:
            matched = np.flatnonzero(bm_all > 0).astype(np.int64)
            bm_stats = depth_stats(bm_all)  # documents without a query term score 0
            bm_ids, bm_scores = _top(bm_all[matched], matched, plan.bm25_top_k)
        else:
            bm_ids, bm_scores, bm_stats = all_ids[:0], bm_all[:0], no_stats

        scanned = 0
        if not use_dense:
            dn_ids, dn_scores, dn_stats = all_ids[:0], bm_all[:0], no_stats
        elif c.n_docs < plan.exact_below:  # small collection: exact scan beats the index
            cos = (c.doc_vectors @ qvec).astype(np.float32)
            dn_ids, dn_scores = _top(cos, all_ids, plan.vector_top_k)
            dn_stats, scanned = depth_stats(cos), c.n_docs
        else:
            dn_ids, dn_scores, dn_stats, scanned = self.index.search(qvec, self.nprobe(plan.ef), plan.vector_top_k)

        # fusion of normalised scores; a document missing from a list scores 0 there
        fused = np.zeros(c.n_docs, dtype=np.float32)
        member = np.zeros(c.n_docs, dtype=bool)
        if len(dn_ids):
            fused[dn_ids] += alpha * normalize_list(dn_scores, dn_stats)
            member[dn_ids] = True
        if len(bm_ids):
            fused[bm_ids] += (1.0 - alpha) * normalize_list(bm_scores, bm_stats)
            member[bm_ids] = True
        cand = np.flatnonzero(member).astype(np.int64)
        cand_ids, _ = _top(fused[cand], cand, plan.ncand_max)

        if not plan.reranks:
            final = cand_ids[: plan.top_k]
            return Retrieval([c.doc_ids[i] for i in final.tolist()], 0, scanned, len(cand_ids))

        # exact rescoring: full-precision cosine and exact BM25 of the pool, same normalisation
        pool = cand_ids[: max(0, plan.top_k * plan.rerank_multiplier)]
        exact = np.zeros(len(pool), dtype=np.float32)
        if use_dense and len(pool):
            exact += alpha * normalize_list((c.doc_vectors[pool] @ qvec).astype(np.float32), dn_stats)
        if use_bm25 and len(pool):
            exact += (1.0 - alpha) * normalize_list(bm_all[pool], bm_stats)
        final, _ = _top(exact, pool, min(plan.top_k, plan.reranker_top_k))
        return Retrieval([c.doc_ids[i] for i in final.tolist()], len(pool), scanned, len(cand_ids))
