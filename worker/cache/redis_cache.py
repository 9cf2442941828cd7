"""The shared embedding cache in Redis: MGET for a batch, pipelined SET EX for its misses.

Redis is an accelerator, never a dependency: when a call fails the cache answers misses, logs the
outage once, counts every failure, and tries Redis again after a growing pause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# A cache that is slower than embedding is worse than none: fail fast and route without it.
_SOCKET_TIMEOUT_S = 0.5
_FIRST_RETRY_S = 1.0
_MAX_RETRY_S = 30.0


class RedisEmbeddingCache:
    """Embedding vectors in Redis with a TTL; one round trip per batch for reads and for writes."""

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        *,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self._client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # our own back-off below; no hidden retries stalling a batch
        )
        self._on_error = on_error
        self._clock = clock
        self._down_until = 0.0
        self._pause_s = _FIRST_RETRY_S
        self._outage = False

    @property
    def available(self) -> bool:
        """False while the cache is skipped after a failure."""
        return self._clock() >= self._down_until

    def _failed(self, error: BaseException) -> None:
        if self._on_error is not None:
            self._on_error()
        if not self._outage:
            logger.warning("redis embedding cache unavailable, routing without it: %s", error)
            self._outage = True
        else:
            self._pause_s = min(self._pause_s * 2, _MAX_RETRY_S)
        self._down_until = self._clock() + self._pause_s

    def _succeeded(self) -> None:
        if self._outage:
            logger.info("redis embedding cache is back")
        self._outage = False
        self._pause_s = _FIRST_RETRY_S

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            values = await self._client.mget(list(keys))
        except (RedisError, OSError) as error:
            self._failed(error)
            return [None] * len(keys)
        self._succeeded()
        return [v if isinstance(v, bytes) else None for v in values]

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self.available:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    # in a pipeline, set() queues the command and returns the pipeline: nothing to await
                    pipe.set(key, value, ex=self.ttl_s)  # type: ignore[unused-awaitable]
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._failed(error)
            return
        self._succeeded()

    async def close(self) -> None:
        await self._client.aclose()
