"""The embedding cache a replica's settings ask for."""

from __future__ import annotations

from collections.abc import Callable

from worker.cache.base import EmbeddingCache
from worker.cache.local import LocalLRUCache
from worker.cache.redis_cache import RedisEmbeddingCache
from worker.config import Settings


def make_cache(settings: Settings, *, on_error: Callable[[], None] | None = None) -> EmbeddingCache | None:
    """Redis when ``redis_url`` is set, else an in-process LRU, else (size 0) no cache."""
    if settings.redis_url is not None:
        return RedisEmbeddingCache(
            settings.redis_url.get_secret_value(), settings.cache_ttl_s, on_error=on_error
        )
    if settings.local_cache_size > 0:
        return LocalLRUCache(settings.local_cache_size)
    return None
