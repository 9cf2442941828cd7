"""An in-process LRU embedding cache, used when no Redis is configured."""

from __future__ import annotations

from collections.abc import Sequence

from cachetools import LRUCache


class LocalLRUCache:
    """Least-recently-used eviction over ``capacity`` entries; lives and dies with the process."""

    name = "local"

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: LRUCache[str, bytes] = LRUCache(maxsize=capacity)

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._entries.get(key) for key in keys]

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._entries[key] = value

    async def close(self) -> None:
        self._entries.clear()
