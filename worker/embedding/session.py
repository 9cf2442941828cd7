"""Embedding sessions: the prepared export run on token ids, or a fastembed ``TextEmbedding``.

A local export (what ``routeworker model prepare`` writes) is run by :class:`OnnxSession`: the pool
tokenises a batch once, orders its texts by token count and runs the ONNX graph on the ids of each
run (see :mod:`worker.embedding.batching`). fastembed's ``embed`` takes strings and tokenises them
itself, so length-aware runs through it would tokenise every text twice; its tokenizer settings
(truncation, padding) and its pooling are used here unchanged, so a text gets the very bits fastembed
would give it. Models fetched from a hub by name stay with fastembed (:func:`fastembed_session`),
embedded in arrival order.

One intra-op thread per session: replicas scale by sessions (and processes), and a session that
grabs every core would starve the event loop and the Faiss searches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from worker.embedding.model import ModelSpec
from worker.embedding.tokens import load_tokenizer
from worker.routing import EncoderError

TokenIds = npt.NDArray[np.int64]


class TextSession(Protocol):
    """A session that takes texts (a fastembed ``TextEmbedding``, the hashing stand-in)."""

    def embed(self, documents: Iterable[str], batch_size: int = ...) -> Iterable[Any]:
        """Yield one vector per document."""
        ...


@runtime_checkable
class TokenSession(Protocol):
    """A session the pool tokenises for once, then runs on token ids in runs of its choosing."""

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids of each text, truncated as the model requires, unpadded."""
        ...

    def embed_tokens(self, rows: Sequence[TokenIds]) -> npt.NDArray[np.float32]:
        """One L2-normalised vector per row (rows are padded to the longest of the call)."""
        ...


EmbeddingSession = TextSession | TokenSession


class OnnxSession:
    """The local export's ONNX graph and tokenizer, pooled as fastembed pools this model."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort  # imported lazily: loading onnxruntime takes a while

        tokenizer = load_tokenizer(model_dir)
        self._pad_id = int((tokenizer.padding or {}).get("pad_id", 0))
        tokenizer.no_padding()  # each text keeps its own length; runs are padded here
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        # what fastembed sets: every graph optimisation of ONNX Runtime (it fuses bias + GELU and
        # the scaled Q·K product), one thread
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(list(texts))]

    def embed_tokens(self, rows: Sequence[TokenIds]) -> npt.NDArray[np.float32]:
        from fastembed.common.utils import mean_pooling, normalize

        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        # fastembed's own post-processing of this model: mean over the mask in float64, L2, float32
        pooled: npt.NDArray[np.float32] = normalize(mean_pooling(hidden, mask)).astype(hidden.dtype)
        return pooled


def load_session(model: ModelSpec, cache_dir: Path | None) -> EmbeddingSession:
    """An :class:`OnnxSession` for a local export, else a fastembed session fetching ``model.name``."""
    if model.path is None:
        return fastembed_session(model, cache_dir)
    try:
        return OnnxSession(model.path)
    except (OSError, ValueError, RuntimeError) as error:
        raise EncoderError(
            f"cannot load embedding model {model.name!r} from {model.path}: {error}"
        ) from error


def fastembed_session(model: ModelSpec, cache_dir: Path | None) -> TextSession:
    """Load one single-threaded fastembed session (from ``model.path`` when it has one)."""
    from fastembed import TextEmbedding  # imported lazily: loading onnxruntime takes a while

    options: dict[str, Any] = {"threads": 1}
    if model.path is not None:
        options["specific_model_path"] = str(model.path)
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    try:
        session: TextSession = TextEmbedding(model_name=model.name, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise EncoderError(
            f"cannot load embedding model {model.name!r} from {model.path}: {error}"
        ) from error
    return session
