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

from worker.embedding.batching import DEFAULT_RUN_TOKENS, plan_runs, share_runs
from worker.embedding.model import ModelChoice, ModelSpec, resolve_model
from worker.embedding.session import EmbeddingSession, TokenIds, TokenSession, load_session
from worker.routing import EncoderError
from worker.routing.types import Vectors, l2_normalise

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], EmbeddingSession]
#: runs (text indices) with their vectors, as one session made them
RunVectors = list[tuple[list[int], Vectors]]


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

    An async call (:meth:`embed`) is shared by every session: its runs are dealt out so that all
    sessions work on it at once (:func:`~worker.embedding.batching.share_runs`; fastembed sessions
    get a contiguous share of its texts each). The pool is thus one encoder that is ``pool_size``
    times faster on a batch, not ``pool_size`` encoders taking a batch each: a batch waits for no
    other batch but the one before it, and output order needs no reordering. Each session runs one
    intra-op thread; sessions on separate cores run side by side (two sessions on this project's
    2-core machines embed 1.8-2.0x the texts of one in large calls: ``benchmarks/encoder_sessions.py``).
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
        self.pool_size = pool_size
        self._sessions: queue.SimpleQueue[EmbeddingSession] = queue.SimpleQueue()
        first = factory()
        self._sessions.put(first)
        for _ in range(pool_size - 1):
            self._sessions.put(factory())
        # tokenises shared calls on its own thread: the next batch is tokenised while the sessions
        # still run the one before (the tokenizer is only read, never by two threads at once)
        self._tokenizer = first if isinstance(first, TokenSession) else None
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
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
        runs = plan_runs([len(row) for row in ids], self.run_tokens)
        return self._assemble(ids, self._run(session, ids, runs), runs)

    @staticmethod
    def _run(session: TokenSession, ids: Sequence[TokenIds], runs: list[list[int]]) -> RunVectors:
        """Each of ``runs`` (text indices) with its vectors, run one after another on ``session``."""
        done: RunVectors = []
        for run in runs:
            vectors = np.asarray(session.embed_tokens([ids[i] for i in run]), dtype=np.float32)
            if vectors.shape[0] != len(run):
                raise EncoderError(f"the model returned {vectors.shape[0]} vectors for {len(run)} texts")
            done.append((run, vectors))
        return done

    def _run_part(self, ids: Sequence[TokenIds], runs: list[list[int]]) -> RunVectors:
        """One session's share of a call (on a pool thread: a session is always free for it)."""
        session = self._sessions.get()
        try:
            assert isinstance(session, TokenSession)  # only token sessions' calls are cut into runs
            return self._run(session, ids, runs)
        finally:
            self._sessions.put(session)

    def _assemble(self, ids: Sequence[TokenIds], done: RunVectors, runs: list[list[int]]) -> Vectors:
        """The rows of ``done`` in text order (and the run statistics counted)."""
        out = np.empty((len(ids), done[0][1].shape[1]), dtype=np.float32)
        for rows, vectors in done:
            out[rows] = vectors
        with self._stats_lock:
            self.stats.texts += len(ids)
            self.stats.runs += len(runs)
            self.stats.tokens += sum(len(row) for row in ids)
            self.stats.padded_tokens += sum(len(run) * len(ids[run[-1]]) for run in runs)
        return out

    async def _embed_shared(self, texts: list[str]) -> Vectors:
        """A call's runs dealt to every session at once (see the class docstring)."""
        loop = asyncio.get_running_loop()
        if self._tokenizer is None:  # fastembed sessions: a contiguous share of the texts each
            share = -(-len(texts) // self.pool_size)
            chunks = [texts[start : start + share] for start in range(0, len(texts), share)]
            embedded = await asyncio.gather(
                *(loop.run_in_executor(self._executor, self.embed_sync, chunk) for chunk in chunks)
            )
            return np.concatenate(embedded)
        ids = await loop.run_in_executor(self._tokenizing, self._tokenizer.tokenize, texts)
        lengths = [len(row) for row in ids]
        parts = share_runs(plan_runs(lengths, self.run_tokens), lengths, self.pool_size)
        shares = await asyncio.gather(
            *(loop.run_in_executor(self._executor, self._run_part, ids, part) for part in parts)
        )
        done = [pair for share in shares for pair in share]
        return l2_normalise(self._assemble(ids, done, [run for run, _ in done]))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` on the pool's threads; waits while ``max_pending`` calls are in flight."""
        if self._pending is None:
            # Created lazily so the semaphore belongs to the running loop.
            self._pending = asyncio.Semaphore(self._max_pending)
        async with self._pending:
            texts = list(texts)
            if self.pool_size > 1 and len(texts) > 1:
                return await self._embed_shared(texts)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.embed_sync, texts)

    def close(self) -> None:
        """Wait for running embeddings and stop the threads."""
        self._tokenizing.shutdown(wait=True)
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
