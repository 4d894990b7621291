"""The bundled backend's engines: faiss HNSW (ef, T, Ncand_max) and bm25s BM25, on literal inputs.

Dense recall here is the engine's own: HNSW hits against the exact cosine top-k over every vector (not the
corpus's hybrid labels, which tests/backends/test_hybrid.py checks at the preset level).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import pytest

from router.backends.corpus import Corpus, build_corpus, default_corpus
from router.backends.hybrid import Bm25Index, HnswIndex, HybridBackend, SearchPlan

SMALL: dict[str, Any] = {"n_docs": 3000, "n_queries": 60, "n_topics": 16}

# A dense-only, rerank-free plan: what the HNSW (or the exact scan) returns is what comes out.
DENSE = SearchPlan(retriever_type="dense", vector_top_k=10, top_k=10, ef=10, ncand_max=1000, exact_below=0)


@pytest.fixture(scope="module")
def small() -> Corpus:
    return build_corpus(**SMALL)


@pytest.fixture(scope="module")
def backend(small: Corpus) -> HybridBackend:
    return HybridBackend(small, rerank="off")


def exact_top(corpus: Corpus, text: str, k: int) -> list[str]:
    cos = corpus.doc_vectors @ corpus.embed(text)
    order = np.lexsort((np.arange(corpus.n_docs), -cos))[:k]
    return [corpus.doc_ids[i] for i in order.tolist()]


# -- BM25 ---------------------------------------------------------------------------------------------------


def test_bm25_scores_are_okapi_lucene_by_hand() -> None:
    # 3 documents over 3 terms; N = 3, avgdl = (3 + 2 + 1) / 3 = 2, k1 = 1.2, b = 0.75.
    #   idf(apple) = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)) = ln(8/3)   = 0.980829  (df 1)
    #   idf(banana) = idf(cherry) = ln(1 + 1.5 / 2.5) = ln(1.6)     = 0.470004  (df 2)
    #   doc 0, apple: tf 2, dl 3 -> 0.980829 * 2 / (2 + 1.2 * (0.25 + 0.75 * 3/2)) = 0.980829 * 2 / 3.65
    bm = Bm25Index([[0, 0, 1], [1, 2], [2]], ["apple", "banana", "cherry"], k1=1.2, b=0.75)
    np.testing.assert_allclose(bm.scores([0], [1.0]), [0.5374407, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(bm.scores([1], [1.0]), [0.1773599, 0.2136380, 0.0], rtol=1e-6)
    np.testing.assert_allclose(bm.scores([2], [1.0]), [0.0, 0.2136380, 0.2685735], rtol=1e-6)
    # a query's terms add up; a term repeated in the query counts twice (as in the corpus's own BM25)
    np.testing.assert_allclose(bm.scores([0, 2], [1.0, 1.0]), [0.5374407, 0.2136380, 0.2685735], rtol=1e-6)
    np.testing.assert_allclose(bm.scores([1], [2.0]), [2 * 0.1773599, 2 * 0.2136380, 0.0], rtol=1e-6)
    assert bm.scores([], []).tolist() == [0.0, 0.0, 0.0]


def test_bm25_engine_is_the_corpus_bm25_over_k1_plus_1(small: Corpus) -> None:
    """The labels use the corpus's exact Okapi BM25 (with the (k1 + 1) factor); bm25s's Lucene variant
    differs by exactly that constant, which list-wise min-max normalisation cancels."""
    bm = Bm25Index.from_corpus(small)
    k1 = small.spec.bm25_k1
    for i in range(20):
        ids, qtf, _ = small.terms(small.query_texts[i])
        reference = small.bm25_terms(ids, qtf)
        np.testing.assert_allclose(bm.scores(ids, qtf) * (k1 + 1), reference, rtol=1e-5, atol=1e-5)


def test_doc_term_ids_are_the_documents_bags(small: Corpus) -> None:
    docs = small.doc_term_ids()
    assert len(docs) == small.n_docs
    assert [len(d) for d in docs] == small.doc_len.astype(int).tolist()
    term = docs[7][0]
    lo, hi = int(small.post_start[term]), int(small.post_start[term + 1])
    assert 7 in small.post_docs[lo:hi].tolist()


# -- HNSW: ef, T, Ncand_max ---------------------------------------------------------------------------------


def test_ef_is_monotone_in_dense_recall_on_the_corpus() -> None:
    c = default_corpus()
    b = HybridBackend(c, rerank="off")
    queries = range(100)
    exact = {i: set(exact_top(c, c.query_texts[i], 10)) for i in queries}
    recalls = []
    for ef in (10, 20, 40, 80, 160, 320):
        plan = dataclasses.replace(DENSE, ef=ef)
        recalls.append(np.mean([len(exact[i] & set(b.retrieve(c.query_texts[i], plan).ids)) / 10 for i in queries]))
    assert all(later >= earlier for earlier, later in itertools.pairwise(recalls)), recalls
    assert recalls[0] < 0.85 < 0.98 < recalls[-1], recalls  # ef really is the breadth knob


def test_ef_not_k_sets_the_walk(small: Corpus) -> None:
    """faiss's efSearch alone sets how far the walk goes; k only picks how many of the vectors it saw come back."""
    index = HybridBackend(small).index
    for i in range(10):
        q = small.embed(small.query_texts[i])
        ids10, _, ndis10 = index.search(q, ef=4, k=10)
        ids100, _, ndis100 = index.search(q, ef=4, k=100)
        assert ndis10 == ndis100
        assert ids100[:10].tolist() == ids10.tolist()
        assert 10 <= len(ids100) <= 100  # a walk this narrow may reach fewer than 100 vectors (faiss pads -1)
        assert index.search(q, ef=64, k=10)[2] > ndis10  # a wider walk computes more distances


