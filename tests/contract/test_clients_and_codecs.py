"""The clients upstream and downstream services use, and every Kafka codec, on every broker.

Queries compressed with none, gzip, snappy, lz4 and zstd are routed, whether aiokafka,
librdkafka (confluent-kafka) or kcat produced them; intents are read back with librdkafka; the
output producer writes each codec. librdkafka cannot talk to Tansu, so its cases run on Apache
Kafka alone. kcat is installed by `make system`: a machine without it fails these tests instead
of skipping them, so a CI that lost it says so.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pipeline_harness import (
    QUERY_TEXTS,
    TopicReader,
    Topics,
    build_table,
    committed_offsets,
    create_topics,
    log_end,
)

from worker.config import Settings
from worker.contracts import RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.kafka_client import client_options
from worker.local.capabilities import BrokerService
from worker.pipeline import QueryPipeline
from worker.pipeline.clients import output_producer
from worker.pipeline.raw_fetch import RawFetcher
from worker.pipeline.types import TopicPartition
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# the codec in the low bits of a record batch's attributes (message format 2, byte 21 on)
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_ATTRIBUTES_AT = 21


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


@pytest.fixture(scope="session")
def kcat() -> str:
    """kcat's path; its absence fails the test (``make system`` installs it), never skips it."""
    found = shutil.which("kcat")
    if found is None:
        pytest.fail("kcat is not installed: `make system` installs it (Debian package kcat)")
    return found


def query(qid: str, n: int) -> bytes:
    return orjson.dumps({"id": qid, "text": QUERY_TEXTS[n % len(QUERY_TEXTS)]})


@asynccontextmanager
async def routing(settings: Settings, encoder: EncoderPool) -> AsyncIterator[QueryPipeline]:
    """A query pipeline over the real model, running until the block ends."""
    telemetry = Telemetry(replica_id="clients-test")
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=Router(build_table(encoder)), telemetry=telemetry
    )
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline
        assert not task.done(), "the pipeline stopped"
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 30)
        telemetry.shutdown()


async def routed_once(bootstrap: str, topics: Topics, wanted: set[str]) -> list[Any]:
    """Wait until every query in ``wanted`` has its intent and all input is committed; returns the records."""
    async with TopicReader(bootstrap, [topics.intents]) as reader:
        records = await reader.wait_for(lambda rs: len(rs) >= len(wanted), within=90)
    counts = Counter(RoutedIntent.model_validate_json(r.value).query_id for r in records)
    assert set(counts) == wanted
    assert set(counts.values()) == {1}
    ends = await log_end(bootstrap, topics.queries, len(wanted))
    async with asyncio.timeout(30):
        while await committed_offsets(bootstrap, topics.group, topics.queries) != ends:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return records


async def test_queries_in_every_codec_are_routed(any_broker: BrokerService, encoder: EncoderPool) -> None:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    wanted = set()
    for codec in CODECS:
        producer = AIOKafkaProducer(
            bootstrap_servers=any_broker.bootstrap,
            enable_idempotence=False,
            compression_type=None if codec == "none" else codec,
            linger_ms=20,
        )
        await producer.start()
        try:
            sent = []
            for i in range(6):  # one batch per partition and codec
                wanted.add(qid := f"aiokafka-{codec}-{i}")
                sent.append(await producer.send(topics.queries, query(qid, i), key=f"conv-{i}".encode()))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
    async with routing(topics.settings(any_broker.bootstrap), encoder):
        await routed_once(any_broker.bootstrap, topics, wanted)


