"""Embedding step: normalise and de-duplicate a batch's texts, embed them, isolate failing texts.

A batch with a text the model cannot embed must not block the others: the batch is embedded again
text by text, and only texts that fail alone are rejected. When every text fails alone, a known
good text tells a poisonous batch from a broken model: a broken model raises (the worker stops
loudly instead of dead-lettering every query).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.cache import AsyncEncoder, normalise_text
from worker.routing import EncoderError
from worker.routing.types import Vectors

logger = logging.getLogger(__name__)

# What a model may raise for one input (onnxruntime's failures are RuntimeErrors); anything else
# is a bug and stops the worker.
EMBED_ERRORS = (EncoderError, RuntimeError, ValueError, TypeError)


@dataclass(frozen=True, slots=True)
class UniqueTexts:
    """Distinct normalised texts of a batch and, for each query, the index of its text."""

    texts: list[str]
    index: list[int]


def unique_texts(texts: Sequence[str]) -> UniqueTexts:
    """Normalise (see :func:`normalise_text`) and de-duplicate, keeping first-seen order."""
    position: dict[str, int] = {}
    index = [position.setdefault(normalise_text(text), len(position)) for text in texts]
    return UniqueTexts(list(position), index)


@dataclass(frozen=True, slots=True)
class Embedded:
    """Vectors of the unique texts; rows of ``failed`` texts are zero and must not be routed."""

    vectors: Vectors
    failed: dict[int, str]


async def embed_isolating(
    encoder: AsyncEncoder, texts: Sequence[str], *, model: AsyncEncoder | None = None
) -> Embedded:
    """Embed ``texts``; on failure retry one by one and report the texts that fail alone.

    ``model`` is the encoder without any cache in front, for the health probe (a cached probe
    text would always look fine).
    """
    if not texts:
        return Embedded(np.zeros((0, encoder.dim), dtype=np.float32), {})
    try:
        return Embedded(await encoder.embed(texts), {})
    except EMBED_ERRORS as error:
        logger.warning("embedding a batch of %d texts failed, isolating the bad ones: %s", len(texts), error)
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    failed: dict[int, str] = {}
    first_error: BaseException | None = None
    for i, text in enumerate(texts):
        try:
            vectors[i] = (await encoder.embed([text]))[0]
        except EMBED_ERRORS as error:
            failed[i] = f"embedding failed: {type(error).__name__}: {error}"
            first_error = first_error or error
    if first_error is not None and len(failed) == len(texts):
        await _probe(model or encoder, first_error)
    return Embedded(vectors, failed)


_PROBE_TEXT = "is the embedding model working"


async def _probe(encoder: AsyncEncoder, seen: BaseException) -> None:
    try:
        await encoder.embed([_PROBE_TEXT])
    except EMBED_ERRORS as error:
        raise EncoderError(f"the embedding model fails on any text: {error} (batch: {seen})") from error
