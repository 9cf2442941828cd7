"""Embedding step: normalised, de-duplicated texts; a text that cannot be embedded is isolated."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_fakes import HashingEncoder

from worker.pipeline.embed import embed_isolating, unique_texts
from worker.routing import EncoderError


def test_texts_differing_only_in_white_space_share_one_embedding() -> None:
    unique = unique_texts(["  hello   world ", "hello world", "bye", "hello\tworld"])
    assert unique.texts == ["hello world", "bye"]
    assert unique.index == [0, 0, 1, 0]


async def test_one_bad_text_does_not_fail_the_others(encoder: HashingEncoder) -> None:
    encoder.fail_on = lambda text: "poison" in text
    texts = ["play music", "poison pill", "check balance"]
    embedded = await embed_isolating(encoder, texts)
    assert list(embedded.failed) == [1]
    assert "poison" in embedded.failed[1]
    assert np.allclose(embedded.vectors[0], encoder.embed_sync(["play music"])[0])
    assert not embedded.vectors[1].any()


async def test_a_lone_bad_text_is_isolated_when_the_model_still_works(encoder: HashingEncoder) -> None:
    encoder.fail_on = lambda text: text == "poison"
    embedded = await embed_isolating(encoder, ["poison"])
    assert list(embedded.failed) == [0]


async def test_a_broken_model_raises_instead_of_rejecting_every_query(encoder: HashingEncoder) -> None:
    encoder.fail_on = lambda text: True
    with pytest.raises(EncoderError, match="fails on any text"):
        await embed_isolating(encoder, ["a", "b"])
