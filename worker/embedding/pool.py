"""A pool of embedding sessions used from worker threads, with an async API for the pipeline.

:func:`encoder_pool` is the one factory of the configured model's pool: the worker, the CLI and
the replicas all build it here.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from worker.embedding.model import ModelChoice, ModelSpec, resolve_model
from worker.embedding.session import EmbeddingSession, fastembed_session
from worker.routing import EncoderError
from worker.routing.types import Vectors, l2_normalise

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], EmbeddingSession]


class EncoderPool:
    """``pool_size`` embedding sessions of ``model`` behind a thread pool; at most ``max_pending``
    async calls wait.

    Output rows are float32, L2-normalised, one per text, in order. Texts are embedded in fixed
    chunks of ``batch_size`` (1 when ``embed_alone``), so the same request always gives the same
    vectors. ``embed_alone`` defaults to :attr:`ModelSpec.batch_dependent` (a local int8 export:
    its dynamic quantisation makes a text's vector depend on the other texts in its batch).
    Construction loads the model: do it in a thread, not on the event loop.
    """

    def __init__(
        self,
        model: ModelSpec,
        pool_size: int = 1,
        max_pending: int = 64,
        *,
        batch_size: int = 32,
        embed_alone: bool | None = None,
        cache_dir: Path | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        if pool_size < 1 or max_pending < 1 or batch_size < 1:
            raise ValueError("pool_size, max_pending and batch_size must be at least 1")
        self.model = model
        alone = model.batch_dependent if embed_alone is None else embed_alone
        self.batch_size = 1 if alone else batch_size
        factory = session_factory or (lambda: fastembed_session(model, cache_dir))
        self._sessions: queue.SimpleQueue[EmbeddingSession] = queue.SimpleQueue()
        for _ in range(pool_size):
            self._sessions.put(factory())
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="encoder")
        self._max_pending = max_pending
        self._pending: asyncio.Semaphore | None = None
        self._dim = 0
        self._dim = int(self.embed_sync(["dimension probe"]).shape[1])
        self._fingerprint = model.fingerprint
        logger.info("embedding with %s (dim %d, %d sessions)", self._fingerprint, self._dim, pool_size)

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint (:func:`~worker.embedding.model.model_fingerprint`): vectors are
        comparable iff equal."""
        return self._fingerprint

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` in the calling thread (CLI, benchmarks, the pool's own workers)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        session = self._sessions.get()
        try:
            rows = [
                np.asarray(vector, dtype=np.float32)
                for start in range(0, len(texts), self.batch_size)
                for vector in session.embed(
                    texts[start : start + self.batch_size], batch_size=self.batch_size
                )
            ]
        finally:
            self._sessions.put(session)
        if len(rows) != len(texts):
            raise EncoderError(f"the model returned {len(rows)} vectors for {len(texts)} texts")
        return l2_normalise(np.stack(rows))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` on the pool's threads; waits while ``max_pending`` calls are in flight."""
        if self._pending is None:
            # Created lazily so the semaphore belongs to the running loop.
            self._pending = asyncio.Semaphore(self._max_pending)
        async with self._pending:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.embed_sync, list(texts))

    def close(self) -> None:
        """Wait for running embeddings and stop the threads."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class PoolChoice(ModelChoice, Protocol):
    """The settings that size the pool (:class:`worker.config.Settings` has them)."""

    @property
    def encoder_threads(self) -> int: ...
    @property
    def encoder_max_pending(self) -> int: ...
    @property
    def batch_size(self) -> int: ...


def encoder_pool(settings: PoolChoice, *, session_factory: SessionFactory | None = None) -> EncoderPool:
    """``encoder_threads`` sessions of the configured model (blocking: loads ONNX; call in a thread).

    ``session_factory`` replaces fastembed (tests).
    """
    return EncoderPool(
        resolve_model(settings),
        settings.encoder_threads,
        settings.encoder_max_pending,
        batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
        session_factory=session_factory,
    )
