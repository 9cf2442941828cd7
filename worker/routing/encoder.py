"""A pool of ONNX embedding sessions used from worker threads, with an async API for the pipeline.

Each fastembed session runs with ONE intra-op thread: replicas scale by sessions (and processes),
and a session that grabs every core would starve the event loop and the Faiss searches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from worker.routing.errors import EncoderError
from worker.routing.types import Vectors, l2_normalise

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingSession(Protocol):
    """What the pool needs from a fastembed ``TextEmbedding``."""

    def embed(self, documents: Iterable[str], batch_size: int = ...) -> Iterable[Any]:
        """Yield one vector per document."""
        ...


def fastembed_session(model_dir: Path | None, model_name: str, cache_dir: Path | None) -> EmbeddingSession:
    """Load one single-threaded fastembed session (from ``model_dir`` when given)."""
    from fastembed import TextEmbedding  # imported lazily: loading onnxruntime takes a while

    options: dict[str, Any] = {"threads": 1}
    if model_dir is not None:
        options["specific_model_path"] = str(model_dir)
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    try:
        session: EmbeddingSession = TextEmbedding(model_name=model_name, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise EncoderError(f"cannot load embedding model {model_name!r} from {model_dir}: {error}") from error
    return session


class EncoderPool:
    """``pool_size`` embedding sessions behind a thread pool; at most ``max_pending`` async calls wait.

    Output rows are float32, L2-normalised, one per text, in order. Texts are embedded in fixed
    chunks of ``batch_size`` (1 when ``embed_alone``), so the same request always gives the same
    vectors. ``embed_alone`` defaults to True for an ``int8`` model: its dynamic quantisation makes a
    text's vector depend on the other texts in its batch. Construction loads the model: do it in a
    thread, not on the event loop.
    """

    def __init__(
        self,
        model_dir: Path | None,
        model_name: str = DEFAULT_MODEL,
        pool_size: int = 1,
        max_pending: int = 64,
        *,
        batch_size: int = 32,
        embed_alone: bool | None = None,
        cache_dir: Path | None = None,
        session_factory: Callable[[], EmbeddingSession] | None = None,
    ) -> None:
        if pool_size < 1 or max_pending < 1 or batch_size < 1:
            raise ValueError("pool_size, max_pending and batch_size must be at least 1")
        self.model_name = model_name
        self.model_dir = model_dir
        self.variant = model_dir.name if model_dir is not None else "default"
        alone = self.variant == "int8" if embed_alone is None else embed_alone
        self.batch_size = 1 if alone else batch_size
        factory = session_factory or (lambda: fastembed_session(model_dir, model_name, cache_dir))
        self._sessions: queue.SimpleQueue[EmbeddingSession] = queue.SimpleQueue()
        for _ in range(pool_size):
            self._sessions.put(factory())
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="encoder")
        self._max_pending = max_pending
        self._pending: asyncio.Semaphore | None = None
        self._dim = 0
        self._dim = int(self.embed_sync(["dimension probe"]).shape[1])
        if model_dir is None:
            # Same format as worker.embedding.model.ModelSpec.fingerprint: vectors are shared only
            # between replicas whose fingerprints are equal.
            self._fingerprint = f"{model_name}@hub"
        else:
            self._fingerprint = f"{model_name}@{self.variant}:{_weights_hash(model_dir)}"
        logger.info("embedding with %s (dim %d, %d sessions)", self._fingerprint, self._dim, pool_size)

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Model name, variant and a sha256 prefix of its weights: vectors are comparable iff equal."""
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


def _weights_hash(model_dir: Path) -> str:
    sha = hashlib.sha256()
    path = model_dir / "model.onnx"
    try:
        with path.open("rb") as weights:
            for chunk in iter(lambda: weights.read(1 << 20), b""):
                sha.update(chunk)
    except OSError as error:
        raise EncoderError(f"cannot read {path}: {error}") from error
    return sha.hexdigest()[:12]
