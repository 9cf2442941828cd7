"""Fixtures of the routing-engine unit tests: a deterministic stand-in encoder and route factories."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from worker.routing import Route, RouteVectors, l2_normalise
from worker.routing.types import Vectors

DIM = 64
FINGERPRINT = "hashing-bow@test:0"


class HashingEncoder:
    """Bag of words hashed into signed buckets: texts sharing words get similar vectors."""

    dim = DIM
    fingerprint = FINGERPRINT

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        rows = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                rows[i, digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
        return l2_normalise(rows)


MakeRoute = Callable[..., RouteVectors]


@pytest.fixture
def encoder() -> HashingEncoder:
    return HashingEncoder()


@pytest.fixture
def make_route(encoder: HashingEncoder) -> MakeRoute:
    """Build a route and embed its utterances with the stand-in encoder."""

    def make(
        name: str,
        utterances: Sequence[str],
        negatives: Sequence[str] = (),
        threshold: float | None = None,
    ) -> RouteVectors:
        route = Route(name, tuple(utterances), tuple(negatives), threshold, {"owner": "tests"})
        return RouteVectors(
            route,
            encoder.embed_sync(route.utterances).reshape(-1, DIM),
            encoder.embed_sync(route.negative_utterances).reshape(-1, DIM),
            FINGERPRINT,
        )

    return make


RandomRoute = Callable[..., RouteVectors]


def _random_route(name: str, rng: np.random.Generator, utterances: int = 3, dim: int = DIM) -> RouteVectors:
    route = Route(name, tuple(f"{name} utterance {i}" for i in range(utterances)))
    return RouteVectors(
        route,
        l2_normalise(rng.normal(size=(utterances, dim))),
        np.zeros((0, dim), dtype=np.float32),
        FINGERPRINT,
    )


@pytest.fixture
def random_route() -> RandomRoute:
    """Build a route with random unit vectors: ``random_route(name, rng, utterances=3)``."""
    return _random_route
