"""One embedding session: what the pool needs of a fastembed ``TextEmbedding``, and how one is loaded."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from worker.embedding.model import ModelSpec
from worker.routing import EncoderError


class EmbeddingSession(Protocol):
    """What the pool needs from a fastembed ``TextEmbedding``."""

    def embed(self, documents: Iterable[str], batch_size: int = ...) -> Iterable[Any]:
        """Yield one vector per document."""
        ...


def fastembed_session(model: ModelSpec, cache_dir: Path | None) -> EmbeddingSession:
    """Load one single-threaded fastembed session (from ``model.path`` when it has one).

    One intra-op thread: replicas scale by sessions (and processes), and a session that grabs
    every core would starve the event loop and the Faiss searches.
    """
    from fastembed import TextEmbedding  # imported lazily: loading onnxruntime takes a while

    options: dict[str, Any] = {"threads": 1}
    if model.path is not None:
        options["specific_model_path"] = str(model.path)
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    try:
        session: EmbeddingSession = TextEmbedding(model_name=model.name, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise EncoderError(
            f"cannot load embedding model {model.name!r} from {model.path}: {error}"
        ) from error
    return session
