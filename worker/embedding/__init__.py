"""Embedding: the model (default, preparation, fingerprint), its sessions and the encoder pool.

No Kafka and no settings object: :func:`resolve_model` and :func:`encoder_pool` read any object
with the settings' field names (:class:`worker.config.Settings` is one).
"""

from worker.embedding.hashing import HASHING_MODEL, HashingSession, hashing_pool
from worker.embedding.model import (
    DEFAULT_MODEL,
    ModelChoice,
    ModelNotPreparedError,
    ModelSpec,
    Variant,
    model_fingerprint,
    resolve_model,
)
from worker.embedding.pool import EncoderPool, PoolChoice, RunStats, encoder_pool
from worker.embedding.session import (
    EmbeddingSession,
    OnnxSession,
    TextSession,
    TokenSession,
    fastembed_session,
    load_session,
)

__all__ = [
    "DEFAULT_MODEL",
    "HASHING_MODEL",
    "EmbeddingSession",
    "EncoderPool",
    "HashingSession",
    "ModelChoice",
    "ModelNotPreparedError",
    "ModelSpec",
    "OnnxSession",
    "PoolChoice",
    "RunStats",
    "TextSession",
    "TokenSession",
    "Variant",
    "encoder_pool",
    "fastembed_session",
    "hashing_pool",
    "load_session",
    "model_fingerprint",
    "resolve_model",
]
