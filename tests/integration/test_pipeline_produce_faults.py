"""The produce step against Apache Kafka's own refusals: records too large for the output topic
(known at start, and a limit lowered while running), per-key order and idempotence across a broker
kill -9, an unknown output topic, and a write permission taken away while the replica runs."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from pipeline_harness import (
    Record,
    TopicReader,
    Topics,
    WorkerProcess,
    build_table,
    committed_offsets,
    produce,
    publish_routes,
    route_definitions,
)

from worker.app import run_worker
from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.local.kafka import LocalKafka
from worker.local.kafka_config import Listener
from worker.pipeline import QueryPipeline
from worker.routing import Router, RouteTable
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration

SMALL_TOPIC = 1500  # max.message.bytes: an ordinary intent fits, one carrying 2 kB of metadata not
KEYS = [f"conv-{k}".encode() for k in range(5)]


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


async def create(bootstrap: str, topics: Topics, intents_configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.queries, 2, 1),
                NewTopic(topics.intents, 2, 1, topic_configs=intents_configs or {}),
                NewTopic(topics.dlq, 1, 1),
                NewTopic(topics.mutations, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
    finally:
        await admin.close()


def query(i: int, *, big: bool = False) -> Record:
    """Query ``i`` on one of the five conversation keys; a big one carries 2 kB of metadata."""
    doc: dict[str, Any] = {"id": f"q{i}", "text": f"play some jazz music number {i}"}
    if big:
        doc["metadata"] = {"notes": "x" * 2000}
    return KEYS[i % len(KEYS)], orjson.dumps(doc), []


def per_key_ids(intents: Sequence[Any]) -> dict[bytes, list[int]]:
    """Query numbers of the intents of each key, in the order of the intents topic (first copies)."""
    seen: set[str] = set()
    order: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(intents, key=lambda r: (r.partition, r.offset)):
        query_id = RoutedIntent.model_validate_json(record.value).query_id
        if query_id not in seen:
            seen.add(query_id)
            order[record.key].append(int(query_id[1:]))
    return order


async def all_committed(bootstrap: str, topics: Topics, count: int, running: asyncio.Task[None]) -> None:
    """Wait until the group committed past every one of ``count`` queries (2 partitions)."""
    async with asyncio.timeout(120):
        while sum((await committed_offsets(bootstrap, topics.group, topics.queries)).values()) < count:
            assert not running.done(), "the pipeline stopped"
            await asyncio.sleep(0.2)


@pytest.fixture
async def pipeline_on(
    encoder: EncoderPool,
) -> AsyncIterator[Any]:
    """Starts an in-process pipeline (the real model) for given settings; stops it at the end."""
    started: list[tuple[QueryPipeline, asyncio.Task[None], Telemetry]] = []

    def start(settings: Settings) -> tuple[QueryPipeline, asyncio.Task[None]]:
        telemetry = Telemetry(replica_id="produce-faults")
        pipeline = QueryPipeline(
            settings, encoder=encoder, router=Router(build_table(encoder)), telemetry=telemetry
        )
        task = asyncio.create_task(pipeline.run())
        started.append((pipeline, task, telemetry))
        return pipeline, task

    yield start
    for pipeline, task, telemetry in started:
        pipeline.stop()
        await asyncio.gather(asyncio.wait_for(task, 60), return_exceptions=True)
        telemetry.shutdown()


async def test_an_intent_too_large_for_its_topic_is_dead_lettered_and_the_rest_keep_their_order(
    kafka_broker: LocalKafka, pipeline_on: Any
) -> None:
    topics = Topics.fresh()
    bootstrap = kafka_broker.bootstrap
    await create(bootstrap, topics, {"max.message.bytes": str(SMALL_TOPIC)})
    big = {17, 18, 60, 133, 199}
    records = [query(i, big=i in big) for i in range(200)]
    pipeline, running = pipeline_on(topics.settings(bootstrap))
    async with TopicReader(bootstrap, [topics.intents, topics.dlq]) as reader:
        await produce(bootstrap, topics.queries, records)
        await all_committed(bootstrap, topics, 200, running)
        got = await reader.wait_for(lambda rs: len(rs) >= 200)
    assert pipeline.idempotent  # Apache Kafka takes an idempotent producer
    dead = [DeadLetter.model_validate_json(r.value) for r in got if r.topic == topics.dlq]
    assert sorted(query_number(d) for d in dead) == sorted(big)
    for letter in dead:
        assert letter.error_code.value == "intent_too_large"
        assert f"more than topic {topics.intents} takes ({SMALL_TOPIC})" in letter.reason
        assert letter.source.topic == topics.queries
    intents = [r for r in got if r.topic == topics.intents]
    ids = Counter(RoutedIntent.model_validate_json(r.value).query_id for r in intents)
    assert ids == Counter(f"q{i}" for i in range(200) if i not in big)  # exactly once each
    for key, numbers in per_key_ids(intents).items():
        assert numbers == sorted(numbers), key


async def test_a_limit_lowered_while_running_is_found_by_the_brokers_refusal(
    kafka_broker: LocalKafka, pipeline_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica read the topic's limit at start; then the topic takes less. The broker refuses
    the record, which breaks the idempotent producer's sequence for its partition: every later
    record of that partition is refused too until a new producer starts. The big one goes to the
    DLQ, the later ones are routed once each and in order (without a new producer they would be
    refused for ever)."""
    topics = Topics.fresh()
    bootstrap = kafka_broker.bootstrap
    await create(bootstrap, topics)
    pipeline, running = pipeline_on(topics.settings(bootstrap))
    async with TopicReader(bootstrap, [topics.intents, topics.dlq]) as reader:
        await produce(bootstrap, topics.queries, [query(i) for i in range(50)])
        await all_committed(bootstrap, topics, 50, running)
        await lower_the_limit(bootstrap, topics.intents, SMALL_TOPIC)
        big = {55, 56, 80}
        with caplog.at_level(logging.INFO, logger="worker.pipeline"):
            await produce(bootstrap, topics.queries, [query(i, big=i in big) for i in range(50, 100)])
            await all_committed(bootstrap, topics, 100, running)
            got = await reader.wait_for(lambda rs: sum(r.value != PROBE for r in rs) >= 100)
    assert pipeline.idempotent
    dead = [DeadLetter.model_validate_json(r.value) for r in got if r.topic == topics.dlq]
    assert sorted(query_number(d) for d in dead) == sorted(big)
    assert {d.error_code.value for d in dead} == {"intent_too_large"}
    assert all("MessageSizeTooLargeError" in d.reason for d in dead)  # the broker's refusal
    intents = answers(got, topics.intents)
    ids = Counter(RoutedIntent.model_validate_json(r.value).query_id for r in intents)
    assert ids == Counter(f"q{i}" for i in range(100) if i not in big)  # once each: no duplicate
    for key, numbers in per_key_ids(intents).items():
        assert numbers == sorted(numbers), key
    assert "replaced by a new one" in caplog.text


