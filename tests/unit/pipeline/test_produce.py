"""Delivery: every record acknowledged before returning; failures handled by the error policy, per-key
order kept through retries."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError
from pipeline_fakes import FakeProducer, Sent

from worker.contracts import DeadLetter
from worker.errors import ErrorCode
from worker.pipeline import Delivery, Outbound
from worker.pipeline.decode import Rejected, dead_letter
from worker.pipeline.produce_policy import ProduceError, Remedy, remedy_for
from worker.pipeline.producer_session import ProducerSession
from worker.pipeline.topic_limits import TopicLimits, record_size
from worker.pipeline.types import InputRecord
from worker.telemetry import Telemetry


def query_record(i: int, key: bytes | None) -> InputRecord:
    return InputRecord("queries", 0, i, 1_700_000_000_000, key, f'{{"id": "q{i}", "text": "t"}}'.encode())


def outbound(i: int, key: bytes | None = b"k", *, size: int = 0) -> Outbound:
    value = f"intent-{i}".encode() + b"." * size
    return Outbound("routed-intents", key, value, [("traceparent", b"x")], source=query_record(i, key))


def values(records: list[Sent]) -> list[str]:
    return [r.value.split(b".")[0].decode() for r in records]


def to_dlq(record: Outbound, code: ErrorCode, reason: str) -> Outbound | None:
    if record.source is None:
        return None
    return dead_letter(Rejected(record.source, code, reason), "queries.dlq", "replica-test")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def opened(producer: FakeProducer, mode: str = "auto") -> ProducerSession:
    session = ProducerSession(producer, mode)  # type: ignore[arg-type]
    await session.open()
    return session


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Delivery], Delivery]]:
    """Runs a delivery's recovery task for the test; fails the test if it raised unexpectedly."""
    tasks: list[asyncio.Task[None]] = []

    def start(delivery: Delivery) -> Delivery:
        tasks.append(asyncio.create_task(delivery.run()))
        return delivery

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def delivery(
    session: ProducerSession, telemetry: Telemetry, *, deadline_s: float = 30.0, **options: object
) -> Delivery:
    return Delivery(
        session,
        telemetry.metrics,
        dead_letter=to_dlq,
        deadline_s=deadline_s,
        backoff=lambda attempt: 0.0,
        **options,  # type: ignore[arg-type]
    )


# --- the policy -----------------------------------------------------------------------------


def test_the_policy_tells_retriable_too_large_broken_sequence_and_fatal_apart() -> None:
    from aiokafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError, OutOfOrderSequenceNumber

    assert remedy_for(NotLeaderForPartitionError()) is Remedy.RETRY
    assert remedy_for(KafkaTimeoutError()) is Remedy.RETRY
    assert remedy_for(UnknownTopicOrPartitionError()) is Remedy.RETRY  # bounded by the deadline
    assert remedy_for(MessageSizeTooLargeError()) is Remedy.DEAD_LETTER
    assert remedy_for(OutOfOrderSequenceNumber()) is Remedy.RESET
    assert remedy_for(TopicAuthorizationFailedError()) is Remedy.STOP
    assert remedy_for(RuntimeError("not Kafka's")) is Remedy.STOP


# --- delivering -----------------------------------------------------------------------------


