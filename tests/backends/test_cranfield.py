"""The Cranfield collection (router/backends/cranfield.py): parsing, judgments, the model's embeddings, and the
bundled engine searching it with the model ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from canary.errors import ConfigError
from router.backends import cranfield as cf
from router.backends.hybrid import HybridBackend, SearchPlan, bundled_corpus
from router.backends.index_cache import IndexCache
from router.requests import recall_at_10


@pytest.fixture(scope="module")
def cran() -> cf.Cranfield:
    return cf.cranfield()


def test_the_collection_as_its_readme_describes_it(cran: cf.Cranfield) -> None:
    assert (cran.n_docs, cran.n_queries) == (1400, 225)
    assert cran.doc_ids[0] == "cran-0001" and cran.doc_ids[-1] == "cran-1400"
    assert cran.titles[0] == "experimental investigation of the aerodynamics of a wing in a slipstream ."
    # records 471 and 995 are empty in every copy: no terms, a zero vector, never retrieved by either side
    for empty in (470, 994):
        assert cran.texts[empty] == "" and cran.doc_len[empty] == 0
        assert not cran.doc_vectors[empty].any()
    # every query has judgments: 1,837 judgment lines (the last without a newline) minus the 225 "-1" lines
    assert all(cran.labels) and sum(len(g) for g in cran.codes) == 1837 - 225


def test_the_nth_query_of_the_file_is_judgment_query_n(cran: cf.Cranfield) -> None:
    """cran.qry numbers queries 001, 002, 004 …; cranqrel numbers them 1 … 225 in file order."""
    text, relevant = cran.query(2)  # the file's third query, ".I 004"
    assert text.startswith("what problems of heat conduction in composite slabs")
    qrels = (cf.DATA_DIR / "cranqrel").read_text().split("\n")
    rows = [ln.split() for ln in qrels if ln.strip()]
    expected = {f"cran-{int(d):04d}" for q, d, c in rows if q == "3" and c != "-1"}
    assert set(relevant) == expected
    # most relevant first: code 1 (complete answer) before code 4, and grades are 5 - code
    codes = [cran.codes[2][cran.doc_ids.index(d)] for d in relevant]
    assert codes == sorted(codes)
    assert {d: 5 - c for d, c in zip(relevant, codes, strict=True)} == cran.grades(2)


def test_bm25_drops_stop_words_and_matches_the_inverted_index(cran: cf.Cranfield) -> None:
    ids, qtf, unknown = cran.terms("The Heat of the SLABS, and slabs!")
    assert [cran.vocab[i] for i in ids] == ["heat", "slabs"] and qtf == [1.0, 2.0] and unknown == []
    scores = cran.bm25("heat conduction in composite slabs")
    best = int(np.argmax(scores))
    assert "slab" in (cran.titles[best] + cran.texts[best])


def test_the_shipped_embeddings_are_the_models(cran: cf.Cranfield) -> None:
    """The repository's copy is used only for its key and checked against fresh model output."""
    manifest = json.loads((cf.DATA_DIR / cf.SEED_MANIFEST).read_text())
    assert manifest["key"] == cf._key(cran.passage_texts)
    fresh = cf._encode([cran.passage_texts[i] for i in (5, 777, 4000)], None)
    assert np.allclose(fresh, cran.passage_vectors[[5, 777, 4000]], atol=5e-3)
    norms = np.linalg.norm(cran.passage_vectors, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=5e-3)


def test_a_damaged_or_foreign_cache_entry_is_refused(cran: cf.Cranfield, tmp_path: Path) -> None:
    cache = IndexCache(tmp_path)
    key = cf._key(cran.passage_texts)
    entry = cache.entry("cranfield-passages", key)
    entry.mkdir(parents=True)
    other = cran.passage_vectors[::-1].astype(np.float16)  # right shape and dtype, wrong vectors
    np.save(entry / cf.SEED_FILE, other, allow_pickle=False)
    import hashlib

    digest = hashlib.sha256((entry / cf.SEED_FILE).read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps({"format": 1, "files": {cf.SEED_FILE: digest}}))
    vectors = cf._passage_embeddings(cran.passage_texts, cache, None, True)  # refused, then the shipped copy
    assert np.array_equal(vectors, cran.passage_vectors)
    stored = np.load(entry / cf.SEED_FILE)
    assert np.array_equal(stored.astype(np.float32), cran.passage_vectors)


def test_a_file_that_is_not_cranfield_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"x.qry:1: text before the first .I record"):
        cf.parse_records("hello\n.I 1\n.W\nq\n", "x.qry")
    assert cf.parse_records(".I 7\n.T\na b\n.W\nc\n  d\n", "f") == [("7", {"T": "a b", "W": "c d"})]


def test_the_engine_on_real_text_ranks_with_the_model(cran: cf.Cranfield) -> None:
    backend = HybridBackend(cran, rerank="off", index_cache=False)
    assert bundled_corpus("cranfield") is cran
    plan = SearchPlan(reranker_type="bi_encoder", top_k=10, reranker_top_k=10, rerank_multiplier=4)
    recalls, changed = [], 0
    for q in range(0, 225, 15):
        text, relevant = cran.query(q)
        reranked = backend.retrieve(text, plan)
        fused = backend.retrieve(text, SearchPlan(top_k=10, reranker_top_k=10))
        changed += reranked.ids != fused.ids
        assert len(reranked.pool) == 40 and reranked.pairs == 40
        recalls.append(recall_at_10(reranked.ids, relevant) or 0.0)
    assert changed >= 10  # the passages' scores reorder the pool
    assert np.mean(recalls) > 0.3  # human judgments, not the engine's own scores
    # the cross-encoder reads every pool passage at request time (here with the model's real forward pass)
    live = HybridBackend(cran, rerank="model", index_cache=False)
    text, _ = cran.query(0)
    small = SearchPlan(reranker_type="cross_encoder", top_k=5, reranker_top_k=5, rerank_multiplier=1)
    assert len(live.retrieve(text, small).ids) == 5
