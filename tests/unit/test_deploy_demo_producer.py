"""The compose stack's demo producer against the private broker: valid queries, and DLQ fodder."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import Settings
from worker.contracts import decode_query
from worker.errors import ContractError, ErrorCode
from worker.local.broker import LocalBroker

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "demo_producer.py"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_producer", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_producer"] = module
    spec.loader.exec_module(module)
    return module


def test_every_bad_every_th_record_is_malformed(demo: ModuleType, base_settings: Settings) -> None:
    codes = []
    for index in range(12):
        key, value = demo.demo_record("run", index, bad_every=4)
        assert key.startswith(b"conversation-")
        try:
            query = decode_query(value, base_settings.limits)
        except ContractError as error:
            codes.append(error.code)
            assert (index + 1) % 4 == 0
        else:
            assert (index + 1) % 4 != 0
            assert query.id == f"demo-run-{index}"
    assert codes == [ErrorCode.INVALID_JSON, ErrorCode.EMPTY_TEXT, ErrorCode.SCHEMA]


def test_producer_options_carry_sasl(demo: ModuleType) -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="demo",
        kafka_sasl_password="pw",  # type: ignore[arg-type]
    )
    options = demo.producer_options(settings)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "pw"
    assert "ssl_context" not in options


async def test_produces_to_the_queries_topic(
    demo: ModuleType, broker: LocalBroker, base_settings: Settings
) -> None:
    topic = f"queries-demo-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    settings = base_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_queries": topic})
    assert await demo.produce(settings, count=10, rate=0, bad_every=5) == 10

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < 10:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values += [r.value for r in batch.get(tp, []) if r.value is not None]
    finally:
        await consumer.stop()
    valid = 0
    for value in values:
        try:
            decode_query(value, base_settings.limits)
            valid += 1
        except ContractError:
            pass
    assert valid == 8


def test_producer_options_are_the_workers_connection_options(demo: ModuleType) -> None:
    from worker.kafka_client import client_options

    settings = Settings(kafka_security_protocol="SSL", kafka_request_timeout_ms=12_000)
    options = demo.producer_options(settings)
    shared = client_options(settings)
    assert options["client_id"] == "routeworker-demo-producer"
    assert options["acks"] == "all"
    assert {k: v for k, v in options.items() if k not in ("client_id", "acks", "ssl_context")} == {
        k: v for k, v in shared.items() if k not in ("client_id", "ssl_context")
    }
    assert "ssl_context" in options