async def test_deliver_returns_once_every_record_is_acknowledged(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    hold = asyncio.Event()
    producer = FakeProducer(hold=hold)
    sender = running(delivery(await opened(producer), telemetry))
    task = asyncio.create_task(sender.deliver([outbound(i) for i in range(3)]))
    async with asyncio.timeout(5):
        await producer.sent_count(3)
    assert values(producer.sent) == ["intent-0", "intent-1", "intent-2"]
    assert not task.done()  # every record is out, none is acknowledged: deliver waits
    hold.set()
    report = await asyncio.wait_for(task, 1)
    assert len(producer.acked) == 3
    assert report.dead_lettered == {}
    assert len(sender) == 0  # the window is empty once everything is acknowledged


async def test_a_failed_record_is_sent_again_with_every_later_record_of_its_key_in_order(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    """Without idempotence a later record can land while an earlier one of its key failed: the
    failed one is sent again *before* the later ones, which are sent again after it."""
    producer = FakeProducer(fail=lambda record, attempt: record.value == b"intent-1" and attempt == 0)
    sender = running(delivery(await opened(producer, "off"), telemetry))
    records = [outbound(0), outbound(1), outbound(2, b"other"), outbound(3), outbound(4)]
    await asyncio.wait_for(sender.deliver(records), 5)
    assert values(producer.sent) == [
        "intent-0", "intent-1", "intent-2", "intent-3", "intent-4",  # first pass: 1 fails
        "intent-1", "intent-3", "intent-4",  # key k again from the failed one; key "other" untouched
    ]  # fmt: skip
    # read as a consumer keeping each query's last copy, key k is in order
    last = {s.value: n for n, s in enumerate(producer.acked) if s.key == b"k"}
    assert sorted(last, key=last.__getitem__) == [b"intent-0", b"intent-1", b"intent-3", b"intent-4"]
    assert "routeworker_produce_retries_total 3" in telemetry.metrics_text()
    assert 'remedy="retry"' in telemetry.metrics_text()


async def test_a_send_refused_up_front_holds_back_the_records_after_it(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    class Refusing(FakeProducer):
        refusals = 1

        async def send(self, topic, value, key=None, headers=None):  # type: ignore[no-untyped-def]
            if value.startswith(b"intent-1") and self.refusals:
                self.refusals -= 1
                raise KafkaTimeoutError("no metadata")
            return await super().send(topic, value, key=key, headers=headers)

    producer = Refusing()
    sender = running(delivery(await opened(producer), telemetry))
    await asyncio.wait_for(sender.deliver([outbound(i) for i in range(3)]), 5)
    # neither 1 nor 2 went out before 1 could: no duplicate, no overtaking
    assert values(producer.sent) == ["intent-0", "intent-1", "intent-2"]
    assert values(producer.acked) == ["intent-0", "intent-1", "intent-2"]


async def test_no_later_batch_overtakes_a_send_refused_up_front(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    """A batch handed over right after a refusal (before recovery ran: the broker came back
    meanwhile) waits in the window too: it would otherwise land before the refused record of its
    key, whatever the producer's idempotence (a record refused up front has no sequence number)."""

    class Refusing(FakeProducer):
        refusals = 1

        async def send(self, topic, value, key=None, headers=None):  # type: ignore[no-untyped-def]
            if value.startswith(b"intent-1") and self.refusals:
                self.refusals -= 1
                raise KafkaTimeoutError("batch full while the broker was away")
            return await super().send(topic, value, key=key, headers=headers)

    producer = Refusing()
    sender = running(delivery(await opened(producer), telemetry))
    first = await sender.enqueue([outbound(0), outbound(1), outbound(2)])
    second = await sender.enqueue([outbound(3), outbound(4)])  # recovery has not run yet
    await asyncio.wait_for(asyncio.gather(sender.confirm(first), sender.confirm(second)), 5)
    assert values(producer.sent) == [f"intent-{i}" for i in range(5)]  # in order, once each
    assert values(producer.acked) == [f"intent-{i}" for i in range(5)]


async def test_a_non_retriable_error_stops_at_once_and_is_counted(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    producer = FakeProducer(fail=lambda record, attempt: TopicAuthorizationFailedError("routed-intents"))
    sender = delivery(await opened(producer), telemetry)
    recovery = asyncio.create_task(sender.run())
    with pytest.raises(ProduceError, match="TopicAuthorizationFailedError"):
        await asyncio.wait_for(sender.deliver([outbound(0), outbound(1)]), 5)
    with pytest.raises(ProduceError):
        await asyncio.wait_for(recovery, 5)
    assert len(producer.sent) == 2  # never sent again
    assert 'error="TopicAuthorizationFailedError",remedy="stop"' in telemetry.metrics_text()
    with pytest.raises(ProduceError):  # nothing more is taken
        await sender.enqueue([outbound(2)])


async def test_retries_stop_the_replica_past_the_deadline(telemetry: Telemetry) -> None:
    clock = Clock()

    def backoff(attempt: int) -> float:
        clock.now += 1.0  # each round costs a second of the injected clock
        return 0.0

    producer = FakeProducer(fail=lambda record, attempt: UnknownTopicOrPartitionError())
    sender = Delivery(
        await opened(producer),
        telemetry.metrics,
        dead_letter=to_dlq,
        deadline_s=3.0,
        backoff=backoff,
        clock=clock,
    )
    recovery = asyncio.create_task(sender.run())
    with pytest.raises(ProduceError, match="PRODUCE_DEADLINE_S=3"):
        await asyncio.wait_for(sender.deliver([outbound(0)]), 5)
    with pytest.raises(ProduceError):
        await asyncio.wait_for(recovery, 5)
    assert 4 <= len(producer.sent) <= 5  # retried until the deadline, then no more
    text = telemetry.metrics_text()
    assert 'error="UnknownTopicOrPartitionError",remedy="retry"' in text
    assert 'error="deadline",remedy="stop"' in text


async def test_a_record_never_acknowledged_stops_the_replica_after_the_deadline(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    # an idempotent producer retries by itself without end (a broker frozen, say): the deadline
    # still bounds the wait
    producer = FakeProducer(hold=asyncio.Event())
    sender = running(delivery(await opened(producer), telemetry, deadline_s=0.2))
    with pytest.raises(ProduceError, match="still unacknowledged"):
        await asyncio.wait_for(sender.deliver([outbound(0)]), 5)
    producer.hold.set()  # type: ignore[union-attr]


# --- records too large -------------------------------------------------------------------------


async def test_an_intent_larger_than_its_topic_takes_is_dead_lettered_with_its_query(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    producer = FakeProducer()
    big = outbound(1, size=3000)
    limits = TopicLimits({"routed-intents": record_size(outbound(0)) + 100})
    sender = running(delivery(await opened(producer), telemetry, limits=limits))
    report = await asyncio.wait_for(sender.deliver([outbound(0), big, outbound(2)]), 5)
    assert report.dead_lettered == {1: ErrorCode.INTENT_TOO_LARGE}
    assert [s.topic for s in producer.acked] == ["routed-intents", "queries.dlq", "routed-intents"]
    letter = DeadLetter.model_validate_json(producer.acked[1].value)
    assert letter.error_code is ErrorCode.INTENT_TOO_LARGE
    assert "more than topic routed-intents takes" in letter.reason
    assert (letter.source.topic, letter.source.offset) == ("queries", 1)
    assert base64.b64decode(letter.value_b64 or "") == big.source.value  # type: ignore[union-attr]
    assert producer.acked[1].key == b"k"


@pytest.mark.parametrize("idempotent", [True, False])
async def test_an_intent_the_broker_refuses_as_too_large_is_dead_lettered_and_order_kept(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery], idempotent: bool
) -> None:
    """The topic's limit was not known (or was lowered): the broker refuses the record. With an
    idempotent producer that breaks the partition's sequence (later records fail until a new
    producer id), so the producer is replaced and the later records are sent again in order."""
    producer = FakeProducer(max_bytes={"routed-intents": 1000}, hold=asyncio.Event())
    sender = running(delivery(await opened(producer, "auto" if idempotent else "off"), telemetry))
    records = [outbound(0), outbound(1, size=2000), outbound(2), outbound(3)]
    task = asyncio.create_task(sender.deliver(records))
    async with asyncio.timeout(5):
        await producer.sent_count(4)
    producer.hold.set()  # type: ignore[union-attr]
    report = await asyncio.wait_for(task, 5)
    assert report.dead_lettered == {1: ErrorCode.INTENT_TOO_LARGE}
    intents = [s for s in producer.acked if s.topic == "routed-intents"]
    assert values(intents) == ["intent-0", "intent-2", "intent-3"]  # once each, in order
    # refused in the batch, then alone: only then is it known to be too large
    assert values(producer.sent).count("intent-1") == 2
    # idempotent: each refusal (in the batch, then alone) skipped a sequence: a new producer each time
    assert producer.opened == ([True, True, True] if idempotent else [False])


async def test_a_dead_letter_too_large_for_the_dlq_stops_the_replica(
    telemetry: Telemetry, running: Callable[[Delivery], Delivery]
) -> None:
    producer = FakeProducer()
    limits = TopicLimits({"routed-intents": 200, "queries.dlq": 100})
    sender = running(delivery(await opened(producer), telemetry, limits=limits))
    with pytest.raises(ProduceError, match="dead letter"):
        await asyncio.wait_for(sender.deliver([outbound(0, size=500)]), 5)


# --- the producer session --------------------------------------------------------------------


async def test_idempotence_where_the_broker_takes_it_plain_where_it_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taking = await opened(FakeProducer())
    assert taking.idempotent
    refusing = FakeProducer(refuse_idempotence=True)
    with caplog.at_level("WARNING"):
        session = await opened(refusing)
    assert not session.idempotent
    assert refusing.opened == [False]
    assert "refuses idempotent producers (UnknownError)" in caplog.text
    with pytest.raises(ProduceError, match="KAFKA_IDEMPOTENCE=on"):
        await opened(FakeProducer(refuse_idempotence=True), "on")
    assert not (await opened(FakeProducer(), "off")).idempotent
