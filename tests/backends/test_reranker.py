"""The rerank stage's model (router/backends/reranker.py): all-MiniLM-L6-v2 in numpy, on literal inputs.

The reference figures are the similarity matrix sentence-transformers publishes for this model in its
quickstart (``model.similarity(embeddings, embeddings)`` for the three sentences below).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from canary.config import Preset, PresetStore, PresetValidationError
from canary.errors import ConfigError
from router.backends import reranker
from router.backends.corpus import build_corpus
from router.backends.doc_texts import MAX_WORDS, document_text, document_texts
from router.backends.hybrid import DEFAULT_RERANK_MAX_TOKENS, SearchPlan
from router.backends.reranker import load_model, model_dir, score_pairs

REFERENCE_SENTENCES = ("The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.")


@pytest.mark.parametrize(
    ("i", "j", "expected"),
    [(0, 0, 1.0), (0, 1, 0.6660), (0, 2, 0.1046), (1, 2, 0.1411)],
)
def test_reproduces_the_sentence_transformers_reference_matrix(i: int, j: int, expected: float) -> None:
    e = load_model().encode(list(REFERENCE_SENTENCES))
    assert float(e[i] @ e[j]) == pytest.approx(expected, abs=1e-3)


def test_embeddings_are_unit_384_vectors_and_deterministic() -> None:
    m = load_model()
    a = m.encode(["A man is eating food."])
    b = m.encode(["A man is eating food."])
    assert a.shape == (1, 384) and a.dtype == np.float32
    assert float(np.linalg.norm(a[0])) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(a, b)


def test_padding_in_a_batch_does_not_change_an_embedding() -> None:
    m = load_model()
    short, long = "A man is eating food.", "A man is eating a piece of bread while the sun sets over the quiet hills."
    alone = m.encode([short])[0]
    batched = m.encode([short, long], batch_size=2)[0]  # short is padded to long's length here
    np.testing.assert_allclose(alone, batched, atol=1e-5)


@pytest.mark.parametrize(
    ("query", "paraphrase", "unrelated"),
    [
        ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."),
        ("How do I reset my password?", "Steps to change a forgotten password", "Best pizza places in Naples"),
        ("The cat sleeps on the sofa.", "A kitten is napping on the couch.", "Stock markets fell sharply today."),
    ],
)
def test_paraphrases_score_well_above_unrelated_texts(query: str, paraphrase: str, unrelated: str) -> None:
    s = score_pairs(query, [query, paraphrase, unrelated], batch_size=8, max_tokens=64)
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    assert s[1] > s[2] + 0.3, s


@pytest.mark.parametrize(("max_tokens", "length"), [(2, 2), (5, 5), (8, 8), (512, 15)])
def test_tokenize_truncates_to_max_tokens_keeping_cls_and_sep(max_tokens: int, length: int) -> None:
    m = load_model()
    ids, mask = m.tokenize(["The weather is lovely today, and it is so sunny outside!"], max_tokens)
    assert ids.shape == (1, length) and mask.sum() == length
    assert ids[0, 0] == 101 and ids[0, -1] == 102  # [CLS] ... [SEP]


def test_score_pairs_order_batching_and_empty() -> None:
    docs = ["A man is eating a piece of bread.", "A man is riding a horse.", "A man is eating food."] * 3
    one = score_pairs("A man is eating food.", docs, batch_size=1, max_tokens=32)
    big = score_pairs("A man is eating food.", docs, batch_size=128, max_tokens=32)
    np.testing.assert_allclose(one, big, atol=1e-5)  # batch size changes cost, not scores
    assert score_pairs("q", [], batch_size=8, max_tokens=32).shape == (0,)


def test_more_pairs_and_more_tokens_cost_more_cpu() -> None:
    docs = ["the quick brown fox jumps over the lazy dog and keeps running through the field " * 4] * 64
    score_pairs("warm up", docs[:1], batch_size=8, max_tokens=8)

    def cpu(n: int, max_tokens: int) -> float:
        start = time.process_time()
        score_pairs("a fox in a field", docs[:n], batch_size=32, max_tokens=max_tokens)
        return time.process_time() - start

    assert cpu(64, 32) > 2 * cpu(4, 32)  # 16x the pairs (loose: 2x)
    assert cpu(32, 64) > 1.5 * cpu(32, 8)  # 8x the tokens per pair (loose)


async def test_event_loop_stays_responsive_while_the_model_runs() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.to_thread(score_pairs, "a query", ["some document text"] * 32, batch_size=8, max_tokens=32)
    task.cancel()
    assert ticks > 10


def test_missing_model_package_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reranker, "MODEL_PACKAGE", "no_such_model_package_here")
    with pytest.raises(ConfigError, match="not installed"):
        model_dir()


def test_missing_model_file_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reranker, "MODEL_FILES", ("model.safetensors", "no_such_file.json"))
    with pytest.raises(ConfigError, match=r"no_such_file\.json"):
        model_dir()


def test_document_texts_are_deterministic_salient_words_of_the_document() -> None:
    c = build_corpus(n_docs=500, n_queries=5, n_topics=4)
    texts = document_texts(c, np.arange(20, dtype=np.int64))
    assert texts == [document_text(c, d) for d in range(20)]
    for d, text in enumerate(texts):
        words = text.split()
        assert 0 < len(words) <= MAX_WORDS and len(set(words)) == len(words)
        ids = [c.word_index[w] for w in words]
        assert all(c.bm25(w)[d] > 0 for w in words[:3])  # every word occurs in that document
        weights = [float(c.bm25_terms([i], [1.0])[d]) for i in ids]
        assert weights == sorted(weights, reverse=True)  # most salient first


@pytest.mark.parametrize("max_tokens", [2, 4, 8, 16, 32])
def test_cutting_a_document_text_to_max_tokens_words_loses_no_token(max_tokens: int) -> None:
    c = build_corpus(n_docs=500, n_queries=5, n_topics=4)
    m = load_model()
    docs = np.arange(30, dtype=np.int64)
    full, _ = m.tokenize(document_texts(c, docs), max_tokens)
    cut, _ = m.tokenize(document_texts(c, docs, max_words=max_tokens), max_tokens)
    np.testing.assert_array_equal(full, cut)


PRESETS = Path(__file__).resolve().parents[2] / "configs" / "presets"


def test_preset_reranker_max_tokens_is_optional_and_reaches_the_plan() -> None:
    shipped = PresetStore(PRESETS).get("last_good")
    snapshot = shipped.to_dict()
    assert "max_tokens" not in snapshot["reranker"]  # absent, not null: the shipped hashes stay as they were
    assert SearchPlan.from_params(snapshot).rerank_max_tokens == DEFAULT_RERANK_MAX_TOKENS
    snapshot["reranker"]["max_tokens"] = 16
    with_knob = Preset.from_snapshot(snapshot)
    assert with_knob.reranker.max_tokens == 16 and with_knob.content_hash != shipped.content_hash
    assert SearchPlan.from_params(with_knob.to_dict()).rerank_max_tokens == 16


@pytest.mark.parametrize(("value", "reason"), [(1, ">= 2"), (513, "<= 512"), ("8", "integer"), (True, "integer")])
def test_preset_reranker_max_tokens_is_validated(value: object, reason: str) -> None:
    snapshot = PresetStore(PRESETS).get("last_good").to_dict()
    snapshot["reranker"]["max_tokens"] = value
    with pytest.raises(PresetValidationError, match=reason):
        Preset.from_snapshot(snapshot)


@pytest.mark.parametrize(("raw", "threads"), [(None, 1), ("1", 1), ("2", 2), ("0", 0), (" 3 ", 3)])
def test_blas_threads_setting(monkeypatch: pytest.MonkeyPatch, raw: str | None, threads: int) -> None:
    if raw is None:
        monkeypatch.delenv(reranker.BLAS_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(reranker.BLAS_THREADS_ENV, raw)
    assert reranker.blas_threads() == threads


@pytest.mark.parametrize("raw", ["two", "-1", "1.5", ""])
def test_blas_threads_setting_rejects_nonsense(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(reranker.BLAS_THREADS_ENV, raw)
    with pytest.raises(ConfigError, match=reranker.BLAS_THREADS_ENV):
        reranker.blas_threads()