def query_number(letter: DeadLetter) -> int:
    return int(orjson.loads(base64.b64decode(letter.value_b64 or ""))["id"][1:])


def answers(got: Sequence[Any], topic: str) -> list[Any]:
    """The routed intents in ``got`` (not the probes of :func:`lower_the_limit`)."""
    return [r for r in got if r.topic == topic and r.value != PROBE]


PROBE = b"probe"


async def lower_the_limit(bootstrap: str, topic: str, limit: int) -> None:
    """Set the topic's max.message.bytes and wait until the broker enforces it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
    finally:
        await admin.close()
    probe = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await probe.start()
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await probe.send_and_wait(topic, PROBE, key=b"p" * (limit * 2), partition=0)
                except MessageSizeTooLargeError:
                    return
                await asyncio.sleep(0.1)
    finally:
        await probe.stop()


@pytest.fixture
async def own_kafka() -> AsyncIterator[LocalKafka]:
    """A broker of this test alone: it will be killed."""
    kafka = LocalKafka()
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        kafka.close()


async def test_per_key_order_holds_across_a_broker_kill_9_with_the_idempotent_producer(
    own_kafka: LocalKafka, pipeline_on: Any
) -> None:
    topics = Topics.fresh()
    bootstrap = own_kafka.bootstrap
    await create(bootstrap, topics)
    settings = topics.settings(bootstrap, kafka_request_timeout_ms=5000, produce_deadline_s=60)
    pipeline, running = pipeline_on(settings)
    count = 600
    async with TopicReader(bootstrap, [topics.intents]) as reader:
        await produce(bootstrap, topics.queries, [query(i) for i in range(count // 2)])
        await reader.wait_for(lambda rs: len(rs) >= 50)  # mid-stream
        own_kafka.kill()
        await asyncio.to_thread(own_kafka.start)
        await produce(bootstrap, topics.queries, [query(i) for i in range(count // 2, count)])
        await all_committed(bootstrap, topics, count, running)
        got = await reader.wait_for(lambda rs: len({r.value for r in rs}) >= count)
    assert pipeline.idempotent
    ids = {RoutedIntent.model_validate_json(r.value).query_id for r in got}
    assert ids == {f"q{i}" for i in range(count)}  # none lost
    for key, numbers in per_key_ids(got).items():
        assert numbers == sorted(numbers), key  # no intent overtook an earlier one of its key


class ReadyReplica:
    """A route replica stand-in: a fixed table, ready at once (no mutation log to read)."""

    def __init__(self, settings: Settings, encoder: Any) -> None:
        self._table = build_table(encoder)
        self.ready = asyncio.Event()
        self.ready.set()
        self._stopped = asyncio.Event()

    @property
    def table(self) -> RouteTable:
        return self._table

    async def open(self) -> None:
        pass

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()


async def test_an_unknown_output_topic_stops_the_worker_loudly_within_the_deadline(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    bootstrap = kafka_broker.bootstrap
    await create(bootstrap, topics)
    await publish_routes(bootstrap, topics.mutations, route_definitions())
    env = topics.env(
        bootstrap,
        tmp_path / "store.sqlite3",
        topic_intents=f"missing-{topics.intents}",  # the broker creates no topic on its own
        produce_deadline_s=4,
        kafka_request_timeout_ms=1500,
        shutdown_timeout_s=5,
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        await worker.wait_for_log("routing queries")
        await produce(bootstrap, topics.queries, [query(i) for i in range(3)])
        assert await worker.wait(within=60) == 1
    finally:
        worker.close()
    log = worker.log()
    assert "output cannot be delivered, the replica stops" in log
    assert "UnknownTopicOrPartitionError" in log
    assert "PRODUCE_DEADLINE_S=4" in log
    assert await committed_offsets(bootstrap, topics.group, topics.queries) == {}  # nothing past it


SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@pytest.fixture
async def guarded_kafka() -> AsyncIterator[LocalKafka]:
    """Apache Kafka with a SCRAM listener and the StandardAuthorizer; user ``worker``."""
    kafka = LocalKafka(
        listeners=[
            Listener(
                "SASL",
                "SASL_PLAINTEXT",
                {"sasl.enabled.mechanisms": "SCRAM-SHA-512", "scram-sha-512.sasl.jaas.config": SCRAM},
            )
        ],
        properties={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",  # the PLAINTEXT listener administers
        },
        format_args=["--add-scram", "SCRAM-SHA-512=[name=worker,password=worker-secret]"],
    )
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        kafka.close()


def grant(bootstrap: str, bindings: list[Any], *, revoke: bool = False) -> None:
    """Create (or delete) ACL bindings through librdkafka's admin client (aiokafka has none)."""
    from confluent_kafka.admin import AclBindingFilter, AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if revoke:
        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in bindings
        ]
        futures = admin.delete_acls(filters)
    else:
        futures = admin.create_acls(bindings)
    for future in futures.values():
        future.result(timeout=30)


