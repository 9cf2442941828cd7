"""An in-process LRU embedding cache, used when no Redis is configured."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class LocalLRUCache:
    """Least-recently-used eviction over ``capacity`` entries; lives and dies with the process."""

    name = "local"

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            found.append(value)
        return found

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._entries[key] = value
            self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
