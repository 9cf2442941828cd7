"""A pool of embedding sessions used from worker threads, with an async API for the pipeline.

:func:`encoder_pool` is the one factory of the configured model's pool: the worker, the CLI and
the replicas all build it here.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from worker.embedding.batching import DEFAULT_RUN_TOKENS, plan_runs
from worker.embedding.model import ModelChoice, ModelSpec, resolve_model
from worker.embedding.session import EmbeddingSession, TokenSession, load_session
from worker.routing import EncoderError
from worker.routing.types import Vectors, l2_normalise

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], EmbeddingSession]


@dataclass
class RunStats:
    """What the pool's length-aware runs did, summed since it started (read by metrics, benchmarks)."""

    texts: int = 0
    runs: int = 0
    tokens: int = 0
    padded_tokens: int = 0


class EncoderPool:
    """``pool_size`` embedding sessions of ``model`` behind a thread pool; at most ``max_pending``
    async calls wait.

    Output rows are float32, L2-normalised, one per text, in order. A :class:`TokenSession` (the
    local export) gets each call's texts tokenised once, sorted by token count and cut into runs of
    at most ``run_tokens`` padded tokens (:func:`~worker.embedding.batching.plan_runs`): a text's
    vector does not depend on the texts it shares a run with, so the order costs nothing but saves
    the padding. Other sessions (fastembed by model name) get fixed chunks of ``batch_size`` in
    arrival order. Construction loads the model: do it in a thread, not on the event loop.
    """

    def __init__(
        self,
        model: ModelSpec,
        pool_size: int = 1,
        max_pending: int = 64,
        *,
        batch_size: int = 32,
        run_tokens: int = DEFAULT_RUN_TOKENS,
        cache_dir: Path | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        if pool_size < 1 or max_pending < 1 or batch_size < 1 or run_tokens < 1:
            raise ValueError("pool_size, max_pending, batch_size and run_tokens must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.run_tokens = run_tokens
        self.stats = RunStats()
        self._stats_lock = threading.Lock()
        factory = session_factory or (lambda: load_session(model, cache_dir))
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
            if isinstance(session, TokenSession):
                return l2_normalise(self._embed_in_runs(session, texts))
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

    def _embed_in_runs(self, session: TokenSession, texts: list[str]) -> Vectors:
        ids = session.tokenize(texts)
        lengths = [len(row) for row in ids]
        runs = plan_runs(lengths, self.run_tokens)
        out: Vectors | None = None
        for run in runs:
            vectors = np.asarray(session.embed_tokens([ids[i] for i in run]), dtype=np.float32)
            if vectors.shape[0] != len(run):
                raise EncoderError(f"the model returned {vectors.shape[0]} vectors for {len(run)} texts")
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[run] = vectors
        assert out is not None  # texts is not empty, so there is a run
        with self._stats_lock:
            self.stats.texts += len(texts)
            self.stats.runs += len(runs)
            self.stats.tokens += sum(lengths)
            self.stats.padded_tokens += sum(len(run) * lengths[run[-1]] for run in runs)
        return out

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
    @property
    def encoder_run_tokens(self) -> int: ...


def encoder_pool(settings: PoolChoice, *, session_factory: SessionFactory | None = None) -> EncoderPool:
    """``encoder_threads`` sessions of the configured model (blocking: loads ONNX; call in a thread).

    ``session_factory`` replaces the model's sessions (tests).
    """
    return EncoderPool(
        resolve_model(settings),
        settings.encoder_threads,
        settings.encoder_max_pending,
        batch_size=settings.batch_size,
        run_tokens=settings.encoder_run_tokens,
        cache_dir=settings.cache_dir,
        session_factory=session_factory,
    )
