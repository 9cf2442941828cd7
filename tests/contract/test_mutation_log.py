"""The mutation log on every broker: a replica replays the log, applies live mutations, and resumes
from the offsets in its store after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from replication_harness import create_mutation_topic, mutation_settings, publish, replica_running, routes

from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation
from worker.embedding import EncoderPool
from worker.local.capabilities import BrokerService
from worker.replication import apply_routes, with_embeddings

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(any_broker: BrokerService) -> Settings:
    made = mutation_settings(any_broker.bootstrap)
    await create_mutation_topic(made)
    return made


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
