"""The encoder pool with the real exported model (prepared by the model export, see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest

from worker.config import Settings
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec, resolve_model
from worker.routing import Route, Router, RouteTable, RouteVectors, ScoringConfig

pytestmark = pytest.mark.integration


def _spec(variant: Literal["fp32", "int8"]) -> ModelSpec:
    # The prepared export (`routeworker model prepare`); fails loudly when it is missing.
    return resolve_model(Settings(model_variant=variant))


@pytest.fixture(scope="module")
def fp32() -> Iterator[EncoderPool]:
    with EncoderPool(_spec("fp32"), pool_size=2, max_pending=8) as pool:
        yield pool


def test_vectors_are_normalised_and_deterministic(fp32: EncoderPool) -> None:
    texts = ["what's the weather like tomorrow", "cancel my credit card", "play some jazz"]
    first = fp32.embed_sync(texts)
    assert first.shape == (3, 384)
    assert fp32.dim == 384
    assert first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert np.array_equal(first, fp32.embed_sync(texts))
    assert fp32.fingerprint == _spec("fp32").fingerprint


def test_paraphrases_are_closer_than_unrelated_texts(fp32: EncoderPool) -> None:
    a, b, c = fp32.embed_sync(
        ["will it rain tomorrow", "is rain expected tomorrow", "transfer money to my savings"]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_long_texts_are_truncated_not_rejected(fp32: EncoderPool) -> None:
    (vector,) = fp32.embed_sync(["word " * 5000])
    assert np.isfinite(vector).all()


async def test_async_embed_matches_sync(fp32: EncoderPool) -> None:
    texts = [f"route number {i}" for i in range(40)]
    assert np.array_equal(await fp32.embed(texts), fp32.embed_sync(texts))


def test_int8_embeds_each_text_alone_so_batches_do_not_matter() -> None:
    with EncoderPool(_spec("int8")) as int8:
        together = int8.embed_sync(["turn on the lights", "book a table for two"])
        alone = int8.embed_sync(["book a table for two"])
        assert np.array_equal(together[1], alone[0])
        assert int8.fingerprint == _spec("int8").fingerprint


def test_real_model_routes_paraphrases(fp32: EncoderPool) -> None:
    routes = {
        "weather": ["what's the weather today", "will it rain tomorrow", "how hot is it outside"],
        "banking": ["transfer money to savings", "what's my account balance", "send money to a friend"],
        "music": ["play some jazz", "next song please", "turn the music up"],
    }
    table = RouteTable(fp32.dim, fp32.fingerprint)
    table.apply(
        [
            RouteVectors(
                Route(name, tuple(utterances)),
                fp32.embed_sync(utterances),
                np.zeros((0, fp32.dim), dtype=np.float32),
                fp32.fingerprint,
            )
            for name, utterances in routes.items()
        ],
        [],
        (),
    )
    router = Router(table, ScoringConfig(default_threshold=0.35))
    decisions = router.decide(
        fp32.embed_sync(
            [
                "is it going to be sunny",
                "move 50 dollars to savings",
                "put on a rock playlist",
                "what is the capital of peru",
            ]
        ),
        2,
    )
    assert [d.route for d in decisions] == ["weather", "banking", "music", None]
