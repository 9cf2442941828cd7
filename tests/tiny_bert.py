"""A tiny random BERT encoder (config and weights) for tests of the graph and its quantisation."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.embedding.bert_graph import BertConfig

CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 24,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 20,
    "vocab_size": 40,
    "type_vocab_size": 2,
}


def random_weights(config: BertConfig, seed: int = 7) -> dict[str, np.ndarray]:
    """Weights with Hugging Face ``BertModel`` names, normal(0, 0.5)."""
    rng = np.random.default_rng(seed)
    h, n = config.hidden_size, config.intermediate_size

    def t(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.5, shape).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": t(config.vocab_size, h),
        "embeddings.position_embeddings.weight": t(config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": t(config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": 1 + t(h),
        "embeddings.LayerNorm.bias": t(h),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            w[f"{p}.attention.self.{name}.weight"], w[f"{p}.attention.self.{name}.bias"] = t(h, h), t(h)
        w[f"{p}.attention.output.dense.weight"], w[f"{p}.attention.output.dense.bias"] = t(h, h), t(h)
        w[f"{p}.attention.output.LayerNorm.weight"] = 1 + t(h)
        w[f"{p}.attention.output.LayerNorm.bias"] = t(h)
        w[f"{p}.intermediate.dense.weight"], w[f"{p}.intermediate.dense.bias"] = t(n, h), t(n)
        w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"] = t(h, n), t(h)
        w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"] = 1 + t(h), t(h)
    return w
