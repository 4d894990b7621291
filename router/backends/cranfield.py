"""The Cranfield collection: the bundled engine's default data — real text, real queries, human judgments.

The classic Cranfield 1400 test collection (Cleverdon, 1960s; aeronautics abstracts), shipped in
``router/backends/data/cranfield/`` and checked against its sha256 on load:

* **Documents** – 1,400 records (``.I`` number, ``.T`` title, ``.W`` text, which repeats the title); ids
  ``cran-0001`` … ``cran-1400``. Records 471 and 995 are empty in every copy: they stay in the collection
  (as real indexes keep empty records) with no terms and a zero vector, so they are never retrieved.
* **Queries** – the 225 queries of ``cran.qry``. Their ``.I`` numbers skip (001, 002, 004 …); the judgments
  number them 1 … 225 in file order, so the n-th query of the file is judgment query n.
* **Judgments** – ``cranqrel``: codes 1 (a complete answer) … 4 (minimum interest) count as relevant, most
  relevant first; ``-1`` (one line per query, mostly records 485–488) is "no relevance" and is dropped.
  :meth:`Cranfield.grades` gives the graded gains (5 − code) that the preset table's nDCG uses; the wire's
  ``relevant_ids`` carry the set, best first, for recall@10 (docs/contracts.md).

How it is indexed
-----------------
* **BM25** over lower-cased alphanumeric tokens minus bm25s's English stop words (no stemming), k1 1.2,
  b 0.75 (Lucene's IDF), the same postings code as every collection (:class:`~router.backends.collection.
  Postings`).
* **Passages and vectors** – each document is cut into passages: its title, then its text (title removed) in
  windows of :data:`PASSAGE_WORDS` words. The real model (all-MiniLM-L6-v2, :mod:`router.backends.reranker`)
  embeds every passage once, at index build (cut to :data:`PASSAGE_MAX_TOKENS` WordPiece tokens); a
  document's vector is the normalised mean of its passages'. The embeddings are cached like the other indexes
  (:mod:`router.backends.index_cache`: keyed by the passages' text and the model file's sha256, every file
  hashed, a spot check of two passages re-encoded on load). Computing them costs ~3–4 CPU-minutes on a
  2-core machine, so the repository ships the result of that computation (``passages.npy``, float16, and
  ``passages.json`` with its key and sha256); it is used only when its key is the one computed here, and it
  goes through the same checks; ``python -m router.backends.cranfield --rebuild`` recomputes it.
* **Queries** are embedded by the model **once per request** (:meth:`Cranfield.embed`), never cached.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from canary.errors import ConfigError
from router.backends.collection import TOKEN, Postings, TextCollection
from router.backends.index_cache import IndexCache, cache_key, default_cache_dir

__all__ = [
    "COLLECTION",
    "DATA_DIR",
    "PASSAGE_MAX_TOKENS",
    "PASSAGE_WORDS",
    "Cranfield",
    "CranfieldSpec",
    "cranfield",
    "parse_records",
]

log = logging.getLogger("canary.router")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

COLLECTION: Final = "documents"  # the spec's example collection name: what `canary load` sends
DATA_DIR: Final = Path(__file__).parent / "data" / "cranfield"
FILES_SHA256: Final = {
    "cran.all.1400": "fbb8935a93263ab6c9fadefb507fd7cd5e101e7fbeb31c12e6bff6dd501315e8",
    "cran.qry": "99578ceb88941ef89c14faf7c63c23776a376d8fba319b990f01d0c601d8b03f",
    "cranqrel": "a90f56082cd44db70bf2c21ebca39a1a34e37c82ccb5ddf1bcc64f18795234c7",
}
PASSAGE_WORDS: Final = 100  # words per text window (~125 WordPiece tokens of this collection)
PASSAGE_MAX_TOKENS: Final = 160  # the model reads a passage up to here ([CLS]/[SEP] included)
QUERY_MAX_TOKENS: Final = 64  # the longest Cranfield query is 59 tokens
ENCODE_BATCH: Final = 32
SEED_FILE: Final = "passages.npy"
SEED_MANIFEST: Final = "passages.json"
_FIELD: Final = re.compile(r"^\.([A-Z])\s*$")
_RECORD: Final = re.compile(r"^\.I\s+(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class CranfieldSpec:
    """Indexing parameters (the exact-relevance ``ref_alpha`` is the truth of sampled recall)."""

    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    ref_alpha: float = 0.5
    label_k: int = 10


def parse_records(text: str, source: str) -> list[tuple[str, dict[str, str]]]:
    """``(.I value, {field letter: text})`` for each record of a SMART-format file (``.I n`` then ``.T`` /
    ``.A`` / ``.B`` / ``.W`` sections), whitespace collapsed. :class:`ConfigError` naming ``source`` and the
    line if text comes before the first record."""
    records: list[tuple[str, dict[str, list[str]]]] = []
    field: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        head = _RECORD.match(line)
        if head is not None:
            records.append((head.group(1), {}))
            field = None
            continue
        mark = _FIELD.match(line)
        if mark is not None and records:
            field = mark.group(1)
            records[-1][1][field] = []
            continue
        if not records:
            if line.strip():
                raise ConfigError(f"{source}:{number}: text before the first .I record: {line[:60]!r}")
            continue
        if field is not None:
            records[-1][1][field].append(line)
    return [(rid, {k: " ".join(" ".join(v).split()) for k, v in fields.items()}) for rid, fields in records]


def _read(name: str) -> str:
    path = DATA_DIR / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cranfield data: cannot read {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != FILES_SHA256[name]:
        raise ConfigError(f"Cranfield data: {path} has sha256 {digest[:16]}…, expected {FILES_SHA256[name][:16]}…")
    return data.decode("ascii")


def _passages(title: str, text: str) -> list[str]:
    """The title, then the text without its leading copy of the title, in windows of PASSAGE_WORDS words."""
    body = text[len(title) :].strip() if title and text.startswith(title) else text
    words = body.split()
    windows = [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)]
    return [p for p in (title, *windows) if p]


def _unit_rows(x: npt.NDArray[np.floating]) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.asarray(x / norms, dtype=np.float32)


class Cranfield(TextCollection):
    """The parsed, indexed collection (see the module docstring). ``cache``: where the passage embeddings are
    kept (None: computed, or the shipped copy); ``progress(done, total)`` while they are computed;
    ``shipped=False`` never takes the repository's copy (``--rebuild``)."""

    def __init__(
        self,
        spec: CranfieldSpec | None = None,
        *,
        cache: IndexCache | None = None,
        progress: Callable[[int, int], None] | None = None,
        shipped: bool = True,
    ) -> None:
        self.spec = spec or CranfieldSpec()
        self.stop_words = _stop_words()
        docs = parse_records(_read("cran.all.1400"), "cran.all.1400")
        queries = parse_records(_read("cran.qry"), "cran.qry")
        self.doc_ids = [f"cran-{int(rid):04d}" for rid, _ in docs]
        number = {int(rid): i for i, (rid, _) in enumerate(docs)}
        self.titles = [f.get("T", "") for _, f in docs]
        self.texts = [f.get("W", "") for _, f in docs]
        self.query_texts = [f.get("W", "") for _, f in queries]

        # judgments: query n of cranqrel = the n-th query of cran.qry
        graded: list[dict[int, int]] = [{} for _ in queries]
        for line_no, line in enumerate(_read("cranqrel").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
                raise ConfigError(f"cranqrel:{line_no}: expected 'query doc code', got {line[:60]!r}")
            q, d, code = (int(p) for p in parts)
            if not 1 <= q <= len(queries) or d not in number:
                raise ConfigError(f"cranqrel:{line_no}: query {q} or document {d} is not in the collection")
            if 1 <= code <= 4:
                graded[q - 1][number[d]] = code
        self.codes = graded
        self.labels = [tuple(sorted(g, key=lambda d: (g[d], d))) for g in graded]

        # BM25 postings over the title and text
        self.vocab, self.word_index = [], {}
        pair_doc: list[int] = []
        pair_word: list[int] = []
        tf: list[int] = []
        doc_len = np.zeros(len(docs), dtype=np.float32)
        for d, (title, text) in enumerate(zip(self.titles, self.texts, strict=True)):
            counts: dict[int, int] = {}
            for token in TOKEN.findall(f"{title} {text}".lower()):
                if token in self.stop_words:
                    continue
                w = self.word_index.setdefault(token, len(self.vocab))
                if w == len(self.vocab):
                    self.vocab.append(token)
                counts[w] = counts.get(w, 0) + 1
            doc_len[d] = sum(counts.values())
            for w, c in sorted(counts.items()):
                pair_doc.append(d)
                pair_word.append(w)
                tf.append(c)
        self.doc_len = doc_len
        self._set_postings(
            Postings(
                np.asarray(pair_doc, dtype=np.int64),
                np.asarray(pair_word, dtype=np.int64),
                np.asarray(tf, dtype=np.int64),
                doc_len,
                len(self.vocab),
                self.spec.bm25_k1,
                self.spec.bm25_b,
            )
        )

        # passages and their embeddings
        self.passage_texts: list[str] = []
        starts = [0]
        for title, text in zip(self.titles, self.texts, strict=True):
            self.passage_texts.extend(_passages(title, text))
            starts.append(len(self.passage_texts))
        self.passage_start: I64 = np.asarray(starts, dtype=np.int64)
        self.passage_doc: I64 = np.repeat(np.arange(len(docs), dtype=np.int64), np.diff(self.passage_start))
        self.passage_vectors: F32 = _passage_embeddings(self.passage_texts, cache, progress, shipped)
        sums = np.zeros((len(docs), self.passage_vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, self.passage_doc, self.passage_vectors)
        self.doc_vectors = _unit_rows(sums)
        for arr in (self.idf, self.post_docs, self.post_tf, self.post_weight, self.post_start, self.doc_vectors):
            arr.flags.writeable = False
        self.passage_vectors.flags.writeable = False

    def embed(self, text: str) -> F32:
        """The model's unit embedding of ``text`` (one forward pass: ~10 ms of CPU for a Cranfield query)."""
        from router.backends.reranker import load_model

        vector = load_model().encode([text], batch_size=1, max_tokens=QUERY_MAX_TOKENS)[0]
        return np.asarray(vector, dtype=np.float32)

    def grades(self, i: int) -> dict[str, int]:
        """Query ``i``'s graded judgments as gains: code 1 (complete answer) → 4 … code 4 (minimum) → 1."""
        return {self.doc_ids[d]: 5 - code for d, code in self.codes[i].items()}

    def passages_of(self, docs: Sequence[int]) -> tuple[I64, I64]:
        """(passage indices, the position in ``docs`` each belongs to) for the documents ``docs``."""
        idx = np.asarray(docs, dtype=np.int64)
        lo, hi = self.passage_start[idx], self.passage_start[idx + 1]
        counts = hi - lo
        owner = np.repeat(np.arange(len(idx), dtype=np.int64), counts)
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(lo, counts) + offsets, owner


@functools.cache
def _stop_words() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


@functools.cache
def _model_sha256() -> str:
    from router.backends.reranker import model_dir

    h = hashlib.sha256()
    with (model_dir() / "model.safetensors").open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _encode(texts: Sequence[str], progress: Callable[[int, int], None] | None) -> F32:
    """Unit embeddings of ``texts`` by the model, batched by length (less padding), in input order."""
    from router.backends.reranker import load_model

    model = load_model()
    out = np.zeros((len(texts), model.hidden), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for lo in range(0, len(order), ENCODE_BATCH):
        chunk = [i for i in order[lo : lo + ENCODE_BATCH] if texts[i]]
        if chunk:
            out[chunk] = model.encode([texts[i] for i in chunk], batch_size=len(chunk), max_tokens=PASSAGE_MAX_TOKENS)
        if progress is not None:
            progress(min(lo + ENCODE_BATCH, len(order)), len(order))
    return out


def _spot_check(texts: Sequence[str], vectors: F32) -> None:
    """Re-encode two passages (the first and the longest) and compare: a file of other vectors, or one made
    by another model, fails here (float16 storage keeps ~1e-3)."""
    picks = sorted({0, max(range(len(texts)), key=lambda i: len(texts[i]))})
    fresh = _encode([texts[i] for i in picks], None)
    if not np.allclose(fresh, vectors[picks], atol=5e-3):
        worst = float(np.abs(fresh - vectors[picks]).max())
        raise ValueError(f"passage embeddings differ from the model's by up to {worst:.4f}")


def _key(texts: Sequence[str]) -> str:
    """The embeddings' cache key: the passages' text, the model file, how they are read and stored."""
    return cache_key(
        "cranfield-passages",
        {"model_sha256": _model_sha256(), "max_tokens": PASSAGE_MAX_TOKENS, "dtype": "float16"},
        [np.frombuffer("\n".join(texts).encode(), dtype=np.uint8)],
    )


def _passage_embeddings(
    texts: list[str], cache: IndexCache | None, progress: Callable[[int, int], None] | None, shipped: bool
) -> F32:
    key = _key(texts)

    def load(path: Path) -> F32:
        vectors = np.load(path / SEED_FILE, allow_pickle=False)
        if vectors.dtype != np.float16 or vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"cached passages: {vectors.dtype} {vectors.shape}, expected float16 ({len(texts)}, d)")
        out: F32 = np.asarray(vectors, dtype=np.float32)
        _spot_check(texts, out)
        return out

    def build() -> F32:
        copy = _shipped(key) if shipped else None
        if copy is not None:
            return load(copy)
        log.warning("Cranfield: embedding %d passages with the model (once; a few CPU-minutes)", len(texts))
        started = time.monotonic()
        out = _encode(texts, progress).astype(np.float16).astype(np.float32)
        log.warning("Cranfield: passages embedded in %.0f s", time.monotonic() - started)
        return out

    def save(vectors: F32, directory: Path) -> None:
        np.save(directory / SEED_FILE, vectors.astype(np.float16), allow_pickle=False)

    if cache is None:
        return build()
    return cache.get_or_build("cranfield-passages", key, load, build, save)


def _shipped(key: str) -> Path | None:
    """The repository's copy of the computation when it was made for ``key`` and its file is intact."""
    try:
        manifest = json.loads((DATA_DIR / SEED_MANIFEST).read_text())
        data = (DATA_DIR / SEED_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        log.info("Cranfield: the shipped passage embeddings are for another key; computing them")
        return None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        log.warning("Cranfield: the shipped passage embeddings fail their sha256; computing them")
        return None
    return DATA_DIR


@functools.lru_cache(maxsize=2)
def _cranfield(cache_dir: Path | None) -> Cranfield:
    return Cranfield(cache=IndexCache(cache_dir) if cache_dir is not None else None)


def cranfield() -> Cranfield:
    """The bundled collection, built once per process (embeddings from the index cache when enabled)."""
    return _cranfield(default_cache_dir())


def _rebuild(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m router.backends.cranfield",
        description="Recompute the Cranfield passage embeddings with the model and write the shipped copy "
        f"({DATA_DIR / SEED_FILE} and {SEED_MANIFEST}).",
    )
    parser.add_argument("--rebuild", action="store_true", required=True, help="recompute and write the copy")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def show(done: int, total: int) -> None:
        print(f"\r{done}/{total} passages", end="", file=sys.stderr, flush=True)

    collection = Cranfield(cache=None, progress=show, shipped=False)
    print(file=sys.stderr)
    key = _key(collection.passage_texts)
    np.save(DATA_DIR / SEED_FILE, collection.passage_vectors.astype(np.float16), allow_pickle=False)
    digest = hashlib.sha256((DATA_DIR / SEED_FILE).read_bytes()).hexdigest()
    (DATA_DIR / SEED_MANIFEST).write_text(json.dumps({"key": key, "sha256": digest}, indent=1) + "\n")
    print(f"wrote {DATA_DIR / SEED_FILE} ({len(collection.passage_texts)} passages), key {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_rebuild())
