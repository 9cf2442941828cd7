"""Batches the client cannot decode: found in the raw bytes, dead-lettered, skipped, nothing else lost.

Record sets are real Kafka record batches (aiokafka's own builder); a corrupt one has a flipped
byte under its CRC, as a damaged disk or a buggy producer leaves it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence

import orjson
import pytest
from aiokafka.errors import CorruptRecordException, KafkaTimeoutError, UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition
from pipeline_fakes import ConsumerRecord, FakeConsumer, FakeProducer, HashingEncoder

from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.errors import ErrorCode
from worker.pipeline import QueryPipeline
from worker.pipeline.raw_fetch import RecordSet
from worker.pipeline.undecodable import UndecodableBatches, may_be_undecodable, scan
from worker.routing import Router
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)


def batch(base: int, values: Sequence[bytes], *, corrupt: bool = False) -> bytes:
    """One record batch (message format 2) of ``values`` at offsets ``base``...; a flipped byte if corrupt."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"k", value=value, headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base)  # the base offset is outside the CRC, as the broker sets it
    if corrupt:
        raw[-2] ^= 0xFF
    return bytes(raw)


def test_the_records_before_a_corrupt_batch_are_kept_and_the_batch_is_bounded() -> None:
    data = batch(0, [b"a", b"b", b"c"]) + batch(3, [b"d", b"e"], corrupt=True) + batch(5, [b"f"])
    scanned = scan(P1, 1, RecordSet(data, highwater=6))
    assert [(r.offset, r.value) for r in scanned.records] == [(1, b"b"), (2, b"c")]
    bad = scanned.bad
    assert bad is not None
    assert (bad.topic, bad.partition, bad.offset, bad.next_offset) == ("queries", 1, 3, 5)
    assert "CRC" in bad.reason
    assert bad.raw == batch(3, [b"d", b"e"], corrupt=True)
    stand_in = bad.stand_in()
    assert (stand_in.offset, stand_in.next_offset, stand_in.value) == (3, 5, bad.raw)
    assert stand_in.undecodable is not None
    assert "offsets 3..4" in stand_in.undecodable


def test_a_sound_record_set_has_no_bad_batch_and_a_cut_off_batch_waits_for_the_next_fetch() -> None:
    data = batch(0, [b"a", b"b"]) + batch(2, [b"c"])
    scanned = scan(P0, 0, RecordSet(data + batch(3, [b"d"])[:20], highwater=4))
    assert scanned.bad is None
    assert [r.value for r in scanned.records] == [b"a", b"b", b"c"]


def test_a_corrupt_last_offset_delta_never_reaches_into_the_next_batch() -> None:
    bad = bytearray(batch(0, [b"a", b"b"]))
    struct.pack_into(">i", bad, 23, 1_000_000)  # the header field is under the CRC: corrupt too
    scanned = scan(P0, 0, RecordSet(bytes(bad) + batch(2, [b"c"]), highwater=3))
    assert scanned.bad is not None
    assert scanned.bad.next_offset == 2
    last = scan(P0, 0, RecordSet(bytes(bad), highwater=2))
    assert last.bad is not None
    assert last.bad.next_offset == 2  # the partition's end bounds the last batch


def test_only_decoding_errors_are_inspected() -> None:
    assert may_be_undecodable(CorruptRecordException("Invalid CRC"))
    assert may_be_undecodable(UnsupportedCodecError("lz4"))
    assert may_be_undecodable(ValueError("a decompressor's error"))
    assert not may_be_undecodable(KafkaTimeoutError())


class BadBatchConsumer(FakeConsumer):
    """Fails like aiokafka on a batch it cannot decode: records already drained from other partitions
    in the same call are dropped (their positions moved on), the bad partition's position stays."""

    bad: dict[TopicPartition, range]

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        found = await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
        for tp, records in found.items():
            if any(r.offset in self.bad.get(tp, range(0)) for r in records):
                self.positions[tp] = records[0].offset
                raise CorruptRecordException(f"Invalid CRC - {tp}")
        return found


class FakeRawFetch:
    """Record sets of the fake consumer's log, one batch per record; ``bad`` ranges are one corrupt batch."""

    def __init__(self, consumer: BadBatchConsumer) -> None:
        self.consumer = consumer
        self.fetches = 0
        self.closed = False

    async def fetch(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, RecordSet]:
        self.fetches += 1
        out = {}
        for tp, position in positions.items():
            log = self.consumer.log[tp.partition]
            bad = self.consumer.bad.get(tp, range(0))
            data = b""
            offset = position
            while offset < len(log):
                if offset in bad:
                    data += batch(bad.start, [log[o].value or b"" for o in bad], corrupt=True)
                    offset = bad.stop
                else:
                    data += batch(offset, [log[offset].value or b""])
                    offset += 1
            out[tp] = RecordSet(data, highwater=len(log))
        return out

    async def close(self) -> None:
        self.closed = True


def query(i: int) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": "play some jazz music"})


async def until(condition: object, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - state of the fakes
            await asyncio.sleep(0.002)


async def test_the_pipeline_dead_letters_a_bad_batch_commits_past_it_and_loses_nothing(
    settings: Settings, encoder: HashingEncoder, router: Router, telemetry: Telemetry
) -> None:
    consumer = BadBatchConsumer()
    consumer.bad = {P1: range(1, 4)}
    # the first fetch drains partition 0 and then fails on partition 1: aiokafka drops the former
    for i in range(2):
        consumer.append(0, query(i))
    for i in range(8):
        consumer.append(1, query(100 + i))
    raw = FakeRawFetch(consumer)
    producer = FakeProducer()
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=router, telemetry=telemetry, consumer=consumer, producers=producer,
        raw=raw,
    )  # fmt: skip
    task = asyncio.create_task(pipeline.run())
    try:
        await until(lambda: consumer.committed == {P0: 2, P1: 8})
    finally:
        pipeline.stop()
    await asyncio.wait_for(task, 5)
    assert raw.closed
    routed = [
        RoutedIntent.model_validate_json(s.value).query_id
        for s in producer.acked
        if s.topic == "routed-intents"
    ]
    skipped = {f"q{100 + i}" for i in range(1, 4)}
    assert sorted(routed) == sorted({f"q{i}" for i in range(2)} | {f"q{100 + i}" for i in range(8)} - skipped)
    (letter,) = [DeadLetter.model_validate_json(s.value) for s in producer.acked if s.topic == "queries.dlq"]
    assert letter.error_code is ErrorCode.UNDECODABLE_BATCH
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == ("queries", 1, 1)
    assert "offsets 1..3" in letter.reason
    assert "CRC" in letter.reason
    assert letter.value_b64 is not None
    metrics = telemetry.metrics_text()
    assert 'routeworker_consumer_undecodable_batches_total{partition="1",topic="queries"} 1' in metrics
    assert 'error_code="undecodable_batch"' in metrics


async def test_an_error_no_batch_explains_is_raised_as_it_came() -> None:
    consumer = BadBatchConsumer()
    consumer.bad = {}
    await consumer.start()
    consumer.append(0, query(0))
    recovery = UndecodableBatches(consumer, FakeRawFetch(consumer))
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "not a batch's fault")
    with pytest.raises(UnicodeDecodeError):
        await recovery.recover(error, {})
    with pytest.raises(KafkaTimeoutError):
        await recovery.recover(KafkaTimeoutError(), {})
