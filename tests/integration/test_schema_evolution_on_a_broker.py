"""An old reader against a new writer, on a real broker: an upstream adds fields to its queries (routed
when tolerant, dead-lettered with a code when strict), a newer admin tool adds fields to route
definitions (replicas of this version apply them identically, whatever their contract mode)
(issue 13, item 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pipeline_harness import (
    QUERY_TEXTS,
    Record,
    TopicReader,
    Topics,
    build_table,
    committed_offsets,
    create_topics,
    log_end,
    produce,
)
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
from worker.contracts import DeadLetter, RouteDefinition, RoutedIntent, encode
from worker.contracts.limits import ContractMode
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.local.broker import LocalBroker
from worker.pipeline import QueryPipeline
from worker.replication import with_embeddings
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as made:
        yield made


@pytest.mark.parametrize("mode", ["tolerant", "strict"])
async def test_queries_from_a_newer_upstream_are_routed_when_tolerant_and_dead_lettered_when_strict(
    broker: LocalBroker, model: EncoderPool, mode: ContractMode
) -> None:
    topics = Topics.fresh()
    await create_topics(broker.bootstrap, topics)
    records: list[Record] = []
    for i in range(40):
        query: dict[str, Any] = {"id": f"q{i}", "text": QUERY_TEXTS[i % len(QUERY_TEXTS)]}
        if i % 2:  # every other one from the newer upstream
            query |= {"locale": "de", "ab_test": {"arm": i % 3}}
        records.append((f"conv-{i % 5}".encode(), orjson.dumps(query), []))
    telemetry = Telemetry(replica_id=f"evolution-{mode}")
    pipeline = QueryPipeline(
        topics.settings(broker.bootstrap, contract_mode=mode),
        encoder=model,
        router=Router(build_table(model)),
        telemetry=telemetry,
    )
    running = asyncio.create_task(pipeline.run())
    try:
        async with TopicReader(broker.bootstrap, [topics.intents, topics.dlq]) as reader:
            await produce(broker.bootstrap, topics.queries, records)
            ends = await log_end(broker.bootstrap, topics.queries, len(records))
            async with asyncio.timeout(120):
                while await committed_offsets(broker.bootstrap, topics.group, topics.queries) != ends:
                    assert not running.done(), "the pipeline stopped"
                    await asyncio.sleep(0.2)
            got = await reader.wait_for(lambda rs: len(rs) >= len(records))
        counted = telemetry.registry.get_sample_value(
            "routeworker_contracts_unknown_fields_total", {"topic": topics.queries}
        )
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 30)
        telemetry.shutdown()
    routed = {RoutedIntent.model_validate_json(r.value).query_id: r for r in got if r.topic == topics.intents}
    dead = [DeadLetter.model_validate_json(r.value) for r in got if r.topic == topics.dlq]
    if mode == "tolerant":
        assert sorted(routed) == sorted(f"q{i}" for i in range(40))
        assert dead == []
        assert counted == 40  # two fields in each of 20 queries
        assert all(b"locale" not in r.value for r in routed.values())  # not passed on
    else:
        assert sorted(routed) == sorted(f"q{i}" for i in range(0, 40, 2))
        assert len(dead) == 20
        assert {d.error_code.value for d in dead} == {"unknown_field"}
        assert all("locale, ab_test" in d.reason for d in dead)
        assert counted == 0


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
