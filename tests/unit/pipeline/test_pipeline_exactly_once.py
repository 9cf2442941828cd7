"""The pipeline in exactly-once mode over in-memory transactions: every query's output visible once,
across a failed acknowledgement, a rebalance and a stop; a fenced replica stops."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.structs import TopicPartition
from pipeline_fakes import FakeConsumer, HashingEncoder, running, until
from txn_fakes import FakeTransactions

from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.pipeline import QueryPipeline
from worker.pipeline.topic_limits import TopicLimits
from worker.pipeline.transaction_errors import TransactionFatal
from worker.pipeline.transactions import transactional_id
from worker.routing import Router
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)


def query(i: int) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": f"play some jazz music number {i}"})


def answered(cluster: FakeTransactions) -> list[str]:
    """Query ids of the routed intents and the dead letters read_committed readers see."""
    ids = [RoutedIntent.model_validate_json(v).query_id for v in cluster.values("routed-intents")]
    for value in cluster.values("queries.dlq"):
        letter = DeadLetter.model_validate_json(value)
        ids.append(f"dlq@{letter.source.partition}:{letter.source.offset}")
    return sorted(ids)


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer()


@pytest.fixture
def cluster(consumer: FakeConsumer) -> FakeTransactions:
    return FakeTransactions(group_offsets=consumer.committed)


@pytest.fixture
def pipeline(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    consumer: FakeConsumer,
    cluster: FakeTransactions,
) -> QueryPipeline:
    exactly_once = settings.model_copy(
        update={"processing_guarantee": "exactly_once", "transaction_interval_ms": 0}
    )
    return QueryPipeline(
        exactly_once,
        encoder=encoder,
        router=router,
        telemetry=telemetry,
        consumer=consumer,
        transactional_producers=cluster.producer,
    )


async def test_every_query_is_answered_once_with_its_offsets_in_the_same_transaction(
    pipeline: QueryPipeline, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    for i in range(20):
        consumer.append(i % 2, query(i))
    consumer.append(0, b"{broken")
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    assert answered(cluster) == sorted([f"q{i}" for i in range(20)] + ["dlq@0:10"])
    assert consumer.commits == []  # no offset commit outside a transaction
    assert {txn_id for txn_id, _ in cluster.commits} == {"routeworker/queries/0", "routeworker/queries/1"}
    assert all(p.stopped for p in cluster.producers)


async def test_a_failed_acknowledgement_aborts_and_the_queries_are_answered_once(
    pipeline: QueryPipeline, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    failed: list[bytes] = []

    def fail_once(sent: object) -> bool:
        value: bytes = sent.value  # type: ignore[attr-defined]
        if b'"q7"' in value and not failed:
            failed.append(value)
            return True
        return False

    cluster.fail = fail_once
    for i in range(30):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    assert failed
    assert pipeline.exactly_once is not None
    assert pipeline.exactly_once.rewinds == 1
    assert answered(cluster) == sorted(f"q{i}" for i in range(30))


async def test_a_rebalance_mid_stream_answers_every_query_once(
    pipeline: QueryPipeline, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    for i in range(24):
        consumer.append(i % 2, query(i))
    with running(pipeline) as task:
        await until(lambda: len(cluster.visible) >= 4)
        await consumer.rebalance({P1})
        await until(lambda: consumer.committed.get(P1) == 12)
        await consumer.rebalance({P0, P1})
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    assert answered(cluster) == sorted(f"q{i}" for i in range(24))
    # every assignment started new producers: each fenced the one before it
    assert cluster.epochs[transactional_id("routeworker", P1)] >= 2


async def test_a_fenced_replica_stops(
    pipeline: QueryPipeline, consumer: FakeConsumer, cluster: FakeTransactions
) -> None:
    consumer.append(0, query(0))
    with running(pipeline) as task:
        await until(lambda: consumer.committed.get(P0) == 1)
        await cluster.producer(transactional_id("routeworker", P0)).start()  # another owner
        consumer.append(0, query(1))
        with pytest.raises(ExceptionGroup) as stopped:
            await asyncio.wait_for(task, 5)
    fatal = stopped.value.subgroup(TransactionFatal)
    assert fatal is not None
    assert "fenced" in str(fatal.exceptions[0])
    assert answered(cluster) == ["q0"]


async def test_an_intent_too_large_for_its_topic_is_dead_lettered_inside_the_transaction(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    consumer: FakeConsumer,
    cluster: FakeTransactions,
) -> None:
    # a refused record would abort the transaction, and the same input come back for ever
    exactly_once = settings.model_copy(
        update={"processing_guarantee": "exactly_once", "transaction_interval_ms": 0}
    )
    pipeline = QueryPipeline(
        exactly_once,
        encoder=encoder,
        router=router,
        telemetry=telemetry,
        consumer=consumer,
        transactional_producers=cluster.producer,
        topic_limits=TopicLimits({"routed-intents": 120}),
    )
    for i in range(6):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    assert cluster.values("routed-intents") == []
    letters = [DeadLetter.model_validate_json(v) for v in cluster.values("queries.dlq")]
    assert sorted(letter.source.offset for letter in letters) == list(range(6))
    assert {letter.error_code for letter in letters} == {"intent_too_large"}
    assert pipeline.exactly_once is not None
    assert pipeline.exactly_once.rewinds == 0
