from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.routing import (
    DimensionMismatch,
    InvalidRoute,
    Route,
    RouteVectors,
    StoreError,
    l2_normalise,
    make_version,
)
from worker.routing.types import canonical_text

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


def test_a_stored_definition_reads_back_as_the_same_route() -> None:
    route = Route("billing", ("pay my bill", "invoice"), ("pay a friend",), 0.5, {"team": "payments"})
    stored = Route.stored(orjson.loads(route.canonical_json()))
    assert stored == route
    assert stored.canonical_json() == route.canonical_json()
    assert type(stored.utterances) is tuple
    assert Route.stored(orjson.loads(Route("x", ("a",)).canonical_json())).threshold is None


def _json_text(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, categories=None)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@given(_JSON_VALUES)
@example(1e-05)
@example(1e-07)
@example(1e22)
@example(float("nan"))
@example(2**64)
@example(-(2**63) - 1)
@example({"b": 1, "a": [1.5, "é", "\u2028"]})
@example({1: "int key", 2: True})
@example("lone \ud800 surrogate")
@example(["\x00\x1f\x7f", 0.1, -0.0])
def test_canonical_text_is_json_dumps_text(value: object) -> None:
    # the route digests of every replica and version depend on this text staying the same
    assert canonical_text(value) == _json_text(value)


def test_a_route_canonical_json_is_the_json_dumps_text() -> None:
    route = Route("billing", ("pay my bill",), ("pay a friend",), 1e-05, {"team": "é", "n": [1, 2.5]})
    assert route.canonical_json() == _json_text(route.definition())


_ROUTES = st.builds(
    Route,
    name=st.text(min_size=1, max_size=12),
    utterances=st.lists(st.text(max_size=12), max_size=4).map(tuple),
    negative_utterances=st.lists(st.text(max_size=12), max_size=3).map(tuple),
    threshold=st.none() | st.floats(-1, 1),
    metadata=st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=3),
)


@given(_ROUTES)
@example(Route("x", ("a",), threshold=float("nan")))  # text json.dumps writes and orjson cannot read
@example(Route("deep", ("a",), metadata={"m": json.loads("[" * 300 + "]" * 300)}))
def test_a_lazily_stored_route_is_the_eagerly_stored_route_on_every_field(route: Route) -> None:
    text = route.canonical_json()
    lazy = Route.stored_lazily(route.name, text)
    assert "_definition" in vars(lazy)  # nothing read yet
    for field in dataclasses.fields(Route):
        value = getattr(_eager(text), field.name)
        assert json.dumps(getattr(lazy, field.name)) == json.dumps(value)
        assert type(getattr(lazy, field.name)) is type(value)
    assert "_definition" not in vars(lazy)  # read once, then held like any route's fields
    eager = _eager(text)
    assert lazy.canonical_json() == eager.canonical_json()
    assert repr(Route.stored_lazily(route.name, text)) == repr(lazy) == repr(eager)
    if route.threshold == route.threshold:  # NaN is not equal to itself
        assert lazy == eager
        assert hash(lazy) == hash(eager)


def _eager(text: str) -> Route:
    try:
        return Route.stored(orjson.loads(text))
    except orjson.JSONDecodeError:
        return Route.stored(json.loads(text))


def test_a_lazily_stored_route_compares_pickles_and_replaces_like_any_route() -> None:
    route = Route("billing", ("pay my bill", "invoice"), ("pay a friend",), 0.5, {"team": "payments"})
    assert Route.stored_lazily("billing", route.canonical_json()) == route
    assert route == Route.stored_lazily("billing", route.canonical_json())
    assert pickle.loads(pickle.dumps(Route.stored_lazily("billing", route.canonical_json()))) == route
    lazy = Route.stored_lazily("billing", route.canonical_json())
    assert dataclasses.replace(lazy, threshold=None) == dataclasses.replace(route, threshold=None)
    # the class keeps its defaults, and a field without one is still no class attribute
    assert Route.negative_utterances == ()
    assert Route.threshold is None
    with pytest.raises(AttributeError):
        Route.utterances  # noqa: B018


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"name":"billing","utterances":["a"', "cannot be read"),
        ('{"metadata":{},"name":"billing","negative_utterances":[],"threshold":null}', "utterances"),
        ('{"metadata":{},"name":"billing","negative_utterances":[],"threshold":"hi","utterances":[]}', "hi"),
        ('{"metadata":{},"name":"other","negative_utterances":[],"threshold":null,"utterances":[]}', "other"),
    ],
)
def test_a_lazily_stored_route_that_cannot_be_read_says_which_when_asked(text: str, reason: str) -> None:
    route = Route.stored_lazily("billing", text)  # made without reading it
    assert route.name == "billing"
    with pytest.raises(StoreError, match=f"'billing'.*{reason}"):
        route.threshold  # noqa: B018
    with pytest.raises(StoreError):  # and again: it is not half read
        route.utterances  # noqa: B018
