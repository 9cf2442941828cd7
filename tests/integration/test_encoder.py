"""The encoder pool with the real exported model (prepared by the model export, see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest
from fastembed import TextEmbedding

from worker.config import Settings
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec, resolve_model
from worker.routing import Route, Router, RouteTable, RouteVectors, ScoringConfig
from worker.routing.types import l2_normalise

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


TEXTS = [
    "I lost my card, can you block it?",
    "a",
    "what is the exchange rate for euros",
    "send 💸 to my sister 👍",
    "why was my transfer declined " * 60,  # truncated to 256 tokens: a run of its own
    "?!",
    "Crème brûlée à la carte, s'il vous plaît",
]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_length_ordered_runs_give_fastembeds_own_vectors(variant: Literal["fp32", "int8"]) -> None:
    # the pool runs the ONNX graph on token ids in length order; fastembed embeds the same texts
    # in arrival order: the bits must agree
    spec = _spec(variant)
    assert spec.path is not None
    fastembed = TextEmbedding(model_name=spec.name, specific_model_path=str(spec.path), threads=1)
    want = l2_normalise(np.stack(list(fastembed.embed(TEXTS, batch_size=len(TEXTS)))))
    with EncoderPool(spec, run_tokens=64) as pool:
        got = pool.embed_sync(TEXTS)
        assert pool.stats.runs > 2  # the texts really went in several runs
    assert np.array_equal(got, want)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_text_gets_the_same_bits_alone_and_in_any_batch(variant: Literal["fp32", "int8"]) -> None:
    text = TEXTS[0]
    with EncoderPool(_spec(variant)) as pool:
        alone = pool.embed_sync([text])[0]
        for batch in ([text, "hi"], ["hi", TEXTS[4], text], [*TEXTS[1:4], text, *TEXTS[4:]]):
            assert np.array_equal(pool.embed_sync(batch)[batch.index(text)], alone)
        assert pool.fingerprint == _spec(variant).fingerprint


@pytest.mark.parametrize("variant", ["fp32", "int8"])
async def test_sessions_sharing_a_call_give_one_sessions_bits(variant: Literal["fp32", "int8"]) -> None:
    # an async call is cut into runs on both sessions at once; each text's vector is the one a
    # single session gives it
    texts = [*TEXTS, *(f"{t} again" for t in TEXTS), *(f"question {i}" for i in range(20))]
    with EncoderPool(_spec(variant)) as one, EncoderPool(_spec(variant), pool_size=2) as two:
        runs = two.stats.runs
        assert np.array_equal(await two.embed(texts), one.embed_sync(texts))
        assert two.stats.runs - runs >= 2


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
