"""The bundled hybrid backend over the generated corpus: real retrieval, no Kafka.

Most tests use a small corpus (3 000 docs, built in well under a second); the preset-level recall checks
use the default corpus, exactly as the router and bench/preset_table.py do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canary.config import PresetStore
from canary.errors import ConfigError
from router.backends.base import SearchBackend, load_backend
from router.backends.corpus import Corpus, CorpusSpec, build_corpus, default_corpus
from router.backends.hybrid import HybridBackend, SearchPlan
from router.requests import recall_at_10

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "presets"
SMALL: dict[str, Any] = {"n_docs": 3000, "n_queries": 60, "n_topics": 16}


@pytest.fixture(scope="module")
def small() -> Corpus:
    return build_corpus(**SMALL)


@pytest.fixture(scope="module")
def backend(small: Corpus) -> HybridBackend:
    return HybridBackend(small, rerank="off")


def preset(name: str) -> dict[str, Any]:
    return PresetStore(PRESETS).get(name).to_dict()


def mean_recall(b: HybridBackend, plan: SearchPlan, queries: int) -> float:
    scores = []
    for i in range(queries):
        text, relevant = b.corpus.query(i)
        scores.append(recall_at_10(b.retrieve(text, plan).ids, relevant))
    return float(np.mean([s for s in scores if s is not None]))


def exhaustive(n_docs: int) -> SearchPlan:
    """Every document reaches every stage; reference alpha; exact rerank."""
    return SearchPlan(
        alpha=0.7,
        vector_top_k=n_docs,
        bm25_top_k=n_docs,
        top_k=10,
        ef=10**9,
        ncand_max=n_docs,
        rerank_multiplier=n_docs,
        exact_below=0,
        reranker_type="cross_encoder",
        reranker_top_k=10,
    )


def test_protocol_conformance() -> None:
    assert isinstance(HybridBackend(), SearchBackend)
    assert isinstance(load_backend("router.backends.hybrid:HybridBackend"), HybridBackend)


def test_corpus_is_deterministic(small: Corpus) -> None:
    again = Corpus(CorpusSpec(**SMALL))  # a fresh build, bypassing the cache
    assert again.query_texts == small.query_texts
    assert np.array_equal(again.labels, small.labels)
    assert np.array_equal(again.doc_vectors, small.doc_vectors)
    text, relevant = small.query(0)
    assert text and len(relevant) == 10 and len(set(relevant)) == 10
    assert set(relevant) <= set(small.doc_ids)


async def test_same_query_same_ids(backend: HybridBackend) -> None:
    params = preset("last_good")
    text, _ = backend.corpus.query(3)
    first = await backend.search(text, "documents", params)
    second = await backend.search(text, "documents", params)
    assert list(first) == list(second)
    assert len(first) == 20
    # one generated corpus serves every collection name
    assert list(await backend.search(text, "some-other-collection", params)) == list(first)


async def test_unknown_words_and_empty_queries(backend: HybridBackend) -> None:
    params = preset("last_good")
    assert len(await backend.search("zzzunknown qqqword", "documents", params)) == 20  # dense side still answers
    assert list(await backend.search("", "documents", params)) == []
    assert list(await backend.search("  ?! ", "documents", params)) == []


def test_exhaustive_search_reproduces_labels(backend: HybridBackend, small: Corpus) -> None:
    plan = exhaustive(small.n_docs)
    assert mean_recall(backend, dataclasses.replace(plan, exact_below=10**9), 40) == pytest.approx(1.0)
    assert mean_recall(backend, plan, 40) >= 0.98  # via the HNSW graph, ef = every vector


def test_larger_ef_does_not_lose_recall(backend: HybridBackend, small: Corpus) -> None:
    base = SearchPlan.from_params(preset("last_good"))
    recalls = [mean_recall(backend, dataclasses.replace(base, ef=ef), 60) for ef in (4, 16, 64, 256, 1024)]
    assert all(b >= a for a, b in itertools.pairwise(recalls)), recalls
    assert recalls[-1] > recalls[0]


def test_shipped_presets_land_on_the_right_side_of_the_recall_slo() -> None:
    b = HybridBackend(default_corpus())
    recall = {
        name: mean_recall(b, SearchPlan.from_params(preset(name)), 100)
        for name in ("last_good", "candidate_high_recall", "candidate_low_recall")
    }
    assert recall["candidate_low_recall"] < 0.30, recall
    assert recall["last_good"] >= 0.30, recall
    assert recall["candidate_high_recall"] > recall["last_good"], recall


async def test_rerank_stage_runs_the_model_on_the_pool(small: Corpus) -> None:
    b = HybridBackend(small)
    text, _ = small.query(0)

    def params(multiplier: int, reranker: str = "cross_encoder") -> Mapping[str, Any]:
        p = preset("last_good")
        p["retriever"].update(top_k=10, vector_top_k=400, bm25_top_k=400)
        p["derived_params"].update(rerank_multiplier=multiplier, Ncand_max=1000, batch_size=32)
        p["reranker"].update(type=reranker, top_k=10, max_tokens=8)
        return p

    async def cpu(p: Mapping[str, Any]) -> float:
        start = time.process_time()  # the model runs in a worker thread: process time counts every thread
        await b.search(text, "documents", p)
        return time.process_time() - start

    await cpu(params(1))  # warm-up: the first call loads the model
    none, few, many = await cpu(params(8, "none")), await cpu(params(1)), await cpu(params(8))
    assert none < many and few < many  # 0 vs 10 vs 80 pairs of real forward passes
    plan = SearchPlan.from_params(params(8))
    result = b.retrieve(text, plan)
    assert result.pairs == len(result.pool) == 80
    assert set(result.ids) <= {small.doc_ids[i] for i in result.pool}
    assert b.rerank_scores(text, result.pool, plan).shape == (80,)
    assert b.retrieve(text, SearchPlan.from_params(params(8, "none"))).pool == ()
    # the model's scores do not change the ranking: same ids with and without it
    assert list(await b.search(text, "documents", params(8))) == result.ids
    assert HybridBackend(small, rerank="off").retrieve(text, plan).ids == result.ids


@pytest.mark.parametrize(
    ("pairs", "batch_size", "expected_ms"),
    [(0, 32, 0.0), (1, 32, 5.0), (40, 128, 122.0), (250, 256, 752.0), (1000, 128, 3016.0)],
)
def test_modeled_runtime_waits_the_measured_cost(pairs: int, batch_size: int, expected_ms: float) -> None:
    assert HybridBackend.modeled_rerank_ms(pairs, batch_size) == pytest.approx(expected_ms)


async def test_modeled_runtime_waits_and_ranks_the_same(small: Corpus) -> None:
    modeled = HybridBackend(small, rerank="modeled")
    text, _ = small.query(1)
    p = preset("last_good")
    started = time.monotonic()
    ids = await modeled.search(text, "documents", p)
    waited_ms = (time.monotonic() - started) * 1000
    pool = modeled.retrieve(text, SearchPlan.from_params(p)).pairs
    assert waited_ms >= HybridBackend.modeled_rerank_ms(pool, SearchPlan.from_params(p).batch_size)
    assert list(ids) == HybridBackend(small, rerank="off").retrieve(text, SearchPlan.from_params(p)).ids


def test_unknown_rerank_runtime_is_refused(small: Corpus) -> None:
    with pytest.raises(ConfigError, match="rerank = 'gpu'"):
        HybridBackend(small, rerank="gpu")


async def test_event_loop_stays_responsive(small: Corpus) -> None:
    b = HybridBackend(small, rerank="off")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    params = preset("candidate_slow")
    for i in range(10):
        await b.search(small.query(i)[0], "documents", params)
    task.cancel()
    assert ticks > 10  # the loop ran other tasks while searches were in worker threads
