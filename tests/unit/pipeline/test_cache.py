"""Embedding cache: keys, the LRU, embedding only misses, and routing on when Redis is down."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pipeline_fakes import HashingEncoder

from worker.cache import (
    CachedEncoder,
    LocalLRUCache,
    RedisEmbeddingCache,
    cache_key,
    make_cache,
    model_namespace,
)
from worker.config import load_settings
from worker.local.process import free_port


def test_keys_depend_on_model_and_normalised_text() -> None:
    a, b = model_namespace("model-a"), model_namespace("model-b")
    assert cache_key(a, "hello") != cache_key(b, "hello")
    assert cache_key(a, "hello") == cache_key(a, "hello")
    assert cache_key(a, "hello") != cache_key(a, "hello!")
    assert cache_key(a, "hello").startswith("rw:emb:")


async def test_lru_evicts_the_least_recently_used() -> None:
    cache = LocalLRUCache(2)
    await cache.put_many([("a", b"1"), ("b", b"2")])
    assert await cache.get_many(["a"]) == [b"1"]  # a is now the most recent
    await cache.put_many([("c", b"3")])
    assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    assert len(cache) == 2


async def test_only_misses_are_embedded_and_stored(encoder: HashingEncoder) -> None:
    lookups: list[tuple[int, int]] = []
    cached = CachedEncoder(encoder, LocalLRUCache(10), on_lookup=lambda h, m: lookups.append((h, m)))
    first = await cached.embed(["play music", "check balance"])
    second = await cached.embed(["check balance", "weather today"])
    assert encoder.embedded == ["play music", "check balance", "weather today"]
    assert lookups == [(0, 2), (1, 1)]
    assert np.array_equal(second[0], first[1])
    assert np.allclose(second[1], encoder.embed_sync(["weather today"])[0])


async def test_a_value_of_the_wrong_size_is_a_miss(encoder: HashingEncoder) -> None:
    cache = LocalLRUCache(10)
    cached = CachedEncoder(encoder, cache)
    await cache.put_many([(cache_key(model_namespace(encoder.fingerprint), "hi"), b"short")])
    vectors = await cached.embed(["hi"])
    assert encoder.embedded == ["hi"]
    assert np.allclose(vectors[0], encoder.embed_sync(["hi"])[0])


async def test_unreachable_redis_answers_misses_logs_once_counts_and_retries_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = 100.0
    errors: list[int] = []
    cache = RedisEmbeddingCache(
        f"redis://127.0.0.1:{free_port()}/0", 60, on_error=lambda: errors.append(1), clock=lambda: now
    )
    try:
        with caplog.at_level(logging.WARNING, logger="worker.cache.redis_cache"):
            assert await cache.get_many(["a", "b"]) == [None, None]
            assert not cache.available
            await cache.put_many([("a", b"x")])  # skipped while down: no second error
            assert errors == [1]
            now += 1.5
            assert cache.available
            assert await cache.get_many(["a"]) == [None]
            assert errors == [1, 1]
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    finally:
        await cache.close()


def test_settings_choose_the_cache() -> None:
    assert isinstance(make_cache(load_settings()), LocalLRUCache)
    assert make_cache(load_settings(local_cache_size=0)) is None
    assert isinstance(make_cache(load_settings(redis_url="redis://127.0.0.1:1/0")), RedisEmbeddingCache)
