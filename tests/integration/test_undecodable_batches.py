"""A corrupt record batch on Apache Kafka: skipped exactly, dead-lettered, committed past, not refetched.

The batch is damaged where damage really happens: bytes flipped in the partition's segment file in
the broker's log directory. Kafka serves fetches from its files without checking CRCs again, so
the consumer receives the damaged batch as a disk or a faulty producer would leave it. (Tansu
keeps its logs in memory: there is no file to damage.)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pipeline_harness import TopicReader, Topics, build_table, committed_offsets, create_topics

from worker.contracts import DeadLetter, RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.errors import ErrorCode
from worker.local.kafka import LocalKafka
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration

_LOG_HEADER = struct.Struct(">qi")  # base offset, length of the rest of the batch


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


def query(i: int) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": "will it rain in paris tomorrow"})


async def produce_batches(bootstrap: str, topic: str, partition: int, batches: list[list[int]]) -> None:
    """Each list of query numbers as one record batch of its own, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for numbers in batches:
            batch = producer.create_batch()
            for i in numbers:
                assert batch.append(key=f"k{i}".encode(), value=query(i), timestamp=None) is not None
            await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def corrupt_batch(segment: Path, base_offset: int) -> bytes:
    """Flip one byte in the records of the batch at ``base_offset`` (under its CRC); returns its bytes."""
    data = bytearray(segment.read_bytes())
    pos = 0
    while pos + _LOG_HEADER.size <= len(data):
        base, length = _LOG_HEADER.unpack_from(data, pos)
        end = pos + _LOG_HEADER.size + length
        if base == base_offset:
            data[end - 3] ^= 0xFF
            with segment.open("r+b") as file:  # in place: the broker keeps serving this file
                file.seek(end - 3)
                file.write(bytes([data[end - 3]]))
            return bytes(data[pos:end])
        pos = end
    raise AssertionError(f"no batch at offset {base_offset} in {segment}")


async def route_until_committed(
    pipeline: QueryPipeline, bootstrap: str, topics: Topics, wanted: dict[int, int]
) -> None:
    running = asyncio.create_task(pipeline.run())
    try:
        async with asyncio.timeout(90):
            while await committed_offsets(bootstrap, topics.group, topics.queries) != wanted:
                assert not running.done(), "the pipeline stopped"
                await asyncio.sleep(0.2)
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 30)


async def test_a_corrupt_batch_is_dead_lettered_skipped_exactly_and_never_fetched_again(
    kafka_broker: LocalKafka, encoder: EncoderPool, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = Topics.fresh()
    await create_topics(bootstrap, topics)
    # partition 1: offsets 0-2, 3-5 (to be damaged), 6-8; partition 0 beside it, read in the same fetches
    await produce_batches(bootstrap, topics.queries, 1, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    await produce_batches(bootstrap, topics.queries, 0, [[10, 11], [12, 13, 14]])
    segment = kafka_broker.node(1).data_dir / f"{topics.queries}-1" / f"{0:020d}.log"
    damaged = corrupt_batch(segment, 3)

    router = Router(build_table(encoder))
    telemetry = Telemetry(replica_id="undecodable-test")
    async with TopicReader(bootstrap, [topics.intents, topics.dlq]) as reader:
        with caplog.at_level(logging.ERROR, logger="worker.pipeline.undecodable"):
            first = QueryPipeline(
                topics.settings(bootstrap), encoder=encoder, router=router, telemetry=telemetry
            )
            await route_until_committed(first, bootstrap, topics, {0: 5, 1: 9})
        await reader.wait_for(lambda rs: len(rs) >= 12)
        routed = [
            RoutedIntent.model_validate_json(r.value).query_id
            for r in reader.records
            if r.topic == topics.intents
        ]
        assert sorted(routed) == sorted(f"q{i}" for i in [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 14])
        (record,) = [r for r in reader.records if r.topic == topics.dlq]
        letter = DeadLetter.model_validate_json(record.value)
        assert letter.error_code is ErrorCode.UNDECODABLE_BATCH
        assert (letter.source.topic, letter.source.partition, letter.source.offset) == (topics.queries, 1, 3)
        assert "offsets 3..5" in letter.reason
        assert "CRC" in letter.reason
        assert letter.value_b64 is not None
        assert base64.b64decode(letter.value_b64) == damaged
        (line,) = [r.getMessage() for r in caplog.records if "undecodable record batch" in r.getMessage()]
        assert f"{topics.queries}[1] at offset 3 (next offset 6)" in line
        metrics = telemetry.metrics_text()
        assert (
            f'routeworker_consumer_undecodable_batches_total{{partition="1",topic="{topics.queries}"}} 1'
            in metrics
        )
        telemetry.shutdown()

        # a restarted replica resumes past the batch: it neither fetches nor reports it again
        caplog.clear()
        await produce_batches(bootstrap, topics.queries, 1, [[20]])
        again = Telemetry(replica_id="undecodable-restart")
        second = QueryPipeline(topics.settings(bootstrap), encoder=encoder, router=router, telemetry=again)
        with caplog.at_level(logging.ERROR, logger="worker.pipeline.undecodable"):
            await route_until_committed(second, bootstrap, topics, {0: 5, 1: 10})
        records = await reader.wait_for(lambda rs: len(rs) >= 13)
        again.shutdown()
    assert [RoutedIntent.model_validate_json(r.value).query_id for r in records[12:]] == ["q20"]
    assert not [r for r in caplog.records if "undecodable" in r.getMessage()]
