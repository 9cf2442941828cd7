"""The private Apache Kafka itself: it serves, compacts, persists, and takes idempotent and
transactional producers, SCRAM listeners and a three-node quorum; a broker that fails says why."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from worker.local.capabilities import BrokerService
from worker.local.errors import KafkaDistError, ServiceError
from worker.local.kafka import LocalKafka
from worker.local.kafka_config import Listener
from worker.local.kafka_dist import prepare_kafka

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create(
    bootstrap: str, topic: str, configs: Mapping[str, str] | None = None, replicas: int = 1
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, replicas, topic_configs=dict(configs or {}))])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, records: Sequence[Record], **options: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, **options: object) -> list[Record]:
    """Every record of partition 0, from the log start to the end offset taken now."""
    # "earliest" also for the reset that assign() starts: with "latest" it can land after the seek
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **options
    )
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        reader.seek(tp, (await reader.beginning_offsets([tp]))[tp])
        records: list[Record] = []
        async with asyncio.timeout(20):
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=300)
                records += [(r.key, r.value) for r in batch.get(tp, [])]
        return records
    finally:
        await reader.stop()


async def test_the_fixture_serves_a_consumer_group(kafka_broker: LocalKafka) -> None:
    service: BrokerService = kafka_broker
    assert service.name == "kafka"
    assert service.capabilities.missing() == []
    topic = _name("served")
    await _create(kafka_broker.bootstrap, topic)
    sent = [(b"k%d" % i, b"v%d" % i) for i in range(10)]
    await _produce(kafka_broker.bootstrap, topic, sent)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=_name("group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[Record] = []
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=300)
                received += [(r.key, r.value) for records in batch.values() for r in records]
        await consumer.commit()
        tp = TopicPartition(topic, 0)
        assert await consumer.committed(tp) == len(sent)
    finally:
        await consumer.stop()
    assert received == sent


async def test_the_log_cleaner_compacts_within_seconds(kafka_broker: LocalKafka) -> None:
    topic = _name("compacted")
    configs = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "delete.retention.ms": "100",
        "min.compaction.lag.ms": "0",
    }
    await _create(kafka_broker.bootstrap, topic, configs)
    history = [(b"route-a", b"v%d" % i) for i in range(5)] + [(b"route-b", b"x"), (b"route-b", None)]
    await _produce(kafka_broker.bootstrap, topic, history)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:
        # the active segment is never cleaned: each tick rolls it once segment.ms has passed
        deadline = time.monotonic() + 60
        while True:
            await producer.send_and_wait(topic, b"tick", key=b"tick")
            records = await _read_all(kafka_broker.bootstrap, topic)
            routes = [(k, v) for k, v in records if k != b"tick"]
            if routes == [(b"route-a", b"v4")]:
                break  # duplicates compacted away, and route-b's tombstone removed after its retention
            assert time.monotonic() < deadline, f"not compacted after 60 s: {routes}"
            await asyncio.sleep(0.3)
    finally:
        await producer.stop()


async def test_idempotent_and_transactional_producers(kafka_broker: LocalKafka) -> None:
    topic = _name("exactly-once")
    await _create(kafka_broker.bootstrap, topic)
    idempotent = {"enable_idempotence": True, "acks": "all"}
    await _produce(kafka_broker.bootstrap, topic, [(b"i", b"idempotent")], **idempotent)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, transactional_id=_name("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed", key=b"t")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"t")
        await producer.abort_transaction()
    finally:
        await producer.stop()
    committed = await _read_all(kafka_broker.bootstrap, topic, isolation_level="read_committed")
    assert committed == [(b"i", b"idempotent"), (b"t", b"committed")]
    everything = await _read_all(kafka_broker.bootstrap, topic, isolation_level="read_uncommitted")
    assert (b"t", b"aborted") in everything


@pytest.fixture
async def own_kafka() -> AsyncIterator[LocalKafka]:
    """A broker of this test alone: it will be stopped, killed and frozen."""
    kafka = LocalKafka()
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        kafka.close()


async def test_records_survive_a_restart_a_kill_and_a_freeze(own_kafka: LocalKafka) -> None:
    topic = _name("durable")
    await _create(own_kafka.bootstrap, topic)
    await _produce(own_kafka.bootstrap, topic, [(b"a", b"1")], acks="all")
    data_dir, port = own_kafka.nodes[0].data_dir, own_kafka.nodes[0].ports["PLAINTEXT"]

    await asyncio.to_thread(own_kafka.restart)  # SIGTERM: a controlled shutdown
    await _produce(own_kafka.bootstrap, topic, [(b"b", b"2")], acks="all")
    own_kafka.kill()  # SIGKILL: the log is recovered at the next start
    assert not own_kafka.alive()
    await asyncio.to_thread(own_kafka.start)
    assert (own_kafka.nodes[0].data_dir, own_kafka.nodes[0].ports["PLAINTEXT"]) == (data_dir, port)
    assert await _read_all(own_kafka.bootstrap, topic) == [(b"a", b"1"), (b"b", b"2")]

    own_kafka.freeze()  # returns once the kernel shows the JVM stopped
    assert _state(own_kafka.nodes[0].pid) == "T"
    own_kafka.thaw()
    assert _state(own_kafka.nodes[0].pid) != "T"
    await _produce(own_kafka.bootstrap, topic, [(b"c", b"3")], acks="all")
    assert len(await _read_all(own_kafka.bootstrap, topic)) == 3

    pid = own_kafka.nodes[0].pid
    assert pid is not None
    own_kafka.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not own_kafka.workdir.exists()


def _state(pid: int | None) -> str:
    """The process state letter from /proc (T: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_a_scram_listener_with_the_standard_authorizer() -> None:
    """What a SASL_SSL set-up passes through: listener settings, a JAAS entry, SCRAM users at format."""
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    kafka = LocalKafka(
        listeners=[
            Listener(
                "SASL",
                "SASL_PLAINTEXT",
                {"sasl.enabled.mechanisms": "SCRAM-SHA-512", "scram-sha-512.sasl.jaas.config": scram},
            )
        ],
        properties={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # the node's own PLAINTEXT and CONTROLLER connections are anonymous
            "super.users": "User:ANONYMOUS",
        },
        format_args=["--add-scram", "SCRAM-SHA-512=[name=alice,password=alice-secret]"],
    )
    await asyncio.to_thread(kafka.start)
    try:
        topic = _name("guarded")
        await _create(kafka.bootstrap, topic)
        sasl = {
            "bootstrap_servers": kafka.bootstrap_for("SASL"),
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "alice",
        }
        alice = AIOKafkaProducer(**sasl, sasl_plain_password="alice-secret", request_timeout_ms=5000)
        await alice.start()  # authenticated
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await alice.send_and_wait(topic, b"no ACL allows this")
        finally:
            await alice.stop()
        intruder = AIOKafkaProducer(**sasl, sasl_plain_password="wrong", request_timeout_ms=5000)
        with pytest.raises(KafkaError):
            await intruder.start()
        await intruder.stop()
    finally:
        kafka.close()


async def test_a_three_node_cluster_keeps_serving_when_a_node_dies() -> None:
    kafka = LocalKafka(nodes=3, properties={"min.insync.replicas": "2"})
    await asyncio.to_thread(kafka.start, 180)
    try:
        assert len(kafka.bootstrap.split(",")) == 3
        topic = _name("replicated")
        await _create(kafka.bootstrap, topic, replicas=3)
        await _produce(kafka.bootstrap, topic, [(b"a", b"1")], acks="all")
        kafka.node(3).kill()
        await _produce(kafka.bootstrap, topic, [(b"b", b"2")], acks="all")  # two in-sync replicas left
        await asyncio.to_thread(kafka.node(3).start)
        assert await _read_all(kafka.node(3).bootstrap, topic) == [(b"a", b"1"), (b"b", b"2")]
    finally:
        kafka.close()


def test_a_broker_that_cannot_start_says_why_and_leaves_nothing_running() -> None:
    # a SASL listener without any JAAS entry: the broker refuses to start
    kafka = LocalKafka(listeners=[Listener("SASL", "SASL_PLAINTEXT", {"sasl.enabled.mechanisms": "PLAIN"})])
    with pytest.raises(ServiceError) as failure:
        kafka.start(timeout_s=60)
    first, *tail = str(failure.value).splitlines()
    assert first.startswith("kafka node 1 did not start: the JVM exited with code 1")
    assert "JAAS" in first
    assert any("last lines of" in line for line in tail)
    assert not kafka.alive()
    assert not kafka.workdir.exists()


def test_an_unreachable_maven_central_is_one_line(tmp_path: Path) -> None:
    """The real mvn, with every repository mirrored to a closed port and an empty local repository."""
    settings = tmp_path / "settings.xml"
    settings.write_text(
        "<settings><mirrors><mirror><id>closed</id><mirrorOf>*</mirrorOf>"
        "<url>http://127.0.0.1:9/maven2</url></mirror></mirrors></settings>"
    )
    mvn_args = ["-s", str(settings), f"-Dmaven.repo.local={tmp_path / 'm2'}"]
    with pytest.raises(KafkaDistError) as failure:
        prepare_kafka(tmp_path / "cache", mvn_args=mvn_args)
    message = str(failure.value)
    assert message.startswith("Maven Central unreachable: cannot download ")
    assert "Connection refused" in message
    assert "\n" not in message


def test_kcat_produces_and_consumes(kafka_broker: LocalKafka) -> None:
    """librdkafka (Debian's kcat) talks to it, as it cannot to Tansu: the README's kcat lines work."""
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed: `make system` installs it"
    topic = _name("kcat")
    asyncio.run(_create(kafka_broker.bootstrap, topic))
    line = 'conversation-42|{"id":"q-2","text":"where is my parcel"}\n'
    produce = [kcat, "-P", "-b", kafka_broker.bootstrap, "-t", topic, "-K", "|"]
    subprocess.run(produce, input=line, text=True, check=True, timeout=30)
    consume = [kcat, "-C", "-b", kafka_broker.bootstrap, "-t", topic, "-f", "%k %s\\n", "-e", "-q"]
    done = subprocess.run(consume, capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout == 'conversation-42 {"id":"q-2","text":"where is my parcel"}\n'