def test_t_switches_to_exact_search(backend: HybridBackend, small: Corpus) -> None:
    n = small.n_docs
    exact_plan = dataclasses.replace(DENSE, exact_below=n + 1)  # fewer than T vectors: exact scan
    hnsw_plan = dataclasses.replace(DENSE, exact_below=n)  # not fewer: the graph
    differs = 0
    for i in range(small.n_queries):
        text = small.query_texts[i]
        exact = backend.retrieve(text, exact_plan)
        assert exact.ids == exact_top(small, text, 10)
        assert exact.vectors_scanned == n
        approx = backend.retrieve(text, hnsw_plan)
        assert 0 < approx.vectors_scanned < n  # faiss's distance computations for this walk
        differs += approx.ids != exact.ids
    assert differs > 0  # ef 10 misses some exact neighbours, so the switch is observable


def test_ncand_max_caps_fused_candidates(backend: HybridBackend, small: Corpus) -> None:
    text = small.query_texts[0]
    wide = SearchPlan(vector_top_k=200, bm25_top_k=200, top_k=50, ef=200, ncand_max=10_000, exact_below=0)
    uncapped = backend.retrieve(text, wide)
    assert uncapped.candidates > 200  # the two lists' union
    capped = backend.retrieve(text, dataclasses.replace(wide, ncand_max=37))
    assert capped.candidates == 37
    assert len(capped.ids) == 37  # top_k 50 > cap: only the capped candidates remain
    assert capped.ids == uncapped.ids[:37]  # the cap keeps the best fused candidates
    reranked = backend.retrieve(text, dataclasses.replace(wide, ncand_max=37, reranker_type="cross_encoder"))
    assert reranked.pairs == 37  # rerank pool = min(top_k * multiplier, Ncand_max)


def test_hnsw_search_edges(small: Corpus) -> None:
    index = HybridBackend(small).index
    q = small.embed(small.query_texts[0])
    ids, cos, ndis = index.search(q, ef=10**9, k=small.n_docs + 5)  # ef and k beyond the collection: clamped
    assert len(ids) == small.n_docs and len(set(ids.tolist())) == small.n_docs and ndis > 0
    assert np.all(np.diff(cos) <= 0)
    np.testing.assert_allclose(cos, small.doc_vectors[ids] @ q, rtol=1e-5, atol=1e-6)  # exact cosines
    assert index.search(q, ef=64, k=0)[0].tolist() == []


# -- determinism --------------------------------------------------------------------------------------------


def test_two_builds_give_the_same_ids(small: Corpus) -> None:
    first, second = HnswIndex(small.doc_vectors), HnswIndex(small.doc_vectors)  # fresh, not the cached one
    for i in range(small.n_queries):
        q = small.embed(small.query_texts[i])
        a, b = first.search(q, ef=16, k=20), second.search(q, ef=16, k=20)
        assert a[0].tolist() == b[0].tolist() and a[2] == b[2]
    bm_a, bm_b = Bm25Index.from_corpus(small), Bm25Index.from_corpus(small)
    ids, qtf, _ = small.terms(small.query_texts[0])
    assert np.array_equal(bm_a.scores(ids, qtf), bm_b.scores(ids, qtf))

    rebuilt = HybridBackend(small)
    rebuilt.index, rebuilt.bm25_index = first, bm_a
    plan = SearchPlan(ef=16, exact_below=0, reranker_type="cross_encoder")
    for i in range(20):
        text = small.query_texts[i]
        assert rebuilt.retrieve(text, plan).ids == HybridBackend(small).retrieve(text, plan).ids


def test_build_is_single_threaded_and_restores_omp_threads(small: Corpus) -> None:
    before = faiss.omp_get_max_threads()
    HnswIndex(small.doc_vectors[:500])
    assert faiss.omp_get_max_threads() == before


def test_knob_defaults_match_last_good() -> None:
    plan = SearchPlan()
    assert (plan.ef, plan.exact_below, plan.ncand_max) == (64, 700, 1000)
    assert math.isclose(plan.alpha, 0.5)


def test_concurrent_searches_match_sequential_ones(backend: HybridBackend, small: Corpus) -> None:
    """Presets share one index: per-call efSearch (no shared ef state) keeps concurrent searches independent."""
    plans = [dataclasses.replace(DENSE, ef=ef, vector_top_k=k) for ef, k in ((4, 10), (32, 50), (256, 100))]
    jobs = [(small.query_texts[i % small.n_queries], plans[i % 3]) for i in range(90)]
    sequential = [backend.retrieve(text, plan) for text, plan in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda job: backend.retrieve(*job), jobs))
    assert [r.ids for r in concurrent] == [r.ids for r in sequential]
    assert [r.vectors_scanned for r in concurrent] == [r.vectors_scanned for r in sequential]
