"""An old reader against a new writer on the mutation log: a newer admin tool adds fields to route
definitions, and replicas of this version apply them identically, whatever their contract mode
(issue 13, item 7)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from replication_harness import (
    RecordedEvents,
    create_mutation_topic,
    folded_digest,
    mutation_settings,
    produce_raw,
    replica_running,
    routes,
    wait_for,
)

from worker.app.replica_telemetry import ReplicaTelemetry
from worker.contracts import RouteDefinition, encode
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.local.broker import LocalBroker
from worker.replication import with_embeddings
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    with hashing_pool(64) as made:
        yield made


def newer_writer(definition: RouteDefinition, **fields: Any) -> bytes:
    """The record a newer admin tool writes: the definition with fields this version does not know
    (``embeddings`` may take some too, as a dict under ``embeddings_extra``)."""
    document = orjson.loads(encode(definition))
    nested = fields.pop("embeddings_extra", None)
    if nested is not None:
        document["embeddings"].update(nested)
    return orjson.dumps({**document, **fields})


async def test_a_route_with_unknown_fields_is_applied_identically_by_replicas_in_either_mode(
    broker: LocalBroker, pool: EncoderPool, tmp_path: Path
) -> None:
    tolerant = mutation_settings(broker.bootstrap)
    strict = tolerant.model_copy(update={"contract_mode": "strict"})  # governs queries, not the log
    await create_mutation_topic(tolerant)
    plain = await with_embeddings(pool, routes(3, prefix="r"))
    records = [
        (b"r-0", newer_writer(plain[0], priority=5, owner={"team": "billing"})),
        (b"r-1", newer_writer(plain[1], embeddings_extra={"quantised": False})),
        (b"r-2", encode(plain[2])),
    ]
    await produce_raw(tolerant, records)
    expected = folded_digest({d.name: d for d in plain}, pool.fingerprint, pool.dim)

    telemetry = Telemetry(replica_id="tolerant")
    recorded = RecordedEvents()
    metric = ("routeworker_contracts_unknown_fields_total", {"topic": tolerant.topic_mutations})
    try:
        events = ReplicaTelemetry(telemetry, tolerant.topic_mutations)
        async with (
            replica_running(tolerant, pool, tmp_path / "a.db", events=events) as a,
            replica_running(strict, pool, tmp_path / "b.db", events=recorded) as b,
        ):
            for replica in (a, b):
                assert replica.table.route_names() == ["r-0", "r-1", "r-2"]  # nothing skipped
                assert replica.stats.skipped_malformed == 0
                assert replica.stats.unknown_fields == 3
                # the table is the one the same routes without those fields give
                assert replica.table.digest() == expected
            assert telemetry.registry.get_sample_value(*metric) == 3
            assert recorded.unknown == 3

            # live: a changed route from the newer tool reaches both, the same way
            edited = plain[0].model_copy(update={"utterances": ["paid twice"], "embeddings": None})
            (changed,) = await with_embeddings(pool, [edited])
            await produce_raw(tolerant, [(b"r-0", newer_writer(changed, priority=1))])
            for replica in (a, b):
                await wait_for(
                    lambda r=replica: (
                        (route := r.table.snapshot().route("r-0")) is not None
                        and route.route.utterances == ("paid twice",)
                    ),
                    what="the live change",
                )
            assert a.table.digest() == b.table.digest()
            assert a.table.digest() == folded_digest(
                {"r-0": changed, "r-1": plain[1], "r-2": plain[2]}, pool.fingerprint, pool.dim
            )
            await wait_for(lambda: telemetry.registry.get_sample_value(*metric) == 4, what="the counter")
            await wait_for(lambda: recorded.unknown == 4, what="the other replica's count")
        # restarted from its store: the same table, nothing re-read
        async with replica_running(tolerant, pool, tmp_path / "a.db") as again:
            assert again.table.digest() == b.table.digest()
    finally:
        telemetry.shutdown()
