"""A fresh replay decoded in processes of their own, against the real broker: the same table,
index file, vectors file, store and counts as decoded in the replica, bad records included; a
decode process that fails stops the replica loudly, and none is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from replication_harness import (
    RecordedEvents,
    create_mutation_topic,
    mutation_settings,
    produce_raw,
    publish,
    replay_in_batches_of,
    replica_running,
    routes,
)

import worker.replication.replica as replica_module
from worker.config import Settings
from worker.contracts import RouteDefinition, RouteMutation, encode
from worker.embedding import EncoderPool
from worker.local.broker import LocalBroker
from worker.replication import RouteReplica, with_embeddings
from worker.replication import decoder as decoder_module
from worker.replication.decoder import ReplayDecodeFailed
from worker.routing import IndexSettings, RouteStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(broker: LocalBroker, pool: EncoderPool, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A log of shipped routes, and of every kind of record a replica decodes itself, in batches of five."""
    made = mutation_settings(broker.bootstrap, overlay_max_rows=8)
    await create_mutation_topic(made)
    shipped = await with_embeddings(pool, routes(40))
    with_negatives = RouteDefinition(
        name="negatives",
        utterances=["yes please"],
        negative_utterances=["no thanks"],
        threshold=0.25,
        metadata={"z": [1, 2.5], "a": {"b": None}},
    )
    negatives = await with_embeddings(pool, [with_negatives])
    await publish(made, [RouteMutation(d.name, d) for d in [*shipped, *negatives]])
    await publish(made, [RouteMutation(d.name, d) for d in routes(5, prefix="plain")])  # embedded here
    unknown = orjson.loads(encode(shipped[1].model_copy(update={"name": "colourful"})))
    unknown["colour"] = "blue"
    wide = orjson.loads(encode(shipped[2]))
    wide["embeddings"]["dim"] = 32
    await produce_raw(made, [
        (b"colourful", orjson.dumps(unknown)),  # a field this version does not know
        (b"route-2", orjson.dumps(wide)),  # vectors of this model, another dimension: skipped
        (b"route-3", b"{not json"),
        (b"route-4", None),
        (None, encode(shipped[5])),
        (b"route-6", encode(shipped[7])),  # key mismatch
        (b"route-8", encode(shipped[8].model_copy(update={"threshold": 0.5}))),  # again: the last wins
    ])  # fmt: skip
    replay_in_batches_of(5, monkeypatch)
    monkeypatch.setattr(replica_module, "_DEFER_STORE_FROM_RECORDS", 1)  # a fresh replay, spilled
    # an approximate index, as a large table's: built from the spill file, its own file and vectors file
    ivf = functools.partial(IndexSettings, approximate_above=0, list_rows=8, probe_lists=2)
    monkeypatch.setattr(replica_module, "IndexSettings", ivf)
    return made


def decode_children() -> list[str]:
    """Command lines of this process's children that are decode processes."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if decoder_module.CHILD_MODULE in command:
                found.append(command)
    return found


async def replayed(settings: Settings, pool: EncoderPool, store: Path, apart: bool) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replica_module, "_DECODE_APART_FROM_RECORDS", 1 if apart else 10**9)
        spawned: list[int] = []
        start = decoder_module.ReplayDecoder.start

        def counted(*args: Any, **kwargs: Any) -> decoder_module.ReplayDecoder:
            spawned.append(1)
            return start(*args, **kwargs)

        patch.setattr(decoder_module.ReplayDecoder, "start", counted)
        events = RecordedEvents()
        async with replica_running(settings, pool, store, events=events) as replica:
            assert bool(spawned) == apart
            assert not decode_children()  # reaped once the replay was decoded
            main = replica.table.snapshot().main
            assert main.path is not None
            assert main.vectors_path is not None
            assert replica.table.snapshot().overlay.rows == 0
            figures = {
                "digest": replica.table.digest(),
                "names": replica.table.route_names(),
                "stats": replica.stats.as_dict(),
                "skipped": sorted(events.skipped),
                "index": main.path.read_bytes(),
                "vectors": main.vectors_path.read_bytes(),
                "version": replica.table.version,
            }
    stored = RouteStore(store)
    assert stored.caught_up_at_ms() is not None
    figures["store_version"] = stored.load().version
    with contextlib.closing(sqlite3.connect(store)) as db:  # every stored byte
        figures["store"] = [db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                            for table in ("routes", "route_vectors", "offsets", "records")]  # fmt: skip
    assert not list(store.with_name(store.name + ".index").glob("replay-*"))  # the spill file is gone
    return figures


async def test_a_replay_decoded_apart_makes_what_one_decoded_here_makes(
    settings: Settings, pool: EncoderPool, tmp_path: Path
) -> None:
    here = await replayed(settings, pool, tmp_path / "here.db", apart=False)
    apart = await replayed(settings, pool, tmp_path / "apart.db", apart=True)
    assert here["stats"]["skipped_malformed"] == 4
    assert here["stats"]["embedded"] == 5
    assert here["stats"]["unknown_fields"] == 1
    assert "colourful" in here["names"]
    assert "negatives" in here["names"]
    for figure in here:
        assert apart[figure] == here[figure], figure


async def test_a_decode_process_that_fails_stops_the_replica_loudly(
    settings: Settings, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "_DECODE_APART_FROM_RECORDS", 1)
    monkeypatch.setattr(decoder_module, "CHILD_MODULE", "worker.replication.no_such_module")
    store = tmp_path / "r.db"
    replica = RouteReplica(settings, pool, store_path=store)
    with pytest.raises(ReplayDecodeFailed, match="No module named"):
        await asyncio.wait_for(replica.run(), timeout=30)
    assert not replica.ready.is_set()
    assert not decode_children()
    monkeypatch.undo()
    monkeypatch.setattr(replica_module, "_DEFER_STORE_FROM_RECORDS", 1)
    monkeypatch.setattr(replica_module, "_DECODE_APART_FROM_RECORDS", 1)
    async with replica_running(settings, pool, store) as restarted:  # the next start replays it all
        assert len(restarted.table) == 43


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_a_replay_stopped_or_cancelled_while_decoding_apart_leaves_no_process_behind(
    settings: Settings, pool: EncoderPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(replica_module, "_DECODE_APART_FROM_RECORDS", 1)
    answered, release = threading.Event(), threading.Event()
    answer = decoder_module.ReplayDecoder.answer

    def first_answered(self: decoder_module.ReplayDecoder) -> decoder_module.DecodedBatch:
        made = answer(self)
        answered.set()
        release.wait(30)  # the replay holds here, mid-way, until stopped or cancelled
        return made

    monkeypatch.setattr(decoder_module.ReplayDecoder, "answer", first_answered)
    replica = RouteReplica(settings, pool, store_path=tmp_path / "r.db")
    task = asyncio.create_task(replica.run())
    assert await asyncio.to_thread(answered.wait, 30)
    assert decode_children()  # decoding apart, mid-replay
    if how == "stop":
        await replica.stop()
        release.set()
        await asyncio.wait_for(task, timeout=30)
    else:
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not replica.ready.is_set()
    assert not decode_children()
