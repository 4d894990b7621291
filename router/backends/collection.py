"""What every collection the bundled engine searches shares: an inverted index with exact Okapi BM25, the
list-wise normalisation fusion uses, and the exact hybrid relevance (the truth of sampled recall).

Two collections derive from :class:`TextCollection`: the Cranfield test collection with real text and
human judgments (:mod:`router.backends.cranfield`, the default) and the generated pseudo-word corpus
(:mod:`router.backends.corpus`, for scale tests). They differ only in where documents, queries and labels come
from and in their text encoder (:meth:`TextCollection.embed`): the real model for Cranfield, a bag of
embeddings for the generated corpus.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["NORM_DEPTH", "TOKEN", "Postings", "TextCollection", "depth_stats", "normalize_list"]

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

TOKEN: Final = re.compile(r"[a-z0-9]+")
NORM_DEPTH: Final = 100  # list depth of the min-max normalisation (see normalize_list)


class Postings:
    """An inverted index over (doc, word, tf) triples: postings sorted by word then doc, Okapi BM25 term
    weights precomputed (k1, b; Lucene's IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))``)."""

    def __init__(self, pair_doc: I64, pair_word: I64, tf: I64, doc_len: F32, n_words: int, k1: float, b: float) -> None:
        n = len(doc_len)
        df = np.bincount(pair_word, minlength=n_words)
        self.idf: F32 = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        order = np.lexsort((pair_doc, pair_word))
        self.docs: I32 = pair_doc[order].astype(np.int32)
        self.tf: I32 = tf[order].astype(np.int32)  # term frequency of each posting
        tf_sorted = tf[order].astype(np.float32)
        dl = doc_len[self.docs] / float(max(doc_len.mean(), 1e-9))
        self.weight: F32 = (
            self.idf[pair_word[order]] * tf_sorted * (k1 + 1) / (tf_sorted + k1 * (1 - b + b * dl))
        ).astype(np.float32)
        self.start: I64 = np.concatenate(([0], np.cumsum(df))).astype(np.int64)


class TextCollection:
    """Documents behind an inverted index (exact BM25) and unit vectors, and labeled queries.

    A subclass sets, in its constructor: ``spec`` (with ``bm25_k1``, ``bm25_b``, ``ref_alpha``), ``vocab``
    and ``word_index``, ``doc_len``, the postings (:meth:`_set_postings`), ``doc_vectors``, ``doc_ids``,
    ``query_texts`` and ``labels`` (document indices per query, most relevant first), and implements
    :meth:`embed`. Arrays are read-only once built; one instance is shared by every backend of a process."""

    spec: Any
    vocab: list[str]
    word_index: dict[str, int]
    stop_words: frozenset[str] = frozenset()
    doc_len: F32
    idf: F32
    post_docs: I32
    post_tf: I32
    post_weight: F32
    post_start: I64
    doc_vectors: F32
    doc_ids: list[str]
    query_texts: list[str]
    passage_vectors: F32 | None = None  # unit embeddings of passages (real text only), see passages_of
    passage_texts: list[str] | None = None
    labels: Any  # per query: document indices, most relevant first (a sequence of ints per row)

    def _set_postings(self, postings: Postings) -> None:
        self.idf, self.post_docs, self.post_tf = postings.idf, postings.docs, postings.tf
        self.post_weight, self.post_start = postings.weight, postings.start

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def n_queries(self) -> int:
        return len(self.query_texts)

    def doc_term_ids(self) -> list[list[int]]:
        """Every document as a bag of term ids (each term repeated ``tf`` times, in term-id order): the token
        lists a BM25 engine indexes. Document ``d``'s list has ``doc_len[d]`` entries."""
        words = np.repeat(np.arange(len(self.vocab), dtype=np.int64), np.diff(self.post_start))
        order = np.lexsort((words, self.post_docs))  # by doc, then term
        docs, terms, tf = self.post_docs[order], words[order], self.post_tf[order]
        tokens = np.repeat(terms, tf)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(np.repeat(docs, tf), minlength=self.n_docs))))
        flat = tokens.tolist()
        return [flat[lo:hi] for lo, hi in itertools.pairwise(bounds.tolist())]

    # -- labeled queries ------------------------------------------------------------------------------------
    def query(self, i: int) -> tuple[str, tuple[str, ...]]:
        """Query ``i``'s text and its relevant document ids, most relevant first."""
        return self.query_texts[i], tuple(self.doc_ids[int(d)] for d in self.labels[i])

    # -- text processing (shared by labels and the backend) --------------------------------------------------
    def terms(self, text: str) -> tuple[list[int], list[float], list[str]]:
        """Tokenise: (known term ids, their query-term frequencies, unknown tokens); stop words dropped."""
        counts: dict[int, float] = {}
        unknown: list[str] = []
        for token in TOKEN.findall(text.lower()):
            if token in self.stop_words:
                continue
            idx = self.word_index.get(token)
            if idx is None:
                unknown.append(token)
            else:
                counts[idx] = counts.get(idx, 0.0) + 1.0
        return list(counts), list(counts.values()), unknown

    def embed(self, text: str) -> F32:
        """The unit query vector the dense side searches with."""
        raise NotImplementedError

    def passages_of(self, docs: Sequence[int]) -> tuple[I64, I64]:
        """(passage indices, the position in ``docs`` each belongs to); only collections with passages."""
        raise NotImplementedError

    def bm25(self, text: str) -> F32:
        """Exact BM25 of ``text`` against every document (term-at-a-time over the inverted index)."""
        ids, qtf, _ = self.terms(text)
        return self.bm25_terms(ids, qtf)

    def bm25_terms(self, ids: list[int], qtf: list[float]) -> F32:
        if not ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        spans = [(int(self.post_start[t]), int(self.post_start[t + 1])) for t in ids]
        docs = np.concatenate([self.post_docs[lo:hi] for lo, hi in spans])
        weights = np.concatenate([self.post_weight[lo:hi] * f for (lo, hi), f in zip(spans, qtf, strict=True)])
        return np.bincount(docs, weights, minlength=self.n_docs).astype(np.float32)

    def relevance(self, text: str, alpha: float) -> F32:
        """Exact hybrid relevance of every document: ``alpha`` · normalised cosine + (1 − ``alpha``) ·
        normalised BM25, over every document with full-precision vectors (the truth of sampled recall)."""
        cos = (self.doc_vectors @ self.embed(text)).astype(np.float32)
        bm = self.bm25(text)
        return (
            alpha * normalize_list(cos, depth_stats(cos)) + (1.0 - alpha) * normalize_list(bm, depth_stats(bm))
        ).astype(np.float32)


def depth_stats(scores: F32, depth: int = NORM_DEPTH) -> tuple[float, float]:
    """(best, ``depth``-th best) of a set of scores (its smallest if there are fewer)."""
    if len(scores) == 0:
        return 0.0, 0.0
    d = min(depth, len(scores))
    part = np.partition(scores, len(scores) - d)[len(scores) - d :]
    return float(part.max()), float(part.min())


def normalize_list(scores: F32, stats: tuple[float, float]) -> F32:
    """List-wise min-max normalisation: (s - lo) / (hi - lo), clipped below at 0 (not above).

    ``stats`` = (hi, lo): the best score of a ranked list and the score at depth :data:`NORM_DEPTH` (or the
    list's last one if it is shorter). Labels, fusion and reranking all normalise this way.
    """
    hi, lo = stats
    if hi <= lo:
        return (scores >= hi).astype(np.float32) if hi > 0 else np.zeros_like(scores, dtype=np.float32)
    return np.asarray(np.maximum((scores - lo) / (hi - lo), 0.0), dtype=np.float32)
