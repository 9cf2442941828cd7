"""The pipeline end to end over in-memory consumer and producer stand-ins."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka.structs import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pipeline_fakes import FakeConsumer, FakeProducer, HashingEncoder, running, until

from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.pipeline import QueryPipeline
from worker.pipeline.search import RouterBroken
from worker.routing import Router
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)
P1 = TopicPartition("queries", 1)
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM = f"00-{UPSTREAM_TRACE}-00f067aa0ba902b7-01".encode()


def query(i: int, text: str = "play some jazz music", **extra: object) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": text, **extra})


def intents(producer: FakeProducer) -> list[RoutedIntent]:
    return [RoutedIntent.model_validate_json(s.value) for s in producer.acked if s.topic == "routed-intents"]


def letters(producer: FakeProducer) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(s.value) for s in producer.acked if s.topic == "queries.dlq"]


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer()


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def pipeline(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    consumer: FakeConsumer,
    producer: FakeProducer,
) -> QueryPipeline:
    return QueryPipeline(
        settings, encoder=encoder, router=router, telemetry=telemetry, consumer=consumer, producers=producer
    )


async def test_every_record_gives_one_output_and_offsets_reach_the_end(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, telemetry: Telemetry
) -> None:
    for i in range(10):
        consumer.append(i % 2, query(i, metadata={"n": i}), key=f"k{i}".encode())
    consumer.append(0, b"{broken", key=b"bad-0")
    consumer.append(1, b'{"id": "x", "text": ""}')
    consumer.append(1, query(10, "what is the weather today"))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    routed = intents(producer)
    assert sorted(i.query_id for i in routed) == sorted(f"q{i}" for i in range(11))
    by_id = {i.query_id: i for i in routed}
    assert by_id["q3"].metadata == {"n": 3}
    assert by_id["q3"].route == "music"
    assert by_id["q10"].route == "weather"
    assert len(by_id["q3"].candidates) == 2  # settings.top_n
    assert by_id["q3"].routes_version == {"0": 3}
    keys = {
        RoutedIntent.model_validate_json(s.value).query_id: s.key
        for s in producer.acked
        if s.topic == "routed-intents"
    }
    assert keys["q4"] == b"k4"
    assert sorted(d.error_code.value for d in letters(producer)) == ["empty_text", "invalid_json"]
    value = telemetry.registry.get_sample_value
    assert value("routeworker_queries_routed_total") == 11
    assert value("routeworker_queries_dead_lettered_total", {"error_code": "invalid_json"}) == 1


async def test_output_follows_consumption_order_within_a_partition(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer
) -> None:
    for i in range(40):
        consumer.append(0, query(i, f"send money number {i}"), key=b"same-key")
    with running(pipeline) as task:
        await until(lambda: consumer.committed == consumer.end_offsets())
    await asyncio.wait_for(task, 5)
    sent_ids = [RoutedIntent.model_validate_json(s.value).query_id for s in producer.sent]
    assert sent_ids == [f"q{i}" for i in range(40)]


async def test_nothing_is_committed_past_an_unacknowledged_output(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer
) -> None:
    producer.hold = asyncio.Event()
    for i in range(4):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: len(producer.sent) == 4)
        assert await pipeline.committer.commit("test") == {}
        assert consumer.commits == []
        producer.hold.set()
        await until(lambda: consumer.committed == {P0: 4})
    await asyncio.wait_for(task, 5)


async def test_a_failed_produce_is_retried_and_holds_back_later_commits(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, telemetry: Telemetry
) -> None:
    give_up_failing = asyncio.Event()
    producer.fail = lambda record, attempt: (
        record.value.startswith(b'{"query_id":"q0"') and not give_up_failing.is_set()
    )
    for i in range(12):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: bool(producer.sent) and producer.attempts[producer.sent[0].value] >= 3)
        others = [s for s in producer.sent if not s.value.startswith(b'{"query_id":"q0"')]
        await until(lambda: producer.attempts[producer.sent[0].value] >= 5)
        assert consumer.commits == []  # q0 is at offset 0: nothing passes it
        # while q0 is being retried, later batches wait: nothing more is sent but q0
        assert [s for s in producer.sent if not s.value.startswith(b'{"query_id":"q0"')] == others
        give_up_failing.set()
        await until(lambda: consumer.committed == {P0: 12})
    await asyncio.wait_for(task, 5)
    assert sorted(int(i.query_id[1:]) for i in intents(producer)) == list(range(12))
    text = telemetry.metrics_text()
    assert "routeworker_produce_retries_total" in text
    assert 'error="KafkaTimeoutError",remedy="retry"' in text


async def test_partitions_pause_while_the_in_flight_window_is_full(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, settings: Settings
) -> None:
    producer.hold = asyncio.Event()
    for i in range(40):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: len(consumer.paused()) > 0)
        window = settings.max_in_flight_batches * settings.batch_size
        assert consumer.positions[P0] == window
        assert len(pipeline.tracker) == settings.max_in_flight_batches
        producer.hold.set()
        await until(lambda: consumer.committed == {P0: 40})
        assert consumer.paused() == set()
    await asyncio.wait_for(task, 5)


async def test_revoke_finishes_and_commits_in_flight_work_first(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, telemetry: Telemetry
) -> None:
    producer.hold = asyncio.Event()
    telemetry.health.routes_caught_up()  # as the application says before it starts the pipeline
    for i in range(6):
        consumer.append(i % 2, query(i))
    with running(pipeline) as task:
        await until(lambda: len(producer.sent) == 6)
        assert telemetry.health.readiness() == (True, "ready: route table caught up, 2 partitions assigned")
        rebalance = asyncio.create_task(consumer.rebalance({P1}))
        # the revoke handler says "rebalancing", then waits for the unacknowledged batches
        await until(lambda: telemetry.health.readiness()[1] == "rebalancing")
        assert not rebalance.done()
        assert consumer.commits == []
        producer.hold.set()
        await asyncio.wait_for(rebalance, 5)
        assert telemetry.health.readiness() == (True, "ready: route table caught up, 1 partition assigned")
        assert consumer.commits[-1] == {P0: 3, P1: 3}
        consumer.append(1, query(6))
        await until(lambda: consumer.committed.get(P1) == 4)
    await asyncio.wait_for(task, 5)
    assert sorted(i.query_id for i in intents(producer)) == [f"q{i}" for i in range(7)]


async def test_stop_finishes_in_flight_work_then_commits_and_closes(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, telemetry: Telemetry
) -> None:
    producer.hold = asyncio.Event()
    for i in range(8):
        consumer.append(0, query(i))
    task = asyncio.create_task(pipeline.run())
    await until(lambda: len(producer.sent) == 8)
    pipeline.stop()
    # consuming has ended ("stopping"); the pipeline now waits for the unacknowledged batches
    await until(lambda: telemetry.health.readiness()[1] == "stopping")
    assert not task.done()
    assert consumer.commits == []
    producer.hold.set()
    await asyncio.wait_for(task, 5)
    assert consumer.committed == {P0: 8}
    assert not producer.started
    assert consumer.assigned == set()


async def test_a_router_that_fails_on_every_query_stops_the_pipeline_loudly(
    pipeline: QueryPipeline,
    consumer: FakeConsumer,
    producer: FakeProducer,
    router: Router,
    telemetry: Telemetry,
) -> None:
    def broken(*args: object) -> list[object]:
        raise ZeroDivisionError("bug in the router")

    router.decide = broken  # type: ignore[method-assign]
    consumer.append(0, query(0))
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(pipeline.run(), 5)
    # the probe query fails too: a broken router, not a poison query
    assert caught.group_contains(RouterBroken, match="bug in the router")
    assert consumer.commits == []
    assert producer.sent == []  # nothing dead-lettered: the whole stream would have been
    assert not producer.started
    assert not telemetry.health.liveness()[0]


async def test_a_query_the_router_fails_on_is_dead_lettered_and_the_rest_of_its_batch_routed(
    pipeline: QueryPipeline,
    consumer: FakeConsumer,
    producer: FakeProducer,
    router: Router,
    encoder: HashingEncoder,
    telemetry: Telemetry,
) -> None:
    poison = encoder.embed_sync(["poison pill"])[0]
    decide = router.decide

    def fails_on_the_poison(vectors: Any, top_n: Any) -> Any:
        if any(np.array_equal(row, poison) for row in vectors):
            raise IndexError("a bug this one query trips")
        return decide(vectors, top_n)

    router.decide = fails_on_the_poison  # type: ignore[method-assign]
    consumer.append(0, query(0, "play some jazz music"))
    consumer.append(0, query(1, "poison pill"), key=b"bad")
    consumer.append(0, query(2, "send money"))
    consumer.append(0, query(3, "what is the weather today"))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == {P0: 4})
        consumer.append(0, query(4, "poison pill"))  # alone in its batch: a probe tells it apart
        consumer.append(1, query(5, "play music"))
        await until(lambda: consumer.committed == {P0: 5, P1: 1})
    await asyncio.wait_for(task, 5)
    assert sorted(i.query_id for i in intents(producer)) == ["q0", "q2", "q3", "q5"]
    dead = letters(producer)
    assert [(d.error_code.value, d.source.offset) for d in dead] == [
        ("routing_failed", 1),
        ("routing_failed", 4),
    ]
    assert "IndexError: a bug this one query trips" in dead[0].reason
    assert 'error_code="routing_failed"} 2' in telemetry.metrics_text()


async def test_a_failing_rebalance_handler_stops_the_pipeline(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer
) -> None:
    async def failing_commit(offsets: object) -> None:
        raise RuntimeError("coordinator exploded")

    producer.hold = asyncio.Event()
    for i in range(2):
        consumer.append(0, query(i))
    task = asyncio.create_task(pipeline.run())
    await until(lambda: len(producer.sent) == 2)
    consumer.commit = failing_commit  # type: ignore[method-assign]
    rebalance = asyncio.create_task(consumer.rebalance({P0}))
    producer.hold.set()
    with pytest.raises(RuntimeError):
        await rebalance
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.group_contains(RuntimeError, match="coordinator exploded")


async def test_the_routed_intent_continues_the_query_trace(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, spans: InMemorySpanExporter
) -> None:
    consumer.append(0, query(0), headers=[("traceparent", UPSTREAM), ("tenant", b"acme")])
    consumer.append(0, query(1))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == {P0: 2})
    await asyncio.wait_for(task, 5)
    by_id = {
        RoutedIntent.model_validate_json(s.value).query_id: dict(s.headers or []) for s in producer.acked
    }
    traced = by_id["q0"]
    assert traced["tenant"] == b"acme"
    assert traced["traceparent"].decode().split("-")[1] == UPSTREAM_TRACE
    finished = spans.get_finished_spans()
    names = {s.name for s in finished}
    assert {
        "routeworker.batch",
        "routeworker.decode",
        "routeworker.embed",
        "routeworker.search",
        "routeworker.produce",
    } <= names
    (batch,) = [s for s in finished if s.name == "routeworker.batch"]
    for step in ("routeworker.decode", "routeworker.embed", "routeworker.search", "routeworker.produce"):
        (child,) = [s for s in finished if s.name == step]
        assert child.parent is not None
        assert child.parent.span_id == batch.context.span_id
    (upstream_span,) = [s for s in finished if s.name == "routeworker.route"]  # only q0 has a trace
    assert upstream_span.attributes is not None
    assert upstream_span.attributes["routeworker.query_id"] == "q0"
    assert format(upstream_span.context.trace_id, "032x") == UPSTREAM_TRACE
    assert upstream_span.parent is not None
    assert upstream_span.parent.span_id == 0x00F067AA0BA902B7
    assert upstream_span.links[0].context.span_id == batch.context.span_id
    assert traced["traceparent"].decode().split("-")[2] == format(upstream_span.context.span_id, "016x")
    # without an upstream trace the intent continues the batch's trace
    _, trace_id, span_id, _ = by_id["q1"]["traceparent"].decode().split("-")
    assert trace_id == format(batch.context.trace_id, "032x")
    assert span_id == format(batch.context.span_id, "016x")


async def test_queries_arriving_while_the_encoder_is_busy_wait_to_form_one_batch(
    pipeline: QueryPipeline, consumer: FakeConsumer, encoder: HashingEncoder
) -> None:
    busy = asyncio.Event()
    release = asyncio.Event()
    calls: list[int] = []
    original = encoder.embed

    async def slow_embed(texts: list[str]) -> object:
        calls.append(len(texts))
        busy.set()
        await release.wait()
        return await original(texts)

    encoder.embed = slow_embed  # type: ignore[method-assign]
    consumer.append(0, query(0, "first query alone"))
    with running(pipeline) as task:
        await asyncio.wait_for(busy.wait(), 5)
        consumer.append(0, query(1, "queued query 1"))  # fetched at once: a batch of one
        # one encoder session: one batch embedding, one waiting ready, and the consume loop parked
        # at the embed gate, not in a fetch: what arrives now stays in the consumer
        await until(lambda: calls == [1, 1] and pipeline.embed_gate.waiting == 1)
        for i in range(2, 5):
            consumer.append(0, query(i, f"queued query {i}"))
        release.set()
        await until(lambda: consumer.committed == {P0: 5})
    await asyncio.wait_for(task, 5)
    assert calls == [1, 1, 3]


async def test_a_query_the_model_cannot_embed_is_dead_lettered_and_the_rest_routed(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer, encoder: HashingEncoder
) -> None:
    encoder.fail_on = lambda text: "poison" in text
    consumer.append(0, query(0, "play some jazz music"))
    consumer.append(0, query(1, "poison pill"), key=b"bad")
    consumer.append(0, query(2, "send money"))
    with running(pipeline) as task:
        await until(lambda: consumer.committed == {P0: 3})
        consumer.append(0, query(3, "poison alone in its batch"))
        await until(lambda: consumer.committed == {P0: 4})
    await asyncio.wait_for(task, 5)
    assert sorted(i.query_id for i in intents(producer)) == ["q0", "q2"]
    assert [(d.error_code.value, d.source.offset) for d in letters(producer)] == [
        ("processing", 1),
        ("processing", 3),
    ]
    assert "cannot embed" in letters(producer)[0].reason


async def test_work_unfinished_within_the_grace_period_fails_the_stop_and_stays_uncommitted(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    consumer: FakeConsumer,
    producer: FakeProducer,
) -> None:
    from worker.pipeline import ShutdownTimeout

    hurried = settings.model_copy(update={"shutdown_timeout_s": 0.2})
    pipeline = QueryPipeline(
        hurried, encoder=encoder, router=router, telemetry=telemetry, consumer=consumer, producers=producer
    )
    producer.hold = asyncio.Event()  # the broker never acknowledges
    consumer.append(0, query(0))
    task = asyncio.create_task(pipeline.run())
    await until(lambda: len(producer.sent) == 1)
    pipeline.stop()
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.group_contains(ShutdownTimeout)
    assert consumer.commits == []
    producer.hold.set()


async def test_partitions_being_revoked_start_no_batch_and_nothing_is_processed_twice(
    pipeline: QueryPipeline, consumer: FakeConsumer, producer: FakeProducer
) -> None:
    producer.hold = asyncio.Event()
    consumer.append(0, query(0))
    with running(pipeline) as task:
        await until(lambda: len(producer.sent) == 1)
        # an eager rebalance: everything is revoked, then the same partitions come back
        rebalance = asyncio.create_task(consumer.rebalance({P0, P1}))
        await until(lambda: consumer.paused() == {P0, P1})  # fetching for them stopped at once
        for i in range(1, 5):  # arrive while the revoke waits for the batch in flight
            consumer.append(i % 2, query(i))
        await until(lambda: consumer.fetches > 3)  # the consume loop keeps polling meanwhile
        assert len(pipeline.tracker) == 1
        assert len(producer.sent) == 1
        producer.hold.set()
        await asyncio.wait_for(rebalance, 5)
        await until(lambda: consumer.committed == {P0: 3, P1: 2})
    await asyncio.wait_for(task, 5)
    sent_ids = [RoutedIntent.model_validate_json(s.value).query_id for s in producer.sent]
    assert sorted(sent_ids) == [f"q{i}" for i in range(5)]  # each once


async def test_a_batch_finishing_after_its_partition_was_revoked_never_commits_it(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    consumer: FakeConsumer,
    producer: FakeProducer,
) -> None:
    """The revoke gives up waiting for a batch (it takes longer than the grace period); the
    partition's next owner commits further; this replica gets the partition back; then the late
    batch finishes. Its offset is below the new owner's: committing it would go backwards."""
    hurried = settings.model_copy(update={"shutdown_timeout_s": 0.2})
    pipeline = QueryPipeline(
        hurried, encoder=encoder, router=router, telemetry=telemetry, consumer=consumer, producers=producer
    )
    producer.hold = asyncio.Event()
    for i in range(3):
        consumer.append(0, query(i))
    with running(pipeline) as task:
        await until(lambda: len(producer.sent) == 3)
        await asyncio.wait_for(consumer.rebalance({P1}), 5)  # P0 goes while its batch is in flight
        for i in range(3, 6):
            consumer.append(0, query(i))
        consumer.committed[P0] = 6  # its next owner processed everything and committed
        await asyncio.wait_for(consumer.rebalance({P0, P1}), 5)  # and P0 comes back
        producer.hold.set()  # the late batch finishes now
        await until(lambda: len(pipeline.tracker) == 0)
        assert await pipeline.committer.commit("test") == {}  # it releases no offset of P0
        consumer.append(0, query(6))
        await until(lambda: consumer.committed.get(P0) == 7)
    await asyncio.wait_for(task, 5)
    p0_commits = [c[P0] for c in consumer.commits if P0 in c]
    assert p0_commits == sorted(p0_commits), consumer.commits  # never backwards
    assert min(p0_commits) > 6, consumer.commits  # never below the new owner's
