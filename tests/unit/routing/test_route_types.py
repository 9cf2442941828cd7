from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.routing import DimensionMismatch, InvalidRoute, Route, RouteVectors, l2_normalise, make_version

DIM = 64
FINGERPRINT = "hashing-bow@test:0"


def test_route_definition_round_trips() -> None:
    route = Route("billing", ("pay my bill",), ("pay a friend",), 0.6, {"team": "finance"})
    assert Route.from_definition(route.definition()) == route


def test_route_rejects_a_string_as_utterances() -> None:
    with pytest.raises(InvalidRoute):
        Route("billing", "pay my bill")  # type: ignore[arg-type]


def test_route_vectors_must_match_utterances() -> None:
    route = Route("billing", ("a", "b"))
    with pytest.raises(InvalidRoute):
        RouteVectors(
            route, np.zeros((3, DIM), dtype=np.float32), np.zeros((0, DIM), dtype=np.float32), FINGERPRINT
        )
    with pytest.raises(DimensionMismatch):
        RouteVectors(
            route, np.zeros((2, DIM), dtype=np.float32), np.zeros((0, DIM + 1), dtype=np.float32), FINGERPRINT
        )


def test_route_vectors_are_read_only_copies() -> None:
    source = np.ones((1, DIM), dtype=np.float32)
    rv = RouteVectors(Route("r", ("x",)), source, np.zeros((0, DIM), dtype=np.float32), FINGERPRINT)
    assert source.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        rv.utterance_vectors[0, 0] = 2.0


def test_digest_depends_on_definition_vectors_and_model(random_route: Callable[..., RouteVectors]) -> None:
    rng = np.random.default_rng(1)
    rv = random_route("r", rng)
    same = RouteVectors(rv.route, rv.utterance_vectors.copy(), rv.negative_vectors, FINGERPRINT)
    assert same.digest == rv.digest
    moved = rv.utterance_vectors.copy()
    moved[0, 0] += 1e-3
    assert RouteVectors(rv.route, moved, rv.negative_vectors, FINGERPRINT).digest != rv.digest
    assert RouteVectors(rv.route, rv.utterance_vectors, rv.negative_vectors, "other").digest != rv.digest
    relabelled = Route("r", rv.route.utterances, threshold=0.1)
    assert (
        RouteVectors(relabelled, rv.utterance_vectors, rv.negative_vectors, FINGERPRINT).digest != rv.digest
    )


@given(st.dictionaries(st.integers(0, 50), st.integers(0, 10**12), max_size=8))
def test_version_is_sorted_pairs(offsets: dict[int, int]) -> None:
    version = make_version(offsets)
    assert list(version) == sorted(offsets.items())


@given(st.lists(st.lists(st.floats(-100, 100), min_size=4, max_size=4), min_size=1, max_size=5))
@example([[0.0, 0.0, 0.0, 3.5e-161]])  # its square underflows to a subnormal even in float64
def test_l2_normalise_gives_unit_or_zero_rows(rows: list[list[float]]) -> None:
    norms = np.linalg.norm(l2_normalise(rows), axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))
