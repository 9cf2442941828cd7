"""The replay's traffic sample on Apache Kafka, whose offsets-for-times is exact: a window keeps only
its records, a count the most recent ones across partitions, malformed records are counted."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.app.traffic_sample import SampleSpec, SampleUnavailable, read_sample
from worker.config import load_settings
from worker.local.kafka import LocalKafka

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


async def _topic(bootstrap: str, partitions: int) -> str:
    name = f"queries-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def test_a_window_a_count_and_malformed_records(kafka_broker: LocalKafka) -> None:
    topic = await _topic(kafka_broker.bootstrap, 2)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:
        sent = []
        for i in range(6):  # two hours old: outside a one-hour window
            value = orjson.dumps({"id": f"old{i}", "text": f"old query {i}"})
            sent.append(await producer.send(topic, value, partition=i % 2, timestamp_ms=now_ms - 2 * HOUR_MS))
        for i in range(10):
            value = orjson.dumps({"id": f"new{i}", "text": f"new query {i}", "metadata": {"user": "u"}})
            sent.append(await producer.send(topic, value, partition=i % 2, timestamp_ms=now_ms - 1000 + i))
        sent.append(await producer.send(topic, b"{broken", partition=1, timestamp_ms=now_ms))
        for future in sent:
            await future
    finally:
        await producer.stop()
    settings = load_settings(kafka_bootstrap=kafka_broker.bootstrap, topic_queries=topic)

    window = await read_sample(settings, SampleSpec.parse("1h"), now_ms=now_ms + 1)
    assert sorted(q.id for q in window.queries) == sorted(f"new{i}" for i in range(10))
    assert window.records == 11
    assert window.malformed == {"invalid_json": 1}

    bounded = await read_sample(settings, SampleSpec.parse("1h", limit=4), now_ms=now_ms + 1)
    assert bounded.records == 4  # shared between the partitions: the most recent of each
    assert {q.partition for q in bounded.queries} == {0, 1}

    last = await read_sample(settings, SampleSpec.parse("5"))
    assert last.records == 5
    assert {q.id for q in last.queries} <= {f"new{i}" for i in range(10)}

    everything = await read_sample(settings, SampleSpec.parse("100"))
    assert everything.records == 17
    assert len(everything.queries) == 16


async def test_a_missing_topic_is_unavailable(kafka_broker: LocalKafka) -> None:
    settings = load_settings(
        kafka_bootstrap=kafka_broker.bootstrap, topic_queries=f"absent-{uuid.uuid4().hex}"
    )
    with pytest.raises(SampleUnavailable, match="does not exist"):
        await read_sample(settings, SampleSpec.parse("1h"))
