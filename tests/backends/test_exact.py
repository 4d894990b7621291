"""Exact (brute-force) search, the truth of sampled recall: literal inputs, a small generated corpus."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from canary.config import PresetStore
from router.backends.base import exact_searcher
from router.backends.corpus import Corpus, build_corpus
from router.backends.exact import exact_dense_top_k, exact_top_k
from router.backends.fault import Fault, FaultInjectingBackend
from router.backends.hybrid import HybridBackend
from router.backends.memory import KeywordBackend, numbered_corpus, relevant_for
from router.requests import recall_at_10
from router.service import sampled_for_exact
from tests.backends.test_hybrid import PRESETS, SMALL


@pytest.fixture(scope="module")
def small() -> Corpus:
    return build_corpus(**SMALL)


def test_exact_top_10_is_the_label_definition(small: Corpus) -> None:
    """Sampled recall of an unlabeled request equals the recall its labels would give."""
    for i in range(small.n_queries):
        text, labels = small.query(i)
        assert tuple(exact_top_k(small, text)) == labels


def test_exact_dense_top_k_is_the_full_precision_nearest_neighbours(small: Corpus) -> None:
    text, _ = small.query(3)
    cos = small.doc_vectors @ small.embed(text)
    expected = [small.doc_ids[i] for i in np.argsort(-cos, kind="stable")[:10]]
    assert exact_dense_top_k(small, text) == expected
    assert exact_dense_top_k(small, text, k=3) == expected[:3]


def test_a_query_without_tokens_has_no_truth(small: Corpus) -> None:
    assert exact_top_k(small, "  ,;  ") == [] and exact_dense_top_k(small, "") == []


def test_the_bundled_engine_offers_exact_search_and_scores_the_low_recall_preset_low() -> None:
    """On the default collection (Cranfield), against the exact hybrid truth sampled recall uses."""
    backend = HybridBackend(rerank="off")
    corpus = backend.corpus
    exact = exact_searcher(backend)
    assert exact is not None
    store = PresetStore(PRESETS)
    recalls: dict[str, float] = {}
    for name in ("last_good", "candidate_low_recall"):
        params = store.get(name).to_dict()
        values = []
        for i in range(0, corpus.n_queries, 9):
            text, _ = corpus.query(i)
            served = list(asyncio.run(backend.search(text, "docs", params)))
            truth = tuple(asyncio.run(exact.exact_search(text, "docs", 10)))
            values.append(recall_at_10(served, truth) or 0.0)
        recalls[name] = float(np.mean(values))
    assert recalls["candidate_low_recall"] < 0.30 <= recalls["last_good"], recalls


class NoExact:
    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        return []


def test_a_fault_wrapper_forwards_the_truth_unfaulted_and_only_when_it_exists() -> None:
    inner = KeywordBackend(numbered_corpus(queries=5))
    wrapped = FaultInjectingBackend(inner, {"cand": Fault(keep_fraction=0.2)})
    exact = exact_searcher(wrapped)
    assert exact is not None
    assert list(asyncio.run(exact.exact_search("q3", "docs", 10))) == relevant_for(3)
    served = asyncio.run(wrapped.search("q3", "docs", {"metadata": {"name": "cand"}, "retriever": {"top_k": 10}}))
    assert recall_at_10(list(served), tuple(relevant_for(3))) == pytest.approx(0.2)
    assert exact_searcher(NoExact()) is None
    assert exact_searcher(FaultInjectingBackend(NoExact(), {})) is None


def test_the_sample_is_a_stable_fraction_of_request_ids() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    picked = [i for i in ids if sampled_for_exact(i, 0.05)]
    assert 0.045 < len(picked) / len(ids) < 0.055
    assert picked == [i for i in ids if sampled_for_exact(i, 0.05)]  # the same requests every time
    assert set(picked) <= {i for i in ids if sampled_for_exact(i, 0.2)}  # a larger rate keeps them
    assert not any(sampled_for_exact(i, 0.0) for i in ids) and all(sampled_for_exact(i, 1.0) for i in ids)


def test_the_sample_rate_is_set_once_or_per_arm_at_the_settings_boundary() -> None:
    from canary.errors import ConfigError
    from canary.settings import load_settings

    assert load_settings({}).recall_sample_rates == {"last_good": 0.10, "candidate": 0.10}
    both = load_settings({"CANARY_RECALL_SAMPLE_RATE": "0.02"})
    assert both.recall_sample_rates == {"last_good": 0.02, "candidate": 0.02}
    per_arm = load_settings({"CANARY_RECALL_SAMPLE_RATE": "0.02", "CANARY_RECALL_SAMPLE_RATE_CANDIDATE": "0.25"})
    assert per_arm.recall_sample_rates == {"last_good": 0.02, "candidate": 0.25}
    for bad in ("1.5", "-0.1", "lots"):
        with pytest.raises(ConfigError, match=f"CANARY_RECALL_SAMPLE_RATE_LAST_GOOD = '?{bad}'?: must be"):
            load_settings({"CANARY_RECALL_SAMPLE_RATE_LAST_GOOD": bad})


def test_the_router_samples_each_arm_at_its_own_rate() -> None:
    from canary.kafka.topics import Topics
    from devtools.harness import make_backend, preset_ref
    from router.requests import SearchRequest
    from router.service import RouterService

    backend = make_backend()
    router = RouterService(
        "127.0.0.1:1", Topics("x."), backend, preset_ref("last_good"), recall_sample_rate={"candidate": 1.0}
    )
    assert router.searcher.recall_sample_rates == {"last_good": 0.10, "candidate": 1.0}
    request = SearchRequest("r-not-in-a-10-percent-sample", "q1", "documents")
    assert not sampled_for_exact(request.request_id, 0.10)
    assert router.searcher.exact_for(backend, request, "candidate") is not None
    assert router.searcher.exact_for(backend, request, "last_good") is None
    with pytest.raises(ValueError, match=r"recall_sample_rate\[last_good\] = 2.0"):
        RouterService("127.0.0.1:1", Topics("x."), backend, preset_ref("last_good"), recall_sample_rate=2.0)
