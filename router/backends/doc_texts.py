"""Document texts of the generated corpus, as the rerank stage's model reads them.

The corpus (:mod:`router.backends.corpus`) keeps documents as an inverted index, not as running text. A
document's *text* here is its distinct words, most salient first – by the BM25 term weight of the word in
that document (IDF × saturated term frequency), ties by word id – joined by spaces, at most
:data:`MAX_WORDS` words. The rerank stage cuts it further to its ``max_tokens`` WordPiece tokens, so
truncation keeps a document's most informative words. Deterministic: same corpus, same texts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from router.backends.collection import TextCollection

__all__ = ["MAX_WORDS", "document_text", "document_texts"]

MAX_WORDS: Final = 64  # pseudo-words are 2-4 WordPiece tokens each: far more than any max_tokens reads


@dataclass(frozen=True, slots=True)
class _Forward:
    words: npt.NDArray[np.int64]  # word ids, grouped by document, most salient first
    start: npt.NDArray[np.int64]  # document d's words are words[start[d]:start[d + 1]]


@functools.lru_cache(maxsize=4)
def _forward_index(corpus: TextCollection) -> _Forward:
    word_of_posting = np.repeat(np.arange(len(corpus.post_start) - 1, dtype=np.int64), np.diff(corpus.post_start))
    docs = corpus.post_docs.astype(np.int64)
    order = np.lexsort((word_of_posting, -corpus.post_weight, docs))
    start = np.concatenate(([0], np.cumsum(np.bincount(docs, minlength=corpus.n_docs)))).astype(np.int64)
    return _Forward(word_of_posting[order], start)


def document_text(corpus: TextCollection, doc: int, max_words: int = MAX_WORDS) -> str:
    """The text of document index ``doc`` (see the module docstring), at most ``max_words`` words.

    Every word is at least one WordPiece token, so a reader cutting at ``n`` tokens loses nothing when
    given ``max_words=n``."""
    fwd = _forward_index(corpus)
    lo, hi = int(fwd.start[doc]), int(fwd.start[doc + 1])
    return " ".join(corpus.vocab[w] for w in fwd.words[lo : min(hi, lo + max_words)].tolist())


def document_texts(corpus: TextCollection, docs: npt.NDArray[np.int64], max_words: int = MAX_WORDS) -> list[str]:
    """:func:`document_text` of each document index in ``docs``, in order."""
    return [document_text(corpus, d, max_words) for d in docs.tolist()]
