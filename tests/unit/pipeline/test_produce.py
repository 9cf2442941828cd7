"""Delivery: every record acknowledged before returning; failures re-sent with back-off."""

from __future__ import annotations

import asyncio

from pipeline_fakes import FakeProducer, Sent

from worker.pipeline import Delivery, Outbound


def outbound(i: int) -> Outbound:
    return Outbound("routed-intents", b"k", f"intent-{i}".encode(), [("traceparent", b"x")])


async def test_deliver_returns_once_every_record_is_acknowledged() -> None:
    hold = asyncio.Event()
    producer = FakeProducer(hold=hold)
    task = asyncio.create_task(Delivery(producer).deliver([outbound(i) for i in range(3)]))
    async with asyncio.timeout(5):
        await producer.sent_count(3)
    assert [s.value for s in producer.sent] == [b"intent-0", b"intent-1", b"intent-2"]
    assert not task.done()  # every record is out, none is acknowledged: deliver waits
    hold.set()
    await asyncio.wait_for(task, 1)
    assert len(producer.acked) == 3


async def test_failed_records_alone_are_sent_again_after_a_back_off() -> None:
    def fail(record: Sent, attempt: int) -> bool:
        return record.value == b"intent-1" and attempt < 2

    producer = FakeProducer(fail=fail)
    retried: list[int] = []
    backoffs: list[int] = []

    def backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return 0.0

    delivery = Delivery(producer, on_retry=retried.append, backoff=backoff)
    await asyncio.wait_for(delivery.deliver([outbound(i) for i in range(3)]), 1)
    assert [s.value for s in producer.sent] == [
        b"intent-0",
        b"intent-1",
        b"intent-2",
        b"intent-1",
        b"intent-1",
    ]
    assert sorted(s.value for s in producer.acked) == [b"intent-0", b"intent-1", b"intent-2"]
    assert retried == [1, 1]
    assert backoffs == [0, 1]


async def test_a_send_refused_up_front_is_retried_too() -> None:
    from aiokafka.errors import KafkaTimeoutError

    class Refusing(FakeProducer):
        refusals = 1

        async def send(self, topic, value, key=None, headers=None):  # type: ignore[no-untyped-def]
            if self.refusals:
                self.refusals -= 1
                raise KafkaTimeoutError("no metadata")
            return await super().send(topic, value, key=key, headers=headers)

    producer = Refusing()
    await asyncio.wait_for(Delivery(producer, backoff=lambda attempt: 0.0).deliver([outbound(0)]), 1)
    assert [s.value for s in producer.acked] == [b"intent-0"]
