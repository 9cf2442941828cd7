"""Embedding cache: Redis shared by replicas, or an in-process LRU."""

from worker.cache.base import EmbeddingCache
from worker.cache.encoder import AsyncEncoder, CachedEncoder
from worker.cache.factory import make_cache
from worker.cache.keys import cache_key, model_namespace, normalise_text
from worker.cache.local import LocalLRUCache
from worker.cache.redis_cache import RedisEmbeddingCache

__all__ = [
    "AsyncEncoder",
    "CachedEncoder",
    "EmbeddingCache",
    "LocalLRUCache",
    "RedisEmbeddingCache",
    "cache_key",
    "make_cache",
    "model_namespace",
    "normalise_text",
]
