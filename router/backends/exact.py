"""Exact (brute-force) top-k over the bundled corpus: the truth sampled recall is measured against.

Vector databases monitor ANN recall by running a small share of queries a second time as an exhaustive
scan and comparing. For the bundled hybrid engine the exhaustive counterpart scores **every** document with
full-precision vectors and exact BM25 and fuses them the way the labels are defined
(:meth:`router.backends.corpus.Corpus.relevance` at the corpus's ``ref_alpha``, 0.7): so an unlabeled
request sampled for exact search gets the recall a labeled copy of it would get, and a candidate cannot pick
its own truth (the reference never depends on the preset being judged — both arms are measured against the
same top-10). :func:`exact_dense_top_k` is the plain vector brute force, for dense-only engines.

This module reads only the corpus (never the ANN index, the reranker or the preset), so it keeps working
whatever the engine's approximate stages become.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

from router.backends.corpus import Corpus

__all__ = ["EXACT_K", "exact_dense_top_k", "exact_top_k", "run_exact"]

EXACT_K: Final = 10
T = TypeVar("T")


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-exact")


async def run_exact(fn: Callable[..., T], *args: object) -> T:
    """Run an exact search in its own single worker thread: sampled exact searches queue there and never
    take a thread of the default executor the served searches run in (the hot path)."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), functools.partial(fn, *args))


def _best(scores: npt.NDArray[np.float32], k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first, ties by ascending index (deterministic)."""
    n = len(scores)
    if k <= 0 or n == 0:
        return []
    top = np.arange(n) if k >= n else np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((top, -scores[top]))
    return [int(i) for i in top[order]]


def exact_top_k(corpus: Corpus, query: str, k: int = EXACT_K, alpha: float | None = None) -> list[str]:
    """The ``k`` documents of highest exact hybrid relevance (``alpha`` defaults to the corpus's
    ``ref_alpha``: the label definition) — documents matching no query term and no direction score 0 and
    can still fill the list, exactly as the labels are built. A query with no token gives ``[]``."""
    ids, _, unknown = corpus.terms(query)
    if not ids and not unknown:
        return []
    rel = corpus.relevance(query, corpus.spec.ref_alpha if alpha is None else alpha)
    return [corpus.doc_ids[i] for i in _best(rel, k)]


def exact_dense_top_k(corpus: Corpus, query: str, k: int = EXACT_K) -> list[str]:
    """The ``k`` nearest documents by full-precision cosine over every vector (no index)."""
    ids, _, unknown = corpus.terms(query)
    if not ids and not unknown:
        return []
    cos = (corpus.doc_vectors @ corpus.embed(query)).astype(np.float32)
    return [corpus.doc_ids[i] for i in _best(cos, k)]
