"""A small in-memory keyword backend: real term-overlap ranking over a dict of documents.

The bundled default for tests that need a fast, fully predictable engine (a corpus where the relevant
documents for a query are known), in the spirit of httpx's MockTransport: a real implementation of the
protocol, not a mock of the router.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class KeywordBackend:
    """``collections``: the names it serves (None: any name, one set of documents for all)."""

    def __init__(self, documents: Mapping[str, str], collections: Iterable[str] | None = None) -> None:
        self.collections = frozenset(collections) if collections is not None else None
        self._postings: dict[str, list[str]] = defaultdict(list)
        for doc_id, text in documents.items():
            for term in set(text.lower().split()):
                self._postings[term].append(doc_id)

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        return self._ranked(query)[: int(params.get("retriever", {}).get("top_k", 10))]

    async def exact_search(self, query: str, collection: str, k: int) -> Sequence[str]:
        """The same term-overlap ranking, exhaustively (it is exact already): the truth for sampled recall."""
        return self._ranked(query)[:k]

    def _ranked(self, query: str) -> list[str]:
        scores: dict[str, int] = defaultdict(int)
        for term in query.lower().split():
            for doc_id in self._postings.get(term, ()):
                scores[doc_id] += 1
        return sorted(scores, key=lambda d: (-scores[d], d))


def numbered_corpus(queries: int = 200, relevant_per_query: int = 10, noise: int = 500) -> dict[str, str]:
    """Corpus where query ``q{i}`` has exactly ``relevant_per_query`` matching documents ``q{i}-{j}``."""
    docs = {f"q{i}-{j}": f"q{i} topic{i % 7} doc{j}" for i in range(queries) for j in range(relevant_per_query)}
    docs.update({f"noise-{n}": f"topic{n % 7} filler" for n in range(noise)})
    return docs


def relevant_for(query_index: int, relevant_per_query: int = 10) -> list[str]:
    return [f"q{query_index}-{j}" for j in range(relevant_per_query)]
