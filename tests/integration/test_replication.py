"""A route replica against the real broker: replay, live apply, restart, bad records, a recreated topic."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiokafka.errors import OffsetOutOfRangeError
from replication_harness import (
    RecordedEvents,
    create_mutation_topic,
    folded_digest,
    mutation_settings,
    produce_raw,
    publish,
    replay_in_batches_of,
    replica_running,
    routes,
    wait_for,
)

import worker.replication.replica as replica_module
import worker.routing.table as table_module
from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation, encode
from worker.embedding import EncoderPool, ModelSpec
from worker.embedding.hashing import HashingSession
from worker.local.broker import LocalBroker
from worker.replication import (
    ReplayReason,
    RouteReplica,
    TopicMissing,
    apply_routes,
    attach_embeddings,
    read_routes,
    route_of,
    with_embeddings,
)
from worker.replication.fold import FoldedMutations, LogRecord
from worker.replication.log import MutationLog
from worker.replication.vectors import embed_routes
from worker.routing import EncoderError, Router, RouteStore, RouteVectors, l2_normalise

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(broker: LocalBroker) -> Settings:
    made = mutation_settings(broker.bootstrap)
    await create_mutation_topic(made)
    return made


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


async def test_malformed_records_are_skipped_counted_and_their_route_is_absent(
    settings: Settings, pool: EncoderPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    valid = RouteDefinition(name="billing", utterances=["pay my bill"])
    garbage: list[tuple[bytes | None, bytes | None]] = [
        (b"billing", b"{not json"),
        (b"billing", b'{"name": "billing", "utterances": []}'),
        (b"billing", encode(RouteDefinition(name="other", utterances=["x"]))),  # key mismatch
        (None, encode(valid)),  # no key: names no route
        (b"billing", b"\xff\xfe\x00"),
    ]
    await produce_raw(settings, [(b"billing", encode(valid)), *garbage])
    later = RouteDefinition(name="weather", utterances=["will it rain"])
    await produce_raw(settings, [(b"weather", encode(later))])
    events = RecordedEvents()
    with caplog.at_level(logging.WARNING, logger="worker.replication.fold"):
        async with replica_running(settings, pool, tmp_path / "r.db", events=events) as replica:
            assert replica.stats.skipped_malformed == 5
            # billing's last record is unusable: absent, as on a replica that only ever saw that one
            assert replica.table.route_names() == ["weather"]
            # live: a bad record does not stop the tail; a usable one brings the route back
            await produce_raw(settings, [(b"billing", encode(valid))])
            await wait_for(lambda: replica.table.route_names() == ["billing", "weather"], what="billing back")
            await produce_raw(settings, [(b"billing", b"[]"), (b"weather", None)])
            await wait_for(lambda: replica.table.route_names() == [], what="bad record, then tombstone")
            assert replica.stats.skipped_malformed == 6
            digest = replica.table.digest()
        async with replica_running(settings, pool, tmp_path / "fresh.db") as fresh:
            assert fresh.table.digest() == digest
    positions = [r.getMessage() for r in caplog.records if "skipped mutation" in r.getMessage()]
    assert len(positions) == 12  # six records, each skipped by both replicas
    assert all(f"{settings.topic_mutations}[" in p and "offset" in p for p in positions)
    assert sorted({code for code, _, _ in events.skipped}) == [
        "invalid_json", "invalid_utf8", "key_mismatch", "missing_key", "not_object", "schema"
    ]  # fmt: skip


class PoisonSession(HashingSession):
    """A hashing session that fails on any text with "poison" in it, and on everything once broken."""

    broken = False

    def embed(self, documents: Iterable[str], batch_size: int = 32) -> Iterator[npt.NDArray[np.float32]]:
        texts = list(documents)
        if PoisonSession.broken and texts != ["dimension probe"]:
            raise RuntimeError("the model session is gone")
        if any("poison" in text for text in texts):
            raise ValueError("the tokenizer chokes on this text")
        return super().embed(texts, batch_size)


async def test_a_route_the_model_cannot_embed_is_skipped_the_same_way_on_every_replica(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = await asyncio.to_thread(
        EncoderPool, ModelSpec("hashing-bow-64"), 1, 8, session_factory=lambda: PoisonSession(64)
    )
    try:
        await apply_routes(settings, routes(3))  # no vectors shipped: each replica embeds
        events = RecordedEvents()
        async with replica_running(settings, poisoned, tmp_path / "live.db", events=events) as live:
            assert len(live.table) == 3
            edited = RouteDefinition(name="route-1", utterances=["a poison pill", "fine words"])
            positions = await publish(settings, [RouteMutation("route-1", edited)])
            await publish(
                settings, [RouteMutation("after", RouteDefinition(name="after", utterances=["ok"]))]
            )
            await wait_for(lambda: "after" in live.table.route_names(), what="the mutation after the poison")
            assert live.table.route_names() == ["after", "route-0", "route-2"]  # route-1 skipped, absent
            assert live.stats.skipped_malformed == 1
            ((code, partition, offset),) = events.skipped
            assert code == "embedding_failed"
            assert positions == {partition: offset + 1}
            digest = live.table.digest()
        async with replica_running(settings, poisoned, tmp_path / "replayed.db") as replayed:
            assert replayed.table.digest() == digest
        # restarted on its store: no crash loop, the same table
        async with replica_running(settings, poisoned, tmp_path / "live.db") as restarted:
            assert restarted.table.digest() == digest
        assert any(
            "skipped mutation" in r.getMessage() and f"offset {offset}" in r.getMessage()
            for r in caplog.records
        )
        # an encoder that fails on everything is the replica's fault: it stops, loudly, skipping nothing
        PoisonSession.broken = True
        await publish(settings, [RouteMutation("late", RouteDefinition(name="late", utterances=["late"]))])
        replica = RouteReplica(settings, poisoned, store_path=tmp_path / "broken.db")
        with pytest.raises(EncoderError, match="probe text too"):
            await asyncio.wait_for(replica.run(), 30)
        assert not replica.ready.is_set()
    finally:
        PoisonSession.broken = False
        poisoned.close()


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
    assert any("ahead_of_log" in r.getMessage() for r in caplog.records)
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


class FakeClock:
    """Wall-clock seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_replica_away_past_the_tombstone_horizon_replays_all_while_its_table_serves(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    gated = await asyncio.to_thread(
        EncoderPool, ModelSpec("hashing-bow-64"), 1, 8, session_factory=lambda: GatedSession(gate, entered)
    )
    clock, events = FakeClock(), RecordedEvents()
    try:
        await apply_routes(settings, routes(4), encoder=pool)
        async with replica_running(settings, gated, tmp_path / "r.db", events=events, clock=clock) as replica:
            serving = replica.table.snapshot()
            gate.clear()
            clock.now += 8 * 86_400  # frozen for 8 days: past the topic's delete.retention.ms (7 days)
            slow = RouteDefinition(name="slow", utterances=["this one needs embedding"])
            await produce_raw(settings, [(b"slow", encode(slow))])
            await asyncio.to_thread(entered.wait, 10)  # the replay reached the route it must embed
            assert [reason for reason, _ in events.replays] == [ReplayReason.TOMBSTONE_HORIZON]
            assert replica.table.snapshot() is serving  # queries still see the table as it was
            gate.set()
            await wait_for(lambda: bool(events.replays_done), what="the full replay to finish")
            assert replica.table.route_names() == sorted([*(f"route-{i}" for i in range(4)), "slow"])
            digest = replica.table.digest()
        async with replica_running(settings, pool, tmp_path / "fresh.db") as fresh:
            assert fresh.table.digest() == digest
    finally:
        gate.set()
        gated.close()


async def test_a_position_below_the_log_start_while_tailing_replays_all(
    settings: Settings, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await apply_routes(settings, routes(6), encoder=pool)
    tailing = threading.Event()
    original = MutationLog.next_batch

    async def out_of_range_once(log: MutationLog) -> list[LogRecord]:
        if tailing.is_set():
            tailing.clear()
            raise OffsetOutOfRangeError({log.partitions[0]: 0})
        return await original(log)

    monkeypatch.setattr(MutationLog, "next_batch", out_of_range_once)
    events = RecordedEvents()
    async with replica_running(settings, pool, tmp_path / "r.db", events=events) as replica:
        tailing.set()
        await wait_for(lambda: bool(events.replays_done), what="the full replay to finish")
        assert [reason for reason, _ in events.replays] == [ReplayReason.BELOW_LOG_START]
        assert replica.stats.rebuilt_from_log == 1
        assert len(replica.table) == 6
        await apply_routes(settings, routes(7), encoder=pool)  # and it goes on tailing
        await wait_for(lambda: len(replica.table) == 7, what="a live mutation after the replay")


async def test_a_full_overlay_holds_mutations_back_until_a_failing_rebuild_succeeds(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = threading.Event()
    failing.set()
    real_build = table_module.build_laid_out

    def build(*args: Any, **kwargs: Any) -> Any:
        if failing.is_set():
            raise OSError(28, "No space left on device")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(table_module, "build_laid_out", build)
    settings = mutation_settings(broker.bootstrap, overlay_max_rows=9)
    await create_mutation_topic(settings)
    await apply_routes(settings, routes(3), encoder=pool)  # 9 utterances: the overlay is full
    events = RecordedEvents()
    async with replica_running(settings, pool, tmp_path / "r.db", events=events) as replica:
        before = replica.table.version
        (edited,) = await with_embeddings(pool, [RouteDefinition(name="route-1", utterances=["edited"])])
        positions = await publish(settings, [RouteMutation("route-1", edited)])
        await wait_for(lambda: any(e is not None for e in events.rebuilds), what="a failed rebuild")
        assert isinstance(events.rebuilds[0], OSError)
        assert replica.table.version == before  # the mutation waits ...
        vectors = await pool.embed(["route 1 beta"])
        decision = Router(replica.table).decide(vectors, 1)[0]  # ... queries are answered meanwhile
        assert decision.route == "route-1"
        failing.clear()  # the retry succeeds: room in the overlay, the mutation goes in
        await asyncio.wait_for(replica.wait_for_position(positions), 20)
        assert events.rebuilds[-1] is None
        assert replica.stats.apply_waits == 1
        assert len(events.waits) == 1
        live = replica.table.snapshot().route("route-1")
        assert live is not None
        assert live.route.utterances == ("edited",)


async def test_a_fresh_replica_serves_its_replayed_routes_from_a_main_index_not_the_overlay(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path
) -> None:
    settings = mutation_settings(broker.bootstrap, overlay_max_rows=8)
    await create_mutation_topic(settings)
    await apply_routes(settings, routes(6), encoder=pool)  # 18 vectors: more than the overlay holds
    async with replica_running(settings, pool, tmp_path / "r.db") as replica:
        snapshot = replica.table.snapshot()
        assert snapshot.overlay.rows == 0
        assert snapshot.main.rows == 18
        assert len(replica.table) == 6
        vectors = await pool.embed(["route 4 beta"])
        assert Router(replica.table).decide(vectors, 1)[0].route == "route-4"
        digest = replica.table.digest()
    async with replica_running(settings, pool, tmp_path / "r.db") as restarted:  # the index was persisted
        assert restarted.table.snapshot().overlay.rows == 0
        assert restarted.table.digest() == digest


async def thirty_routes_and_a_delete(
    broker: LocalBroker, pool: EncoderPool, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A log of 30 routes and a delete among them, replayed in batches of four: many batches, held
    until ready, then stored one by one."""
    settings = mutation_settings(broker.bootstrap, overlay_max_rows=8)
    await create_mutation_topic(settings)
    replay_in_batches_of(4, monkeypatch)
    await apply_routes(settings, routes(30), encoder=pool)
    await publish(settings, [RouteMutation(name="route-3", definition=None)])
    return settings


async def test_a_fresh_replica_stores_its_replay_after_ready_and_a_crash_before_it_is_done_loses_nothing(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await thirty_routes_and_a_delete(broker, pool, monkeypatch)
    async with replica_running(settings, pool, tmp_path / "reference.db") as reference:
        assert reference.stats.batches > 3
        expected = reference.table.digest()  # stored during its replay (too small a log to hold)
    monkeypatch.setattr(replica_module, "_DEFER_STORE_FROM_RECORDS", 1)
    real_apply, calls = RouteStore.apply, []

    def crash_on_the_third(self: RouteStore, *args: Any, **kwargs: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 3:
            raise RuntimeError("killed while the store caught up")
        real_apply(self, *args, **kwargs)

    monkeypatch.setattr(RouteStore, "apply", crash_on_the_third)
    store_path = tmp_path / "r.db"
    replica = RouteReplica(settings, pool, store_path=store_path)
    task = asyncio.create_task(replica.run())
    with pytest.raises(RuntimeError, match="killed while the store caught up"):
        await asyncio.wait_for(task, timeout=30)
    assert replica.ready.is_set()  # it served the whole table while its store lagged
    assert replica.table.digest() == expected
    assert len(calls) == 3  # nothing was stored during the replay
    store = RouteStore(store_path)
    state = store.load()
    assert store.caught_up_at_ms() is None  # never marked caught up: the store lagged the table
    assert 0 < len(state.routes) < 30
    # the store is the log up to its offsets, no more: rows never run ahead of them
    async with MutationLog.opened(settings) as log:
        await log.seek({})
        partial = FoldedMutations()
        async for records in log.up_to_end():
            for record in records:
                if record.offset < dict(state.version).get(record.partition, 0):
                    partial.add(record, settings.limits)
    alive = {name for name, definition in partial.changes.items() if definition is not None}
    assert {rv.name for rv in state.routes} == alive
    monkeypatch.setattr(RouteStore, "apply", real_apply)
    stale_spill = tmp_path / "r.db.index" / "replay-0123456789abcdef.f32"  # as a crash in a replay leaves
    stale_spill.write_bytes(b"\0" * 4096)
    # never marked caught up, its offsets are not trusted against compaction: like a replica that
    # crashed during its replay, it replays the whole log (its table serving meanwhile)
    async with replica_running(settings, pool, store_path) as restarted:
        assert restarted.stats.rebuilt_from_log == 1
        assert restarted.table.digest() == expected
        assert restarted.table.version == reference.table.version
    assert store.caught_up_at_ms() is not None
    assert RouteStore(store_path).load().version == reference.table.version
    assert not stale_spill.exists()
    async with replica_running(settings, pool, tmp_path / "held.db") as held:  # not interrupted
        assert held.table.digest() == expected
        assert held.stats.batches == reference.stats.batches
    held_store = RouteStore(tmp_path / "held.db")
    assert held_store.caught_up_at_ms() is not None
    assert {rv.name: rv.digest for rv in held_store.load().routes} == {
        rv.name: rv.digest for rv in RouteStore(tmp_path / "reference.db").load().routes
    }
    assert not list((tmp_path / "held.db.index").glob("replay-*"))  # the spill file is gone


async def test_a_replica_stopped_while_its_store_catches_up_finishes_the_writes_and_restarts_on_them(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await thirty_routes_and_a_delete(broker, pool, monkeypatch)
    async with replica_running(settings, pool, tmp_path / "reference.db") as reference:
        expected, version = reference.table.digest(), reference.table.version
    monkeypatch.setattr(replica_module, "_DEFER_STORE_FROM_RECORDS", 1)
    real_apply, calls = RouteStore.apply, []
    writing, release = threading.Event(), threading.Event()

    def held_at_the_second(self: RouteStore, *args: Any, **kwargs: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 2:  # after ready: the replay's first held batch is in, the rest wait
            writing.set()
            assert release.wait(30), "the test never let the store write go on"
        real_apply(self, *args, **kwargs)

    monkeypatch.setattr(RouteStore, "apply", held_at_the_second)
    store_path = tmp_path / "r.db"
    replica = RouteReplica(settings, pool, store_path=store_path)
    task = asyncio.create_task(replica.run())
    try:
        assert await asyncio.to_thread(writing.wait, 30)
        assert replica.ready.is_set()  # serving while its store catches up
        await replica.stop()  # asked to stop in the middle of the held writes
        release.set()
        await asyncio.wait_for(task, timeout=30)  # returns cleanly, after the writes
    finally:
        release.set()
        await replica.stop()
        await asyncio.gather(task, return_exceptions=True)
    assert len(calls) > 2  # the held batches after the stop request were written too
    store = RouteStore(store_path)
    assert store.caught_up_at_ms() is not None  # so the next start can trust its offsets
    assert store.load().version == version
    assert {rv.name: rv.digest for rv in store.load().routes} == {
        rv.name: rv.digest for rv in RouteStore(tmp_path / "reference.db").load().routes
    }
    monkeypatch.setattr(RouteStore, "apply", real_apply)
    async with replica_running(settings, pool, store_path) as restarted:  # from its store, no replay
        assert restarted.stats.rebuilt_from_log == 0
        assert restarted.stats.replayed_on_start == 0
        assert restarted.table.digest() == expected
    assert not list((tmp_path / "r.db.index").glob("replay-*"))  # the spill file is gone
