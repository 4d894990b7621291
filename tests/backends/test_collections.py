"""Which collections a backend serves (issue #21): the in-process API refuses a name the serving backend
does not have — before anything is counted or published — instead of searching something else."""

from __future__ import annotations

import pytest

from canary.core.deployment import ConfigRef
from canary.errors import ConfigError
from canary.kafka.topics import Topics
from router.backends.base import known_collections, require_collection
from router.backends.corpus import build_corpus
from router.backends.fault import Fault, FaultInjectingBackend
from router.backends.http import HttpBackend
from router.backends.hybrid import HybridBackend
from router.backends.memory import KeywordBackend, numbered_corpus
from router.backends.registry import BackendRegistry, Unservable
from router.service import RouterService


def test_what_each_backend_says_it_serves() -> None:
    hybrid = HybridBackend(build_corpus(n_docs=300, n_queries=5, n_topics=4), rerank="off", index_cache=False)
    assert known_collections(hybrid) == {"documents"}  # the generated corpus, as the spec's example names it
    assert known_collections(FaultInjectingBackend(hybrid, {"x": Fault(added_latency_ms=5)})) == {"documents"}
    assert known_collections(KeywordBackend({})) is None  # says nothing: any name is passed on
    assert known_collections(FaultInjectingBackend(KeywordBackend({}), {})) is None
    assert known_collections(KeywordBackend({}, collections=["docs", "faq"])) == {"docs", "faq"}
    http = BackendRegistry(KeywordBackend({})).for_config(
        ConfigRef.from_snapshot({"metadata": {"name": "h"}, "backend": {"type": "http", "url": "http://127.0.0.1:9/s"}})
    )
    assert isinstance(http, HttpBackend) and known_collections(http) is None  # the service answers for its own
    assert known_collections(Unservable("why")) is None


def test_require_collection_names_the_value_the_config_and_the_known_ones() -> None:
    backend = KeywordBackend({}, collections=["documents", "faq"])
    require_collection(backend, "faq", "cand")
    require_collection(KeywordBackend({}), "anything", "cand")
    with pytest.raises(ConfigError) as refused:
        require_collection(backend, "nope", "candidate_high_recall")
    assert str(refused.value) == (
        "collection_name 'nope': not a collection of the search backend serving candidate_high_recall "
        "(KeywordBackend serves: documents, faq)"
    )


async def test_execute_search_refuses_before_counting_or_publishing() -> None:
    last_good = ConfigRef.from_snapshot({"metadata": {"name": "last_good", "version": "1.0.0"}})
    backend = KeywordBackend(numbered_corpus(queries=2), collections=["documents"])
    # Never started: a refused request must not need the producer (nothing is published).
    router = RouterService("unused:9092", Topics("t."), backend, last_good, consume_requests=False)
    with pytest.raises(ConfigError, match="collection_name 'products': not a collection of the search backend"):
        await router.execute_search("q1", "products", user_id="u1")
    assert router.stats.requests == 0 and sum(router.stats.by_arm.values()) == 0
