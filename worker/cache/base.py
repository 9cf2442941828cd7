"""What the pipeline needs from an embedding cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EmbeddingCache(Protocol):
    """Vector bytes by key. Implementations never raise for an unreachable backend: they answer
    misses and drop writes, so routing goes on without the cache."""

    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored value of each key, or None; one round trip for the whole batch."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store values (with the cache's TTL, if any)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
