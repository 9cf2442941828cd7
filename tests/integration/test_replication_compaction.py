"""Replicas against what Apache Kafka removes from the mutation log: compacted tombstones and deleted
records. A replica must never resume past records it did not read (issue 13, item 1)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from replication_harness import (
    FAST_CLEANING,
    RecordedEvents,
    clean_until_gone,
    create_mutation_topic,
    folded_digest,
    mutation_settings,
    replica_running,
)

import worker.replication.replica as replica_module
from worker.contracts import RouteDefinition, RouteMutation
from worker.embedding import EncoderPool
from worker.local.kafka import LocalKafka
from worker.replication import (
    MutationPublisher,
    ReplayReason,
    ResumeVerdict,
    apply_routes,
    read_routes,
    with_embeddings,
)
from worker.replication.replica import index_dir_for

pytestmark = pytest.mark.integration


def routes(count: int) -> list[RouteDefinition]:
    return [
        RouteDefinition(name=f"route-{i}", utterances=[f"route {i} alpha", f"question number {i}"])
        for i in range(count)
    ]


def copy_store(store: Path, to: Path) -> Path:
    shutil.copy(store, to)
    if index_dir_for(store).exists():
        shutil.copytree(index_dir_for(store), index_dir_for(to))
    return to


async def test_a_replica_offline_while_a_tombstone_is_compacted_away_replays_the_whole_log(
    kafka_broker: LocalKafka,
    pool: EncoderPool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = mutation_settings(kafka_broker.bootstrap, resume_margin_s=0)
    await create_mutation_topic(settings, 1, FAST_CLEANING)
    await apply_routes(settings, routes(5), encoder=pool)
    store = tmp_path / "offline.db"
    async with replica_running(settings, pool, store) as replica:
        assert "route-2" in replica.table.route_names()
    # while the replica is offline: route-2 is deleted, route-1 edited, and the cleaner drops
    # route-2's tombstone (and its definition), so the log no longer says route-2 ever existed
    (edited,) = await with_embeddings(pool, [RouteDefinition(name="route-1", utterances=["edited"])])
    async with MutationPublisher(settings) as publisher:
        await publisher.publish([RouteMutation("route-2", None), RouteMutation("route-1", edited)])
    await clean_until_gone(settings, b"route-2")
    naive = copy_store(store, tmp_path / "naive.db")

    events = RecordedEvents()
    with caplog.at_level(logging.WARNING, logger="worker.replication.replica"):
        async with replica_running(settings, pool, store, events=events) as restarted:
            names = restarted.table.route_names()
            digest = restarted.table.digest()
            edited_live = restarted.table.snapshot().route("route-1")
    assert "route-2" not in names
    assert edited_live is not None
    assert edited_live.route.utterances == ("edited",)
    assert [reason for reason, _ in events.replays] == [ReplayReason.TOMBSTONE_HORIZON]
    assert [reason for reason, _ in events.replays_done] == [ReplayReason.TOMBSTONE_HORIZON]
    assert any("tombstone_horizon" in r.getMessage() for r in caplog.records)
    state = await read_routes(settings)
    async with replica_running(settings, pool, tmp_path / "fresh.db") as fresh:
        assert fresh.table.digest() == digest
    assert "route-2" not in state.routes

    # control: the same store resumed without the check keeps the deleted route for ever
    monkeypatch.setattr(replica_module, "judge_resume", lambda *_a, **_k: ResumeVerdict(None, "test"))
    async with replica_running(settings, pool, naive) as resumed:
        assert "route-2" in resumed.table.route_names()
        assert resumed.table.digest() != digest


async def test_a_replica_back_within_the_tombstone_retention_resumes(
    kafka_broker: LocalKafka, pool: EncoderPool, tmp_path: Path
) -> None:
    settings = mutation_settings(kafka_broker.bootstrap)
    await create_mutation_topic(settings, 2, {"delete.retention.ms": str(3_600_000)})
    await apply_routes(settings, routes(6), encoder=pool)
    store = tmp_path / "r.db"
    async with replica_running(settings, pool, store):
        pass
    async with MutationPublisher(settings) as publisher:
        await publisher.publish([RouteMutation("route-4", None)])
    events = RecordedEvents()
    async with replica_running(settings, pool, store, events=events) as restarted:
        assert restarted.stats.replayed_on_start == 1  # only the tombstone
        assert "route-4" not in restarted.table.route_names()
    assert events.replays == []


async def test_a_stored_offset_below_the_log_start_replays_the_whole_log(
    kafka_broker: LocalKafka, pool: EncoderPool, tmp_path: Path
) -> None:
    # DeleteRecords (and time or size retention) move the log start; Kafka allows them only on a
    # topic that also deletes ("compact,delete"), the misconfiguration this guards against
    settings = mutation_settings(kafka_broker.bootstrap)
    await create_mutation_topic(settings, 1, {"cleanup.policy": "compact,delete", "retention.ms": "-1"})
    await apply_routes(settings, routes(5), encoder=pool)  # routes at offsets 0-4, their calibration at 5
    store = tmp_path / "r.db"
    async with replica_running(settings, pool, store) as replica:
        assert len(replica.table) == 5
    later = await with_embeddings(
        pool, [RouteDefinition(name=n, utterances=[f"{n} words"]) for n in ("late-a", "late-b")]
    )
    async with MutationPublisher(settings) as publisher:
        receipt = await publisher.publish([RouteMutation(d.name, d) for d in later])
    tp = TopicPartition(settings.topic_mutations, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        # the log is late-b alone (its last record)
        await admin.delete_records({tp: RecordsToDelete(receipt.positions[0] - 1)})
    finally:
        await admin.close()
    events = RecordedEvents()
    async with replica_running(settings, pool, store, events=events) as restarted:
        assert restarted.table.route_names() == ["late-b"]
        digest = restarted.table.digest()
    assert [reason for reason, _ in events.replays] == [ReplayReason.BELOW_LOG_START]
    state = await read_routes(settings)
    assert digest == folded_digest(state.routes, pool.fingerprint, pool.dim)
