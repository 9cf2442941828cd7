"""A hashing stand-in for the embedding model.

The hashing encoder is a deterministic bag of words (no model files, microseconds per text): tests,
demos and benchmarks use it where vectors need only be consistent, not meaningful.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from worker.embedding.model import ModelSpec
from worker.embedding.pool import EncoderPool

HASHING_MODEL = "hashing-bow"
_WORD = re.compile(r"\w+")


class HashingSession:
    """Words hashed into signed, weighted buckets: texts sharing words get similar vectors.

    Not a language model. Each word also gets its own weight, so different texts almost never
    score exactly alike: with equal weights, many utterances tie with a query and which of them
    make a top-k cut depends on index layout, not on the routes.
    """

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def embed(self, documents: Iterable[str], batch_size: int = 32) -> Iterator[npt.NDArray[np.float32]]:
        """One (unnormalised) vector per document; the pool normalises."""
        for text in documents:
            row = np.zeros(self.dim, dtype=np.float32)
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                weight = 0.5 + int.from_bytes(digest[5:8], "little") / float(1 << 24)
                row[int.from_bytes(digest[:4], "little") % self.dim] += weight if digest[4] % 2 else -weight
            if not row.any():
                row[0] = 1.0  # a text without words still needs a unit vector
            yield row


def hashing_pool(dim: int = 64, *, name: str = HASHING_MODEL, pool_size: int = 1) -> EncoderPool:
    """An encoder pool over :class:`HashingSession` (fingerprint ``<name>-<dim>@hub``)."""
    return EncoderPool(
        ModelSpec(f"{name}-{dim}"), pool_size, max_pending=64, session_factory=lambda: HashingSession(dim)
    )
