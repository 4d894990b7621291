"""The on-disk index cache: round trip, and every kind of bad entry falls back to a fresh build."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.backends.corpus import Corpus, build_corpus
from router.backends.hybrid import Bm25Index, HnswIndex, HybridBackend, SearchPlan
from router.backends.index_cache import IndexCache, cache_key, default_cache_dir

SMALL: dict[str, Any] = {"n_docs": 3000, "n_queries": 60, "n_topics": 16}


@pytest.fixture(scope="module")
def small() -> Corpus:
    return build_corpus(**SMALL)


def entry(root: Path, kind: str) -> Path:
    (path,) = [p for p in root.iterdir() if p.name.startswith(f"{kind}-")]
    return path


def same_search(a: HnswIndex, b: HnswIndex, corpus: Corpus) -> bool:
    queries = [corpus.embed(t) for t in corpus.query_texts[:20]]
    return all(a.search(q, 32, 20)[0].tolist() == b.search(q, 32, 20)[0].tolist() for q in queries)


def test_hnsw_round_trip(small: Corpus, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    built = HnswIndex(small.doc_vectors, cache=cache)
    assert not built.loaded_from_cache
    path = entry(tmp_path, "hnsw")
    assert sorted(p.name for p in path.iterdir()) == ["hnsw.faiss", "manifest.json"]
    loaded = HnswIndex(small.doc_vectors, cache=cache)
    assert loaded.loaded_from_cache
    assert same_search(loaded, built, small)
    assert same_search(loaded, HnswIndex(small.doc_vectors), small)  # and an uncached build
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directories left


def test_bm25_round_trip(small: Corpus, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    built = Bm25Index.from_corpus(small, cache=cache)
    loaded = Bm25Index.from_corpus(small, cache=cache)
    assert (built.loaded_from_cache, loaded.loaded_from_cache) == (False, True)
    for text in small.query_texts[:10]:
        ids, qtf, _ = small.terms(text)
        assert np.array_equal(loaded.scores(ids, qtf), built.scores(ids, qtf))


def test_params_and_data_are_in_the_key(small: Corpus, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    HnswIndex(small.doc_vectors, cache=cache)
    assert not HnswIndex(small.doc_vectors, m=16, cache=cache).loaded_from_cache  # another M: another entry
    assert len(list(tmp_path.iterdir())) == 2
    a = np.zeros((2, 2), dtype=np.float32)
    b = a.copy()
    b[1, 1] = 1e-7
    assert cache_key("hnsw", {"m": 1}, [a]) != cache_key("hnsw", {"m": 1}, [b]) != cache_key("hnsw", {"m": 2}, [b])


@pytest.mark.parametrize(
    "damage",
    ["flip a byte", "truncate", "drop the manifest", "garbage manifest", "extra file", "empty file"],
)
def test_corrupt_hnsw_entry_falls_back_to_a_build(
    small: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache = IndexCache(tmp_path)
    reference = HnswIndex(small.doc_vectors, cache=cache)
    path = entry(tmp_path, "hnsw")
    blob = path / "hnsw.faiss"
    data = bytearray(blob.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "truncate":
        blob.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "drop the manifest":
        (path / "manifest.json").unlink()
    elif damage == "garbage manifest":
        (path / "manifest.json").write_text("{not json")
    elif damage == "extra file":
        (path / "stray.bin").write_bytes(b"x")
    else:
        blob.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="router.backends.index_cache"):
        rebuilt = HnswIndex(small.doc_vectors, cache=cache)
    assert not rebuilt.loaded_from_cache
    assert "discarding" in caplog.text
    assert same_search(rebuilt, reference, small)
    assert HnswIndex(small.doc_vectors, cache=cache).loaded_from_cache  # the entry was rewritten, good again


def test_a_verified_entry_for_other_vectors_is_rejected(small: Corpus, tmp_path: Path) -> None:
    """Files intact (sha256 fine) but the graph is over other data: the load-time checks refuse it."""
    other = build_corpus(**{**SMALL, "seed": 7})
    cache = IndexCache(tmp_path)
    HnswIndex(other.doc_vectors, cache=cache)
    foreign = entry(tmp_path, "hnsw")
    ours = HnswIndex(small.doc_vectors, cache=IndexCache(tmp_path / "scratch"))  # learn our key's directory
    our_name = entry(tmp_path / "scratch", "hnsw").name
    shutil.copytree(foreign, tmp_path / our_name)  # plant the foreign entry under our key
    index = HnswIndex(small.doc_vectors, cache=cache)
    assert not index.loaded_from_cache
    assert same_search(index, ours, small)


def test_corrupt_bm25_entry_falls_back_to_a_build(small: Corpus, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    reference = Bm25Index.from_corpus(small, cache=cache)
    path = entry(tmp_path, "bm25")
    data = path / "data.csc.index.npy"
    scores = np.load(data)
    np.save(data, scores * 2)  # well-formed, wrong values
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["data.csc.index.npy"] = hashlib.sha256(data.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))  # even with a matching checksum
    rebuilt = Bm25Index.from_corpus(small, cache=cache)
    assert not rebuilt.loaded_from_cache  # the probe against the corpus's BM25 caught it
    ids, qtf, _ = small.terms(small.query_texts[0])
    assert np.array_equal(rebuilt.scores(ids, qtf), reference.scores(ids, qtf))
    (entry(tmp_path, "bm25") / "indptr.csc.index.npy").write_bytes(b"\x93NUMPY garbage")
    assert not Bm25Index.from_corpus(small, cache=cache).loaded_from_cache


def test_unwritable_cache_still_builds(small: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "a-file"
    root.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="router.backends.index_cache"):
        index = HnswIndex(small.doc_vectors[:500], cache=IndexCache(root))
    assert index.ntotal == 500 and "could not store" in caplog.text


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CANARY_HOME", str(tmp_path))
    monkeypatch.delenv("CANARY_INDEX_CACHE", raising=False)
    assert default_cache_dir() == tmp_path / "index-cache"
    monkeypatch.delenv("CANARY_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "canary" / "index-cache"
    for off in ("off", "0", "false", "NO"):
        monkeypatch.setenv("CANARY_INDEX_CACHE", off)
        assert default_cache_dir() is None


def test_backend_with_and_without_cache_gives_the_same_ids(small: Corpus, tmp_path: Path) -> None:
    plan = SearchPlan(ef=16, exact_below=0, reranker_type="cross_encoder")
    uncached = HybridBackend(small, index_cache=False)
    first = HybridBackend(small, index_cache=tmp_path)
    assert not first.index.loaded_from_cache
    for text in small.query_texts[:20]:
        assert first.retrieve(text, plan).ids == uncached.retrieve(text, plan).ids


def test_a_concurrent_store_that_lost_the_race_is_discarded(small: Corpus, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    index = HnswIndex(small.doc_vectors[:300], cache=cache)
    path = entry(tmp_path, "hnsw")
    before = (path / "hnsw.faiss").read_bytes()
    # another process built the same entry and renames it into place after ours: no error, ours stays
    cache._store(path, index.index, lambda i, d: (d / "hnsw.faiss").write_bytes(b"other"))
    assert (path / "hnsw.faiss").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
