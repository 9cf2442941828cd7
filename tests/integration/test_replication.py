"""A route replica against the real broker: replay, live apply, restart, bad records, a recreated topic."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from replication_harness import (
    create_mutation_topic,
    folded_digest,
    mutation_settings,
    produce_raw,
    replica_running,
    wait_for,
)

from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation, encode
from worker.embedding import EncoderPool, ModelSpec
from worker.embedding.hashing import HashingSession, hashing_pool
from worker.local.broker import LocalBroker
from worker.replication import (
    MutationPublisher,
    RouteReplica,
    TopicMissing,
    apply_routes,
    attach_embeddings,
    read_routes,
    route_of,
    with_embeddings,
)
from worker.replication.vectors import embed_routes
from worker.routing import RouteVectors, l2_normalise

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    with hashing_pool(64) as made:
        yield made


@pytest.fixture
async def settings(broker: LocalBroker) -> Settings:
    made = mutation_settings(broker.bootstrap)
    await create_mutation_topic(made)
    return made


def routes(count: int, prefix: str = "route", extra: str = "") -> list[RouteDefinition]:
    return [
        RouteDefinition(
            name=f"{prefix}-{i}",
            utterances=[f"{prefix} {i} alpha {extra}", f"{prefix} {i} beta", f"question number {i}"],
            negative_utterances=[f"not {prefix} {i}"] if i % 3 == 0 else [],
            threshold=0.4 if i % 2 else None,
            metadata={"index": i},
        )
        for i in range(count)
    ]


async def publish(settings: Settings, mutations: list[RouteMutation]) -> dict[int, int]:
    async with MutationPublisher(settings) as publisher:
        return (await publisher.publish(mutations)).positions


async def test_replays_the_log_then_applies_live_mutations(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    _, receipt = await apply_routes(settings, routes(30), encoder=pool)
    async with replica_running(settings, pool, tmp_path / "a.db") as replica:
        assert replica.table.route_names() == sorted(f"route-{i}" for i in range(30))
        assert dict(replica.table.version) == receipt.positions
        assert (replica.stats.replayed_on_start, replica.stats.shipped, replica.stats.embedded) == (30, 30, 0)
        edited = routes(1, extra="edited")[0]
        (shipped,) = await with_embeddings(pool, [edited])
        added = RouteDefinition(name="added", utterances=["brand new route"])
        positions = await publish(
            settings,
            [
                RouteMutation("route-0", shipped),
                RouteMutation("route-1", None),
                RouteMutation("added", added),
            ],
        )
        await asyncio.wait_for(replica.wait_for_position(positions), 20)
        snapshot = replica.table.snapshot()
        live = snapshot.route("route-0")
        assert live is not None
        assert live.route.utterances[0].endswith("edited")
        assert snapshot.route("route-1") is None
        added_live = snapshot.route("added")
        assert added_live is not None
        assert replica.stats.embedded == 1  # "added" shipped no vectors: embedded by the replica
        assert replica.stats.replayed_on_start == 30  # live records are not replays
        assert len(replica.table) == 30


async def test_a_restart_resumes_from_stored_offsets(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    await apply_routes(settings, routes(20), encoder=pool)
    store = tmp_path / "replica.db"
    async with replica_running(settings, pool, store) as first:
        assert first.stats.replayed_on_start == 20
    more = await with_embeddings(pool, routes(5, prefix="later"))
    await publish(settings, [RouteMutation(r.name, r) for r in more] + [RouteMutation("route-3", None)])
    async with replica_running(settings, pool, store) as restarted:
        # only what was published while it was down is replayed
        assert restarted.stats.replayed_on_start == 6
        assert restarted.stats.records == 6
        digest = restarted.table.digest()
        assert len(restarted.table) == 24
    async with replica_running(settings, pool, tmp_path / "fresh.db") as fresh:
        assert fresh.stats.replayed_on_start == 26
        assert fresh.table.digest() == digest
    async with replica_running(settings, pool, store) as again:
        assert again.stats.replayed_on_start == 0
        assert again.table.digest() == digest


async def test_vectors_of_another_model_are_re_embedded_not_trusted(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    definition = RouteDefinition(name="foreign", utterances=["pay my bill", "send me an invoice"])
    foreign = l2_normalise(np.random.default_rng(3).normal(size=(2, pool.dim)))
    empty = np.zeros((0, pool.dim), np.float32)
    record = attach_embeddings(
        definition, RouteVectors(route_of(definition), foreign, empty, "other-model@fp32:0")
    )
    (matching,) = await with_embeddings(pool, [RouteDefinition(name="own", utterances=["hello there"])])
    await publish(settings, [RouteMutation("foreign", record), RouteMutation("own", matching)])
    async with replica_running(settings, pool, tmp_path / "r.db") as replica:
        live = replica.table.snapshot().route("foreign")
        assert live is not None
        assert live.fingerprint == pool.fingerprint
        (own_embedding,) = await embed_routes(pool, [route_of(definition)])
        assert np.array_equal(live.utterance_vectors, own_embedding.utterance_vectors)
        assert not np.allclose(live.utterance_vectors, foreign)
        assert (replica.stats.re_embedded, replica.stats.shipped) == (1, 1)


async def test_malformed_records_are_skipped_counted_and_the_route_keeps_its_definition(
    settings: Settings, pool: EncoderPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    valid = RouteDefinition(name="billing", utterances=["pay my bill"])
    garbage: list[tuple[bytes | None, bytes | None]] = [
        (b"billing", b"{not json"),
        (b"billing", b'{"name": "billing", "utterances": []}'),
        (b"billing", encode(RouteDefinition(name="other", utterances=["x"]))),  # key mismatch
        (None, encode(valid)),  # no key
        (b"billing", b"\xff\xfe\x00"),
    ]
    await produce_raw(settings, [(b"billing", encode(valid)), *garbage])
    later = RouteDefinition(name="weather", utterances=["will it rain"])
    await produce_raw(settings, [(b"weather", encode(later))])
    with caplog.at_level(logging.WARNING, logger="worker.replication.fold"):
        async with replica_running(settings, pool, tmp_path / "r.db") as replica:
            assert replica.stats.skipped_malformed == 5
            billing = replica.table.snapshot().route("billing")
            assert billing is not None
            assert billing.route.utterances == ("pay my bill",)
            assert replica.table.route_names() == ["billing", "weather"]
            # live: a bad record does not stop the tail, and the route keeps its definition
            await produce_raw(settings, [(b"billing", b"[]"), (b"weather", None)])
            await wait_for(
                lambda: replica.table.route_names() == ["billing"], what="tombstone after bad record"
            )
            assert replica.stats.skipped_malformed == 6
            billing = replica.table.snapshot().route("billing")
            assert billing is not None
            assert billing.route.utterances == ("pay my bill",)
    positions = [r.getMessage() for r in caplog.records if "skipped malformed mutation" in r.getMessage()]
    assert len(positions) == 6
    assert all(f"{settings.topic_mutations}[" in p and "offset" in p for p in positions)


async def test_a_store_ahead_of_its_topic_is_rebuilt_from_the_log(
    settings: Settings,
    broker: LocalBroker,
    pool: EncoderPool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await apply_routes(settings, routes(12), encoder=pool)
    store = tmp_path / "r.db"
    async with replica_running(settings, pool, store) as replica:
        assert len(replica.table) == 12
    # the topic is "recreated": same store, a topic whose log is shorter than the stored offsets
    recreated = mutation_settings(broker.bootstrap)
    await create_mutation_topic(recreated)
    await apply_routes(recreated, routes(2, prefix="new"), encoder=pool)
    with caplog.at_level(logging.WARNING, logger="worker.replication.replica"):
        async with replica_running(recreated, pool, store) as rebuilt:
            assert rebuilt.stats.rebuilt_from_log == 1
            assert rebuilt.table.route_names() == ["new-0", "new-1"]
            state = await read_routes(recreated)
            assert rebuilt.table.digest() == folded_digest(state.routes, pool.fingerprint, pool.dim)
    assert any("ahead of topic" in r.getMessage() for r in caplog.records)
    async with replica_running(recreated, pool, store) as restarted:
        assert restarted.stats.rebuilt_from_log == 0
        assert restarted.table.route_names() == ["new-0", "new-1"]


class GatedSession(HashingSession):
    """A hashing session whose embeddings wait for ``gate`` (signals ``entered`` first)."""

    def __init__(self, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__(64)
        self.gate, self.entered = gate, entered

    def embed(self, documents: Iterable[str], batch_size: int = 32) -> Iterator[npt.NDArray[np.float32]]:
        texts = list(documents)
        if texts != ["dimension probe"]:
            self.entered.set()
            self.gate.wait(timeout=30)
        return super().embed(texts, batch_size)


async def test_answers_use_the_previous_definition_until_the_new_vectors_exist(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    gated = await asyncio.to_thread(
        EncoderPool, ModelSpec("hashing-bow-64"), 1, 8, session_factory=lambda: GatedSession(gate, entered)
    )
    assert gated.fingerprint == pool.fingerprint
    try:
        await apply_routes(settings, routes(3), encoder=pool)
        async with replica_running(settings, gated, tmp_path / "r.db") as replica:
            before = replica.table.version
            gate.clear()
            edited = RouteDefinition(name="route-1", utterances=["completely different words"])
            positions = await publish(settings, [RouteMutation("route-1", edited)])
            await asyncio.to_thread(entered.wait, 10)
            old = replica.table.snapshot().route("route-1")
            assert old is not None
            assert old.route.utterances[0] == "route 1 alpha "  # still the previous definition
            assert replica.table.version == before
            gate.set()
            await asyncio.wait_for(replica.wait_for_position(positions), 20)
            new = replica.table.snapshot().route("route-1")
            assert new is not None
            assert new.route.utterances == ("completely different words",)
    finally:
        gate.set()
        gated.close()


async def test_a_missing_topic_is_a_fatal_error(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path
) -> None:
    replica = RouteReplica(mutation_settings(broker.bootstrap), pool, store_path=tmp_path / "r.db")
    with pytest.raises(TopicMissing, match="routeworker topics create"):
        await replica.run()
    assert not replica.ready.is_set()


async def test_applying_the_same_routes_twice_publishes_nothing(
    settings: Settings, pool: EncoderPool
) -> None:
    first_plan, first = await apply_routes(settings, routes(8))
    assert (len(first_plan.added), first.published) == (8, 8)
    plan, receipt = await apply_routes(settings, routes(8))
    assert plan.is_empty
    assert receipt.published == 0
    plan, receipt = await apply_routes(settings, routes(6), prune=True)
    assert ([c.name for c in plan.removed], receipt.published) == (["route-6", "route-7"], 2)
    state = await read_routes(settings)
    assert sorted(state.routes) == sorted(f"route-{i}" for i in range(6))
    assert state.records == 10
