"""A plain float64 numpy BERT forward pass: the oracle the ONNX export is checked against.

Written from the BERT paper's equations and Hugging Face's weight names, independently of
worker/embedding/bert_graph.py (no shared code), so a mistake in one does not hide in the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import erf, sqrt

import numpy as np
from tokenizers import Tokenizer

from worker.embedding.bert_graph import BertConfig

_erf = np.vectorize(erf, otypes=[np.float64])


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def token_embeddings(
    weights: Mapping[str, np.ndarray], config: BertConfig, ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``last_hidden_state`` [batch, sequence, hidden] in float64 for int ids and a 0/1 mask."""
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}  # no copy if float64

    def dense(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    def norm(x: np.ndarray, prefix: str) -> np.ndarray:
        return _layer_norm(x, w[f"{prefix}.weight"], w[f"{prefix}.bias"], config.layer_norm_eps)

    batch, seq = ids.shape
    heads, size = config.num_attention_heads, config.head_size
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
    )
    x = norm(x, "embeddings.LayerNorm")
    # padded keys are left out of the softmax entirely
    keep = mask.astype(bool)[:, None, None, :]
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = np.where(keep, q @ k.transpose(0, 1, 3, 2) / sqrt(size), -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)
        x = norm(dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inner = dense(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / sqrt(2.0)))
        x = norm(dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return x


def sentence_embeddings(
    weights: Mapping[str, np.ndarray],
    config: BertConfig,
    tokenizer_json: str,
    texts: Sequence[str],
    max_length: int,
) -> np.ndarray:
    """sentence-transformers' recipe: tokenise (truncate), encode each text alone, mean-pool, L2-normalise."""
    weights = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}  # once
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    rows = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        hidden = token_embeddings(weights, config, ids, np.ones_like(ids))[0]
        pooled = hidden.mean(axis=0)
        rows.append(pooled / np.linalg.norm(pooled))
    return np.stack(rows)
