"""The Redis embedding cache: one round trip per batch, TTL, and routing on through an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from pipeline_harness import QUERY_TEXTS, Record, TopicReader, Topics, build_table, create_topics, produce

from worker.cache import CachedEncoder, RedisEmbeddingCache
from worker.contracts import RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.local.broker import LocalBroker
from worker.local.redis import LocalRedis
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


async def command_calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_batch_costs_one_mget_and_one_pipelined_write_with_ttl(
    redis_server: LocalRedis, encoder: EncoderPool
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    cache = RedisEmbeddingCache(redis_server.url, ttl_s=120)
    lookups: list[tuple[int, int]] = []
    cached = CachedEncoder(encoder, cache, on_lookup=lambda h, m: lookups.append((h, m)))
    try:
        await client.flushdb()
        texts = [f"cache test text number {i}" for i in range(32)]
        mget_before = await command_calls(client, "mget")
        first = await cached.embed(texts)
        assert await command_calls(client, "mget") == mget_before + 1
        assert await client.dbsize() == 32
        keys = await client.keys("rw:emb:*")
        ttl = await client.ttl(keys[0])
        assert 0 < ttl <= 120
        again = await cached.embed(texts)
        assert await command_calls(client, "mget") == mget_before + 2
        assert lookups == [(0, 32), (32, 0)]
        assert np.array_equal(first, again)
        assert np.allclose(first, encoder.embed_sync(texts), atol=1e-6)
    finally:
        await cache.close()
        await client.aclose()


def queries(start: int, count: int) -> list[Record]:
    return [
        (None, orjson.dumps({"id": f"q{i}", "text": QUERY_TEXTS[i % len(QUERY_TEXTS)]}), [])
        for i in range(start, start + count)
    ]


async def test_routing_goes_on_while_redis_is_down_and_uses_it_again_after(
    broker: LocalBroker, encoder: EncoderPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.cache.redis_cache")
    topics = Topics.fresh()
    await create_topics(broker.bootstrap, topics)
    redis = LocalRedis().start()
    telemetry = Telemetry(replica_id="cache-test")
    metrics = telemetry.metrics
    cache = RedisEmbeddingCache(redis.url, ttl_s=60, on_error=lambda: metrics.cache_unavailable("redis"))
    pipeline = QueryPipeline(
        topics.settings(broker.bootstrap),
        encoder=CachedEncoder(encoder, cache, on_lookup=metrics.cache_lookups),
        router=Router(build_table(encoder)),
        telemetry=telemetry,
    )
    running = asyncio.create_task(pipeline.run())
    try:
        async with TopicReader(broker.bootstrap, [topics.intents]) as reader:
            await produce(broker.bootstrap, topics.queries, queries(0, 30))
            await reader.wait_for(lambda rs: len(rs) >= 30)
            redis.stop()
            await produce(broker.bootstrap, topics.queries, queries(30, 30))
            await reader.wait_for(lambda rs: len(rs) >= 60)
            assert "routeworker_cache_unavailable_total" in telemetry.metrics_text()
            outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage_logs) == 1
            redis = LocalRedis(port=redis.port).start()
            hits_before = _hits(telemetry)
            produced = 60
            async with asyncio.timeout(30):
                while _hits(telemetry) == hits_before:  # the cache is retried after its pause
                    await produce(broker.bootstrap, topics.queries, queries(produced, 6))
                    produced += 6
                    await reader.wait_for(lambda rs, n=produced: len(rs) >= n)
            assert "redis embedding cache is back" in caplog.text
        ids = {RoutedIntent.model_validate_json(r.value).query_id for r in reader.records}
        assert ids == {f"q{i}" for i in range(produced)}
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 30)
        await cache.close()
        redis.stop()
        telemetry.shutdown()


def _hits(telemetry: Telemetry) -> float:
    return telemetry.registry.get_sample_value("routeworker_cache_hits_total") or 0.0
