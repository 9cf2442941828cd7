"""Where a replica's route vectors come from: shipped (same model only), kept, or embedded."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from worker.contracts import RouteDefinition
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.errors import ContractError, ErrorCode
from worker.replication import ReplicaStats, with_embeddings
from worker.replication.fold import FoldedMutations
from worker.replication.resolve import resolve_changes
from worker.replication.vectors import attach_embeddings, embed_routes, route_of, shipped_vectors, unit_faults
from worker.routing import RouteVectors, l2_normalise


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    with hashing_pool(32) as made:
        yield made


def definition(name: str, *utterances: str, negatives: tuple[str, ...] = ()) -> RouteDefinition:
    return RouteDefinition(name=name, utterances=list(utterances), negative_utterances=list(negatives))


async def test_shipped_vectors_equal_what_a_replica_would_embed(pool: EncoderPool) -> None:
    route = definition("billing", "pay my bill", "invoice please", negatives=("pay a friend",))
    (shipped,) = await with_embeddings(pool, [route])
    assert shipped.embeddings is not None
    assert shipped.embeddings.fingerprint == pool.fingerprint
    from_record = shipped_vectors(shipped, pool.fingerprint, pool.dim)
    (embedded,) = await embed_routes(pool, [route_of(route)])
    assert from_record is not None
    assert from_record.digest == embedded.digest
    assert from_record.negative_vectors.shape == (1, pool.dim)


async def test_vectors_of_another_model_are_not_used(pool: EncoderPool) -> None:
    (shipped,) = await with_embeddings(pool, [definition("a", "hello")])
    assert shipped_vectors(shipped, "another-model@fp32:0", pool.dim) is None
    assert shipped_vectors(definition("a", "hello"), pool.fingerprint, pool.dim) is None


def test_unusable_vectors_of_this_model_are_a_contract_error() -> None:
    route = definition("a", "x", "y")
    bad = np.array([[np.nan] * 4, [1, 0, 0, 0]], dtype=np.float32)
    rv = RouteVectors(route_of(route), bad, np.zeros((0, 4), np.float32), "m:1")
    with pytest.raises(ContractError, match="not finite unit vectors"):
        shipped_vectors(attach_embeddings(route, rv), "m:1", 4)
    with pytest.raises(ContractError, match="dimension 4"):
        shipped_vectors(attach_embeddings(route, rv), "m:1", 8)


@pytest.mark.parametrize(
    ("scale", "usable"),
    [(1.0, True), (np.sqrt(1.0019), True), (np.sqrt(0.9981), True), (np.sqrt(1.0021), False),
     (np.sqrt(0.9979), False), (np.inf, False), (0.0, False)],
)  # fmt: skip
def test_shipped_vectors_must_be_unit_length_within_the_tolerance(scale: float, usable: bool) -> None:
    route = definition("a", "x", "y")
    vectors = np.array([[1, 0, 0, 0], [0, scale, 0, 0]], dtype=np.float32)
    rv = RouteVectors(route_of(route), vectors, np.zeros((0, 4), np.float32), "m:1")
    if usable:
        assert shipped_vectors(attach_embeddings(route, rv), "m:1", 4) is not None
    else:
        with pytest.raises(ContractError, match="not finite unit vectors"):
            shipped_vectors(attach_embeddings(route, rv), "m:1", 4)


def test_resolving_uses_shipped_keeps_unchanged_texts_and_embeds_the_rest() -> None:
    dim = 4
    unit = l2_normalise(np.eye(2, dim))
    none = np.zeros((0, dim), np.float32)
    current = {"kept": RouteVectors(route_of(definition("kept", "a", "b")), unit, none, "m:1")}
    shipped_def = definition("shipped", "a", "b")
    folded = FoldedMutations()
    folded.changes = {
        "shipped": shipped_def,
        "kept": definition("kept", "a", "b").model_copy(update={"threshold": 0.9}),
        "new": definition("new", "c"),
        "foreign": attach_embeddings(
            definition("foreign", "d"),
            RouteVectors(route_of(definition("foreign", "d")), unit[:1], none, "other:2"),
        ),
        "gone": None,
    }
    folded.vectors = {"shipped": RouteVectors(route_of(shipped_def), unit, none, "m:1")}
    stats = ReplicaStats()
    resolved = resolve_changes(folded, current.get, "m:1", stats)
    assert [rv.name for rv in resolved.upserts] == ["shipped", "kept"]
    kept = resolved.upserts[1]
    assert kept.route.threshold == 0.9  # new definition, vectors kept
    assert np.array_equal(kept.utterance_vectors, unit)
    assert [r.name for r in resolved.to_embed] == ["new", "foreign"]
    assert resolved.deletes == ["gone"]
    assert (stats.shipped, stats.reused, stats.embedded, stats.re_embedded) == (1, 1, 1, 1)


@pytest.mark.parametrize("row", [0, 1, 2])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_row_anywhere_makes_shipped_vectors_unusable(row: int, value: float) -> None:
    route = definition("a", "x", "y", "z")
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[row, row] = value
    rv = RouteVectors.trusted(route_of(route), vectors, np.zeros((0, 4), np.float32), "m:1", "d")
    with pytest.raises(ContractError, match=r"embeddings\.utterances are not finite unit vectors"):
        shipped_vectors(attach_embeddings(route, rv), "m:1", 4)


def test_shipped_route_vectors_are_read_only_and_carry_their_digest() -> None:
    route = definition("a", "x", "y", negatives=("n",))
    unit = l2_normalise(np.eye(3, 4))
    made = RouteVectors(route_of(route), unit[:2], unit[2:], "m:1")
    shipped = shipped_vectors(attach_embeddings(route, made), "m:1", 4)
    assert shipped is not None
    assert shipped.digest == made.digest
    for matrix in (shipped.utterance_vectors, shipped.negative_vectors):
        assert not matrix.flags.writeable
        assert matrix.dtype == np.float32
        assert matrix.flags.c_contiguous
    assert np.array_equal(shipped.utterance_vectors, unit[:2])


def _trusted(name: str, utterances: np.ndarray, negatives: np.ndarray) -> RouteVectors:
    route = definition(
        name,
        *[f"u{i}" for i in range(len(utterances))],
        negatives=tuple(f"n{i}" for i in range(len(negatives))),
    )
    return RouteVectors.trusted(
        route_of(route), utterances.astype(np.float32), negatives.astype(np.float32), "m:1", "d"
    )


def test_unit_faults_name_each_route_whose_rows_are_not_finite_unit_vectors() -> None:
    unit = l2_normalise(np.random.default_rng(3).normal(size=(6, 4)))
    empty = np.zeros((0, 4))
    long_row = unit[:2].copy()
    long_row[1] *= 1.01
    nan_negative = unit[:1].copy()
    nan_negative[0, 0] = np.nan
    routes = [
        _trusted("ok", unit[:3], empty),
        _trusted("long", long_row, empty),
        _trusted("ok-negatives", unit[:1], unit[1:3]),
        _trusted("bad-negative", unit[:2], nan_negative),
        _trusted("both", unit[:1] * 2, nan_negative),
        _trusted("last", unit[:1], unit[:1] * 0.5),
    ]
    faults = unit_faults(routes)
    expected = [None, "utterances", None, "negative_utterances", "utterances", "negative_utterances"]
    for rv, fault, label in zip(routes, faults, expected, strict=True):
        if label is None:
            assert fault is None
        else:  # utterances before negatives, as one route at a time
            assert fault is not None
            assert fault.code is ErrorCode.EMBEDDING_SHAPE
            assert fault.reason == f"route {rv.name!r}: embeddings.{label} are not finite unit vectors"
    # the same verdicts as one route at a time
    for rv, fault in zip(routes, faults, strict=True):
        (alone,) = unit_faults([rv])
        assert (alone is None) == (fault is None)
    assert unit_faults([]) == []
    assert unit_faults([_trusted("no-negatives", unit[:2], empty)]) == [None]
