"""Embedding through a cache: look a batch up in one call, embed only the misses, store them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from worker.cache.base import EmbeddingCache
from worker.cache.keys import cache_key, model_namespace
from worker.routing.types import Vectors


class AsyncEncoder(Protocol):
    """The part of :class:`worker.routing.EncoderPool` the pipeline uses."""

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        ...

    @property
    def fingerprint(self) -> str:
        """Identity of the model."""
        ...

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised float32 vectors, one row per text, computed off the event loop."""
        ...


LookupObserver = Callable[[int, int], None]


class CachedEncoder:
    """An :class:`AsyncEncoder` in front of an optional cache (``None``: always embed).

    Values are the vectors' little-endian float32 bytes; a value of the wrong length (another
    model's, or corrupt) counts as a miss and is overwritten.
    """

    def __init__(
        self,
        encoder: AsyncEncoder,
        cache: EmbeddingCache | None,
        *,
        on_lookup: LookupObserver | None = None,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self._namespace = model_namespace(encoder.fingerprint)
        self._on_lookup = on_lookup

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self.encoder.dim

    @property
    def fingerprint(self) -> str:
        """Identity of the model."""
        return self.encoder.fingerprint

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Vectors of ``texts`` (expected normalised, see :func:`worker.cache.keys.normalise_text`)."""
        if self.cache is None or not texts:
            return await self.encoder.embed(texts)
        keys = [cache_key(self._namespace, text) for text in texts]
        found = await self.cache.get_many(keys)
        dim = self.encoder.dim
        rows = np.empty((len(texts), dim), dtype=np.float32)
        missing: list[int] = []
        for i, raw in enumerate(found):
            if raw is not None and len(raw) == dim * 4:
                rows[i] = np.frombuffer(raw, dtype="<f4")
            else:
                missing.append(i)
        if missing:
            fresh = await self.encoder.embed([texts[i] for i in missing])
            rows[missing] = fresh
            values = np.ascontiguousarray(fresh, dtype="<f4")
            await self.cache.put_many([(keys[i], values[j].tobytes()) for j, i in enumerate(missing)])
        if self._on_lookup is not None:
            self._on_lookup(len(texts) - len(missing), len(missing))
        return rows
