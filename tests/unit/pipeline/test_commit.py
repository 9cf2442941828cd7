"""Committing: only owned partitions, refusals during a rebalance kept and retried."""

from __future__ import annotations

import pytest
from aiokafka.errors import CommitFailedError
from aiokafka.structs import TopicPartition
from pipeline_fakes import FakeConsumer

from worker.pipeline import Committer, OffsetTracker
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)


async def test_offsets_of_partitions_given_up_are_not_committed(telemetry: Telemetry) -> None:
    consumer = FakeConsumer()
    await consumer.assign({P0})
    tracker = OffsetTracker()
    tracker.finish(tracker.start({P0: 5, P1: 7}))
    committer = Committer(consumer, tracker, 1.0, telemetry.metrics)
    assert await committer.commit("test") == {P0: 5}
    assert consumer.committed == {P0: 5}
    assert not tracker.has_committable


async def test_a_refused_final_commit_is_retried_until_it_lands(telemetry: Telemetry) -> None:
    consumer = FakeConsumer()
    await consumer.start()
    refusals = 2
    original = consumer.commit

    async def refusing(offsets: dict[TopicPartition, int]) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise CommitFailedError("rebalance in progress")
        await original(offsets)

    consumer.commit = refusing  # type: ignore[method-assign]
    tracker = OffsetTracker()
    tracker.finish(tracker.start({P0: 3}))
    committer = Committer(consumer, tracker, 1.0, telemetry.metrics)
    await committer.commit_all("shutdown", within_s=5)
    assert consumer.committed == {P0: 3}
    assert refusals == 0


async def test_a_final_commit_that_never_lands_times_out(telemetry: Telemetry) -> None:
    consumer = FakeConsumer()
    await consumer.start()

    async def always_refused(offsets: dict[TopicPartition, int]) -> None:
        raise CommitFailedError("rebalance in progress")

    consumer.commit = always_refused  # type: ignore[method-assign]
    tracker = OffsetTracker()
    tracker.finish(tracker.start({P0: 3}))
    with pytest.raises(TimeoutError):
        await Committer(consumer, tracker, 1.0, telemetry.metrics).commit_all("shutdown", within_s=0.3)
    assert tracker.has_committable
