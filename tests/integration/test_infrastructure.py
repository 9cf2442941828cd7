"""The real parts the suite stands on: a Kafka-protocol broker and redis-server, private to the run."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from worker.local.broker import LocalBroker
from worker.local.process import LocalService
from worker.local.redis import LocalRedis

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_topics_keys_headers_tombstone_in_a_consumer_group(broker: LocalBroker) -> None:
    queries, mutations = _name("queries"), _name("mutations")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(queries, num_partitions=3, replication_factor=1),
                NewTopic(mutations, num_partitions=1, replication_factor=1,
                         topic_configs={"cleanup.policy": "compact"}),
            ]
        )  # fmt: skip
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, mutations)])
        entries = {e[0]: e[1] for e in described[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = {}
        for i in range(30):
            meta = await producer.send_and_wait(
                queries,
                f"v{i}".encode(),
                key=f"conv-{i % 5}".encode(),
                headers=[("traceparent", b"00-t-%d" % i)],
            )
            sent[(meta.partition, meta.offset)] = (f"conv-{i % 5}".encode(), f"v{i}".encode())
        await producer.send_and_wait(mutations, b'{"name": "a"}', key=b"a")
        await producer.send_and_wait(mutations, None, key=b"a")  # tombstone
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        queries,
        bootstrap_servers=broker.bootstrap,
        group_id=_name("group"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=200,
        session_timeout_ms=6000,
    )
    await consumer.start()
    try:
        received = {}
        partitions_by_key: dict[bytes, set[int]] = {}
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        assert r.key is not None
                        assert r.value is not None
                        received[(tp.partition, r.offset)] = (r.key, r.value)
                        assert dict(r.headers)["traceparent"].startswith(b"00-t-")
                        partitions_by_key.setdefault(r.key, set()).add(tp.partition)
        assert received == sent
        assert all(len(p) == 1 for p in partitions_by_key.values()), "one key, one partition"
        await consumer.commit()
        for tp in consumer.assignment():
            end = (await consumer.end_offsets([tp]))[tp]
            assert await consumer.committed(tp) == end
    finally:
        await consumer.stop()

    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tp = TopicPartition(mutations, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        values: list[tuple[bytes | None, bytes | None]] = []
        async with asyncio.timeout(15):
            while len(values) < 2:
                records = await reader.getmany(tp, timeout_ms=500)
                values += [(r.key, r.value) for r in records.get(tp, [])]
        assert values == [(b"a", b'{"name": "a"}'), (b"a", None)]
    finally:
        await reader.stop()


async def test_redis_round_trip(redis_server: LocalRedis) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        payload = os.urandom(1536)
        await client.set("emb:test", payload, ex=60)
        assert await client.get("emb:test") == payload
        assert 0 < await client.ttl("emb:test") <= 60
    finally:
        await client.aclose()


def test_services_leave_no_process_behind() -> None:
    pids = []
    for service in (LocalBroker(), LocalRedis()):
        with service:
            assert service.alive()
            pids.append(service.pid)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_service_that_dies_at_start_is_reported_and_reaped() -> None:
    class Broken(LocalService):
        name = "broken"

        def argv(self) -> list[str]:
            return ["sh", "-c", "echo cannot bind >&2; exit 3"]

    service = Broken()
    with pytest.raises(RuntimeError, match="cannot bind"):
        service.start(timeout_s=5)
    assert not service.alive()
    assert not service.workdir.exists()