def librdkafka_produce(bootstrap: str, topic: str, codec: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    failures: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in records:
        producer.produce(topic, value, key, on_delivery=delivered)
    assert producer.flush(30) == 0, "librdkafka did not deliver everything within 30 s"
    assert failures == []


def librdkafka_read(
    bootstrap: str, topic: str, count: int, within_s: float = 60
) -> list[tuple[bytes, bytes]]:
    """``count`` records of ``topic`` read by a librdkafka consumer group, as key and value."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"librdkafka-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + within_s
        while len(found) < count:
            assert time.monotonic() < deadline, f"librdkafka read {len(found)} of {count} records"
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            found.append((message.key(), message.value()))
    finally:
        consumer.close()
    return found


def kcat_run(kcat: str, args: list[str], stdin: str = "") -> str:
    done = subprocess.run([kcat, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.needs("librdkafka_compatible")
async def test_librdkafka_producers_in_every_codec_are_routed_and_read_the_intents(
    any_broker: BrokerService, encoder: EncoderPool, kcat: str
) -> None:
    bootstrap = any_broker.bootstrap
    topics = Topics.fresh()
    await create_topics(bootstrap, topics)
    wanted = set()
    for codec in CODECS:
        records = []
        for i in range(4):
            wanted.add(qid := f"confluent-{codec}-{i}")
            records.append((f"conv-{i}".encode(), query(qid, i)))
        await asyncio.to_thread(librdkafka_produce, bootstrap, topics.queries, codec, records)
        lines = []
        for i in range(4):
            wanted.add(qid := f"kcat-{codec}-{i}")
            lines.append(f"conv-{i}|{query(qid, i).decode()}")
        args = ["-P", "-b", bootstrap, "-t", topics.queries, "-z", codec, "-K", "|"]
        await asyncio.to_thread(kcat_run, kcat, args, "\n".join(lines) + "\n")
    async with routing(topics.settings(bootstrap, kafka_compression="zstd"), encoder):
        records = await routed_once(bootstrap, topics, wanted)
    by_id = {RoutedIntent.model_validate_json(r.value).query_id: r for r in records}
    assert by_id["kcat-lz4-2"].key == b"conv-2"  # kcat's keys are kept

    # downstream: librdkafka reads the (zstd-compressed) intents, in a consumer group and with kcat
    read = await asyncio.to_thread(librdkafka_read, bootstrap, topics.intents, len(wanted))
    assert {orjson.loads(value)["query_id"] for _, value in read} == wanted
    assert {key for key, _ in read} == {f"conv-{i}".encode() for i in range(4)}
    output = await asyncio.to_thread(
        kcat_run, kcat, ["-C", "-b", bootstrap, "-t", topics.intents, "-e", "-q", "-f", "%k\t%s\n"]
    )
    intents = [line.split("\t", 1) for line in output.splitlines()]
    assert {orjson.loads(value)["query_id"] for _, value in intents} == wanted
    assert "weather" in {RoutedIntent.model_validate_json(value).route for _, value in intents}


@pytest.mark.parametrize("codec", CODECS)
async def test_the_output_producer_writes_every_codec(any_broker: BrokerService, codec: str) -> None:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    settings = topics.settings(any_broker.bootstrap, kafka_compression=codec)
    topic = topics.intents
    producer = output_producer(settings, idempotent=any_broker.capabilities.supports_idempotence)
    await producer.start()
    try:
        values = [orjson.dumps({"n": i, "pad": "routed intent " * 20}) for i in range(5)]
        futures = [await producer.send(topic, v, key=b"k", headers=None) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    raw = RawFetcher(client_options(settings), max_partition_bytes=1 << 20)
    try:
        fetched = await raw.fetch({TopicPartition(topic, p): 0 for p in range(2)})
    finally:
        await raw.close()
    batches = [rs.data for rs in fetched.values() if rs.data]
    assert batches, "nothing was written"
    codecs = {int.from_bytes(data[_ATTRIBUTES_AT : _ATTRIBUTES_AT + 2], "big") & 0x07 for data in batches}
    assert codecs == {CODEC_IDS[codec]}
    async with TopicReader(any_broker.bootstrap, [topic]) as reader:
        records = await reader.wait_for(lambda rs: len(rs) >= len(values))
    assert sorted(r.value for r in records) == sorted(values)
