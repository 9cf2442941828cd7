"""The pipeline reports progress, assignment and rebalances to Health: /livez and /readyz follow it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from aiokafka.structs import TopicPartition
from pipeline_fakes import FakeConsumer, FakeProducer, HashingEncoder, until

from worker.config import Settings
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watched(clock: Clock) -> Iterator[Telemetry]:
    made = Telemetry(replica_id="replica-test", stall_after_s=60, clock=clock)
    made.health.routes_caught_up()  # as the application reports before it starts the pipeline
    yield made
    made.shutdown()


def query(i: int) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": "play some jazz music"})


async def test_a_produce_that_never_completes_fails_liveness_until_batches_finish_again(
    settings: Settings, encoder: HashingEncoder, router: Router, watched: Telemetry, clock: Clock
) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    producer.hold = asyncio.Event()  # the broker stops acknowledging
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=router, telemetry=watched, consumer=consumer, producers=producer
    )
    health = watched.health
    task = asyncio.create_task(pipeline.run())
    try:
        await until(health.is_ready)
        for i in range(8):
            consumer.append(0, query(i))
        await until(lambda: len(producer.sent) == 8)
        clock.now += 59
        assert health.liveness()[0]
        clock.now += 2
        alive, reason = health.liveness()
        assert not alive
        assert reason.startswith("stalled:")
        assert "batches in flight" in reason
        producer.hold.set()
        await until(lambda: health.liveness()[0])
        await until(lambda: consumer.committed == {TopicPartition("queries", 0): 8})
        clock.now += 3600  # nothing waiting: idle, alive
        assert health.liveness() == (True, "alive: nothing waiting")
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 5)
    assert health.readiness() == (False, "stopping")


async def test_readiness_follows_assignment_and_rebalances(
    settings: Settings, encoder: HashingEncoder, router: Router, watched: Telemetry
) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=router, telemetry=watched, consumer=consumer, producers=producer
    )
    health = watched.health
    assert health.readiness() == (False, "no partitions of the queries topic assigned")
    task = asyncio.create_task(pipeline.run())
    try:
        await until(health.is_ready)
        assert health.readiness()[1] == "ready: route table caught up, 2 partitions assigned"
        assert watched.registry.get_sample_value("routeworker_replica_ready") == 1
        producer.hold = asyncio.Event()
        consumer.append(1, query(0))
        await until(lambda: len(producer.sent) == 1)
        rebalance = asyncio.create_task(consumer.rebalance(set()))  # revoke waits for the batch
        await until(lambda: health.readiness()[1] == "rebalancing")
        assert watched.registry.get_sample_value("routeworker_replica_ready") == 0
        producer.hold.set()
        await asyncio.wait_for(rebalance, 5)
        assert health.readiness() == (False, "no partitions of the queries topic assigned")
        await consumer.rebalance({TopicPartition("queries", 0)})
        assert health.readiness() == (True, "ready: route table caught up, 1 partition assigned")
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 5)
