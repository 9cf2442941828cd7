"""Batches close when full or when the wait since their first record is over."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import TopicPartition
from pipeline_fakes import ConsumerRecord, FakeConsumer

from worker.config import load_settings
from worker.pipeline import Batcher


class ScriptedConsumer:
    """Answers each ``getmany`` from a script, advancing a fake clock by the wait it was given."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.now = 0.0
        self.calls: list[tuple[int, int | None]] = []

    def clock(self) -> float:
        return self.now

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        self.calls.append((timeout_ms, max_records))
        offsets = self.script.pop(0) if self.script else []
        if not offsets:
            self.now += timeout_ms / 1000
            return {}
        tp = TopicPartition("queries", 0)
        return {tp: [ConsumerRecord("queries", 0, o, 0, None, b"{}") for o in offsets]}


async def test_a_full_batch_is_handed_over_without_waiting() -> None:
    consumer = ScriptedConsumer([[0, 1, 2, 3, 4]])
    batcher = Batcher(consumer, batch_size=5, batch_wait_s=1.0, clock=consumer.clock)
    batch = await batcher.next_batch()
    assert [r.offset for r in batch] == [0, 1, 2, 3, 4]
    assert len(consumer.calls) == 1


async def test_a_partial_batch_fills_up_until_the_wait_is_over() -> None:
    consumer = ScriptedConsumer([[0, 1], [2], [], [3]])
    batcher = Batcher(consumer, batch_size=10, batch_wait_s=0.05, clock=consumer.clock)
    batch = await batcher.next_batch()
    assert [r.offset for r in batch] == [0, 1, 2]
    # the follow-up polls ask only for the room left, and wait no longer than the deadline
    assert consumer.calls[1] == (50, 8)
    assert consumer.calls[2][1] == 7
    assert all(timeout <= 50 for timeout, _ in consumer.calls[1:])
    assert consumer.script == [[3]]  # the next batch starts with it


async def test_by_default_a_partial_batch_is_handed_over_after_one_fetch() -> None:
    # the served default waits for nothing: what arrived while the encoder was busy is the batch
    consumer = ScriptedConsumer([[0, 1], [2]])
    wait_s = load_settings().batch_wait_ms / 1000
    batch = await Batcher(consumer, batch_size=10, batch_wait_s=wait_s, clock=consumer.clock).next_batch()
    assert [r.offset for r in batch] == [0, 1]
    assert len(consumer.calls) == 1
    assert consumer.script == [[2]]


async def test_an_idle_poll_gives_an_empty_batch() -> None:
    consumer = ScriptedConsumer([])
    assert await Batcher(consumer, 4, 0.01, clock=consumer.clock).next_batch() == []


async def test_records_fetched_before_a_revocation_are_dropped_later_ones_kept() -> None:
    consumer = FakeConsumer()
    await consumer.start()
    consumer.append(0, b"{}")
    batcher = Batcher(consumer, batch_size=10, batch_wait_s=0.05)

    original = consumer.getmany
    calls = 0

    async def revoke_during_fill(timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            batcher.revoke(consumer.assignment())
            batcher.assigned()
            consumer.append(1, b"{}")  # fetched under the new assignment
        return await original(timeout_ms=timeout_ms, max_records=max_records)

    consumer.getmany = revoke_during_fill  # type: ignore[method-assign]
    assert [(r.partition, r.offset) for r in await batcher.next_batch()] == [(1, 0)]


async def test_records_of_a_partition_being_revoked_are_dropped_until_the_new_assignment() -> None:
    consumer = FakeConsumer()
    await consumer.start()
    p0, _p1 = TopicPartition("queries", 0), TopicPartition("queries", 1)
    batcher = Batcher(consumer, batch_size=10, batch_wait_s=0.0)
    batcher.revoke({p0})  # the revocation is under way; p1 stays
    consumer.append(0, b"{}")
    consumer.append(1, b"{}")
    # a client that still hands over records of the partition being revoked: they never start a batch
    assert [(r.partition, r.offset) for r in await batcher.next_batch()] == [(1, 0)]
    batcher.assigned()  # p0 assigned again: read again from its committed offset
    consumer.positions[p0] = 0
    assert [(r.partition, r.offset) for r in await batcher.next_batch()] == [(0, 0)]
