"""A deterministic synthetic retrieval corpus with exhaustive relevance labels (the bundled backend's data).

Everything is generated from one seed with numpy, so every process that asks for the same parameters gets
bit-identical documents, queries and labels (built once per process: :func:`build_corpus` is cached).

How it is generated
-------------------
* **Vocabulary** – ``vocab_size`` pronounceable pseudo-words, grouped into *concepts* of 1–3 synonymous
  surface forms. Concept rank ``r`` has background probability ∝ 1/(r + 2.7) (Zipf), so the first couple of
  hundred concepts behave like stop words.
* **Topics** – ``n_topics`` topics with a random unit *centre* each; a topic owns ``topic_words``
  non-stop-word concepts (topics overlap) with its own Zipf prior. A concept's vector is
  ``unit(centre(s) of its topics + a concept-specific direction)``; a surface form's vector adds a little
  noise (``_FORM_NOISE``).
* **Documents** – a primary and a secondary topic and a latent meaning ``z_d = unit(centre + doc_spread *
  random direction)``; ``20 + Poisson(mean_doc_len - 20)`` tokens, drawn from the primary topic (55 %,
  P(concept) ∝ Zipf prior · exp(kappa · <concept, z_d>), so a document's words cluster around its meaning),
  the secondary topic (15 %, Zipf) or the background (30 %, Zipf). Each token uses a random synonym.
* **Text encoder** (:meth:`Corpus.embed`) – bag of embeddings: the IDF-weighted sum of the text's word
  vectors, L2-normalised. Unknown words get a stable hash-seeded vector, so any query text can be embedded.
* **Document embeddings** – ``unit(unit(encoder(document tokens)) + doc_latent * z_d)``: the encoder plus a
  little of the meaning the sampled words do not carry.
* **Queries** – ``n_queries`` queries, each from a random seed document: 2–5 of its concepts sampled by
  tf·idf, each written as a random synonym (vocabulary mismatch BM25 cannot bridge but the dense side can).

Dense and keyword similarity are therefore correlated but different, which is what makes hybrid fusion
(and its ``alpha``) matter.

What "relevant" means
---------------------
Labels are *exhaustive ground truth*, as in ANN benchmarks: for each query the ``label_k`` (10) documents
with the highest exact hybrid relevance over the whole corpus::

    rel(q, d) = ref_alpha * N(cos(e_q, e_d)) + (1 - ref_alpha) * N(bm25(q, d))

with full-precision embeddings, exact Okapi BM25 (k1 = 1.2, b = 0.75, Lucene IDF), ``ref_alpha`` = 0.7 and
``N`` the list-wise min-max normalisation of :func:`normalize_list` (best score of the query → 1, the
:data:`NORM_DEPTH` = 100th best → 0, clipped at 0) – the same fusion the backend applies, done exactly
over every document. A configuration scores recall@10 = 1.0 only if it finds exactly these documents.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from router.backends.collection import NORM_DEPTH, Postings, TextCollection, depth_stats, normalize_list

__all__ = [
    "DEFAULT_SPEC",
    "NORM_DEPTH",
    "Corpus",
    "CorpusSpec",
    "build_corpus",
    "default_corpus",
    "depth_stats",
    "normalize_list",
]

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

_CONSONANTS: Final = "bdfgklmnprstvz"
_VOWELS: Final = "aeiou"
# The name the generated corpus is served under: the spec's example collection, and what `canary load` sends.
COLLECTION: Final = "documents"
_P_PRIMARY: Final = 0.55
_P_SECONDARY: Final = 0.15
_STOP_RANKS: Final = 200  # topics never own the most frequent concepts (they have one form each)
_TOPIC_WEIGHT: Final = 1.0  # topic centre vs concept-specific direction in a concept vector
_FORM_NOISE: Final = 0.25  # how far a synonym's vector strays from its concept's


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """Generation parameters; equal specs give identical corpora (and share one cached build)."""

    n_docs: int = 20_000
    n_queries: int = 500
    vocab_size: int = 20_000
    n_topics: int = 64
    topic_words: int = 300
    dim: int = 64
    mean_doc_len: int = 60
    doc_latent: float = 0.2
    doc_spread: float = 1.0
    kappa: float = 6.0
    ref_alpha: float = 0.7
    label_k: int = 10
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    seed: int = 20_240_601

    def __post_init__(self) -> None:
        if self.n_docs < self.label_k or self.n_queries < 1 or self.n_topics < 2 or self.dim < 2:
            raise ValueError(f"CorpusSpec: degenerate sizes {self}")
        if self.vocab_size < _STOP_RANKS + self.topic_words:
            raise ValueError("CorpusSpec: vocab_size must exceed 200 + topic_words")
        if not 0.0 <= self.ref_alpha <= 1.0:
            raise ValueError("CorpusSpec: ref_alpha must be in [0, 1]")


DEFAULT_SPEC: Final = CorpusSpec()


def _zipf_cdf(n: int, s: float = 1.0, q: float = 2.7) -> npt.NDArray[np.float64]:
    weights = 1.0 / (np.arange(n, dtype=np.float64) + q) ** s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def _unit_rows(x: npt.NDArray[np.floating]) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.asarray(x / norms, dtype=np.float32)


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct pronounceable words; frequent ranks get the shorter (two-syllable) ones."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    s = len(syllables)
    two = [syllables[i // s] + syllables[i % s] for i in rng.permutation(s * s)]
    three_codes = rng.choice(s**3, size=max(0, n - len(two)), replace=False)
    three = [syllables[c // (s * s)] + syllables[(c // s) % s] + syllables[c % s] for c in three_codes.tolist()]
    return (two + three)[:n]


class Corpus(TextCollection):
    """The generated corpus: documents (inverted index + embeddings), labeled queries and the text encoder.

    Arrays are read-only after the build; a Corpus is shared by every backend in the process.
    """

    def __init__(self, spec: CorpusSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        n, v, k, dim = spec.n_docs, spec.vocab_size, spec.n_topics, spec.dim

        # -- vocabulary: concepts with 1-3 synonymous surface forms, grouped into topics ---------------------
        self.vocab: list[str] = _pseudo_words(rng, v)
        self.word_index: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        forms = np.where(np.arange(v) < _STOP_RANKS, 1, rng.choice([1, 2, 3], size=v, p=[0.4, 0.35, 0.25]))
        first_form = np.concatenate(([0], np.cumsum(forms)))
        n_concepts = int(np.searchsorted(first_form, v, side="right")) - 1  # concepts whose forms all fit
        forms, first_form = forms[:n_concepts], first_form[:n_concepts]
        concept_of_word = np.repeat(np.arange(n_concepts), forms)
        v_used = len(concept_of_word)
        topic_members = np.stack(
            [rng.choice(np.arange(_STOP_RANKS, n_concepts), size=spec.topic_words, replace=False) for _ in range(k)]
        ).astype(np.int64)
        topic_members.sort(axis=1)  # lower concept rank = more frequent in the topic, too
        centres = _unit_rows(rng.standard_normal((k, dim))).astype(np.float64)
        concept_vecs = _unit_rows(rng.standard_normal((n_concepts, dim))).astype(np.float64)
        np.add.at(concept_vecs, topic_members.ravel(), _TOPIC_WEIGHT * np.repeat(centres, spec.topic_words, axis=0))
        concept_vecs = _unit_rows(concept_vecs).astype(np.float64)
        word_vecs = np.zeros((v, dim), dtype=np.float64)
        word_vecs[:v_used] = concept_vecs[concept_of_word] + _FORM_NOISE * _unit_rows(
            rng.standard_normal((v_used, dim))
        )
        self.topic_members = topic_members

        # -- documents: a latent meaning z_d near the primary topic's centre; words are drawn around it --------
        primary = rng.integers(0, k, size=n)
        secondary = (primary + rng.integers(1, k, size=n)) % k
        doc_z = _unit_rows(centres[primary] + spec.doc_spread * _unit_rows(rng.standard_normal((n, dim))))
        lengths = 20 + rng.poisson(max(1, spec.mean_doc_len - 20), size=n)
        total = int(lengths.sum())
        doc_of_token = np.repeat(np.arange(n, dtype=np.int64), lengths)
        source = rng.random(total)
        # primary-topic tokens: P(concept | doc) ∝ zipf(rank in topic) * exp(kappa * <u_concept, z_doc>)
        s_words = spec.topic_words
        log_prior = np.log(np.diff(np.concatenate(([0.0], _zipf_cdf(s_words)))))
        cdf = np.empty((n, s_words), dtype=np.float64)
        for t in range(k):
            docs = np.flatnonzero(primary == t)
            logits = log_prior + spec.kappa * (doc_z[docs] @ concept_vecs[topic_members[t]].T)
            p = np.exp(logits - logits.max(axis=1, keepdims=True)).cumsum(axis=1)
            cdf[docs] = p / p[:, -1:]
        cdf += np.arange(n, dtype=np.float64)[:, None]  # rows stacked into one increasing array
        is_primary = source < _P_PRIMARY
        pdoc = doc_of_token[is_primary]
        rank = np.searchsorted(cdf.ravel(), pdoc + rng.random(len(pdoc)), side="right") - pdoc * s_words
        del cdf
        topic_rank = np.minimum(np.searchsorted(_zipf_cdf(s_words), rng.random(total), side="right"), s_words - 1)
        topic_rank[is_primary] = np.clip(rank, 0, s_words - 1)
        topic_of_token = np.where(is_primary, primary[doc_of_token], secondary[doc_of_token])
        in_topic = source < _P_PRIMARY + _P_SECONDARY
        background = np.minimum(np.searchsorted(_zipf_cdf(n_concepts), rng.random(total), side="right"), n_concepts - 1)
        concepts = np.where(in_topic, topic_members[topic_of_token, topic_rank], background)
        words = first_form[concepts] + (rng.random(total) * forms[concepts]).astype(np.int64)  # any synonym
        del source, topic_rank, topic_of_token, in_topic, background, concepts, is_primary, pdoc, rank

        # (doc, word) -> term frequency, sorted by doc then word
        keys, tf = np.unique(doc_of_token * v + words, return_counts=True)
        del doc_of_token, words
        pair_doc, pair_word = keys // v, keys % v
        self.doc_len = lengths.astype(np.float32)
        self._set_postings(Postings(pair_doc, pair_word, tf, self.doc_len, v, spec.bm25_k1, spec.bm25_b))
        self._max_idf = float(np.log1p((n + 0.5) / 0.5))

        # -- embeddings -----------------------------------------------------------------------------------
        self.word_vecs: F32 = word_vecs.astype(np.float32)
        doc_sum = np.zeros((n, dim), dtype=np.float64)
        pair_w = (tf * self.idf[pair_word]).astype(np.float32)
        step = 50_000
        for lo in range(0, len(keys), step):  # chunked: the (pairs x dim) product would be ~200 MB at once
            hi = min(lo + step, len(keys))
            contrib = self.word_vecs[pair_word[lo:hi]] * pair_w[lo:hi, None]
            _segment_add(doc_sum, pair_doc[lo:hi], contrib)
        self.doc_vectors: F32 = _unit_rows(_unit_rows(doc_sum) + spec.doc_latent * doc_z)
        self.doc_ids: list[str] = [f"doc-{i:05d}" for i in range(n)]

        # -- queries and exhaustive labels ----------------------------------------------------------------
        doc_start = np.concatenate(([0], np.cumsum(np.bincount(pair_doc, minlength=n)))).astype(np.int64)
        self.query_texts: list[str] = []
        seeds = rng.choice(n, size=spec.n_queries, replace=spec.n_queries > n)
        for d in seeds.tolist():
            lo, hi = int(doc_start[d]), int(doc_start[d + 1])
            terms, weight = pair_word[lo:hi], pair_w[lo:hi].astype(np.float64)
            n_terms = min(len(terms), int(rng.integers(2, 6)))
            chosen = rng.choice(terms, size=n_terms, replace=False, p=weight / weight.sum())
            c = concept_of_word[chosen]  # the user names each concept by any of its synonyms
            picked = first_form[c] + (rng.random(len(c)) * forms[c]).astype(np.int64)
            self.query_texts.append(" ".join(self.vocab[w] for w in dict.fromkeys(picked.tolist())))
        labels = np.empty((spec.n_queries, spec.label_k), dtype=np.int32)
        for i, text in enumerate(self.query_texts):
            rel = self.relevance(text, spec.ref_alpha)
            top = np.argpartition(-rel, spec.label_k)[: spec.label_k]
            labels[i] = top[np.lexsort((top, -rel[top]))]
        self.labels: I32 = labels
        arrays = (self.idf, self.post_docs, self.post_tf, self.post_weight, self.post_start, self.word_vecs)
        for arr in (*arrays, self.doc_vectors):
            arr.flags.writeable = False

    def embed(self, text: str) -> F32:
        """The bag-of-embeddings text encoder: IDF-weighted sum of word vectors, L2-normalised."""
        ids, qtf, unknown = self.terms(text)
        vec = np.zeros(self.spec.dim, dtype=np.float64)
        if ids:
            idx = np.asarray(ids, dtype=np.int64)
            vec += (self.word_vecs[idx] * (self.idf[idx] * np.asarray(qtf, dtype=np.float32))[:, None]).sum(axis=0)
        for token in unknown:  # stable per word across processes (not Python's salted hash)
            seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            g = np.random.default_rng(seed).standard_normal(self.spec.dim)
            vec += self._max_idf * 0.8 * g / np.linalg.norm(g)
        norm = float(np.linalg.norm(vec))
        return (vec / norm if norm > 0 else vec).astype(np.float32)


def _segment_add(out: npt.NDArray[np.float64], rows: I64, values: F32) -> None:
    """out[rows] += values for rows sorted ascending (faster than np.add.at)."""
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    out[rows[starts]] += np.add.reduceat(values, starts, axis=0)


@functools.lru_cache(maxsize=4)
def _build(spec: CorpusSpec) -> Corpus:
    return Corpus(spec)


def build_corpus(spec: CorpusSpec | None = None, **overrides: Any) -> Corpus:
    """The corpus for ``spec`` (default :data:`DEFAULT_SPEC`) with field overrides; cached per process."""
    return _build(dataclasses.replace(spec or DEFAULT_SPEC, **overrides))


def default_corpus() -> Corpus:
    """The bundled corpus: 20 000 documents, 500 labeled queries."""
    return _build(DEFAULT_SPEC)