def worker_acls(topics: Topics) -> tuple[list[Any], Any]:
    """The worker's ACLs (read queries and the mutation log, describe the log's configuration, use
    its group, write intents and dead letters: what the start-up access check asks for), and the
    one that lets it write intents."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    def allow(restype: Any, name: str, operation: Any) -> Any:
        return AclBinding(
            restype, name, ResourcePatternType.LITERAL, "User:worker", "*", operation, AclPermissionType.ALLOW
        )

    write_intents = allow(ResourceType.TOPIC, topics.intents, AclOperation.WRITE)
    bindings = [
        allow(ResourceType.TOPIC, topics.queries, AclOperation.READ),
        allow(ResourceType.TOPIC, topics.mutations, AclOperation.READ),
        allow(ResourceType.TOPIC, topics.mutations, AclOperation.DESCRIBE_CONFIGS),
        allow(ResourceType.GROUP, topics.group, AclOperation.READ),
        allow(ResourceType.TOPIC, topics.dlq, AclOperation.WRITE),
        write_intents,
    ]
    return bindings, write_intents


async def test_a_write_permission_taken_away_while_running_stops_the_worker_loudly(
    guarded_kafka: LocalKafka, model_spec: ModelSpec, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics.fresh()
    admin_bootstrap = guarded_kafka.bootstrap
    await create(admin_bootstrap, topics)
    bindings, write_intents = worker_acls(topics)
    await asyncio.to_thread(grant, admin_bootstrap, bindings)
    settings = topics.settings(
        guarded_kafka.bootstrap_for("SASL"),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="worker",
        kafka_sasl_password="worker-secret",
        produce_deadline_s=30,
    )
    telemetry = Telemetry(replica_id="guarded")
    worker = asyncio.create_task(
        run_worker(
            settings,
            telemetry,
            replica_factory=ReadyReplica,
            encoder_factory=lambda s: EncoderPool(model_spec, pool_size=1, max_pending=4),
        )
    )
    try:
        async with TopicReader(admin_bootstrap, [topics.intents]) as reader:
            await produce(admin_bootstrap, topics.queries, [query(i) for i in range(5)])
            await reader.wait_for(lambda rs: len(rs) >= 5)  # allowed: routed
        with caplog.at_level(logging.ERROR):
            await asyncio.to_thread(grant, admin_bootstrap, [write_intents], revoke=True)
            await produce(admin_bootstrap, topics.queries, [query(i) for i in range(5, 10)])
            assert await asyncio.wait_for(worker, 60) == 1  # long before the 30 s deadline
    finally:
        if not worker.done():
            worker.cancel()
        telemetry.shutdown()
    assert "TopicAuthorizationFailedError" in caplog.text
    # the replica's stop is one line naming the refusal, with no exception-group traceback
    (stop,) = [r for r in caplog.records if r.name == "worker.app.run"]
    assert stop.exc_info is None
    assert stop.getMessage().startswith("routeworker stopped: Kafka refuses access while running: ")
    assert "TopicAuthorizationFailedError" in stop.getMessage()
    alive, reason = telemetry.health.liveness()
    assert not alive
    assert "TopicAuthorizationFailedError" in reason
    assert "worker-secret" not in caplog.text
