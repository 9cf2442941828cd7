"""The exactly-once output against Apache Kafka: a new owner fences the zombie and resumes from its
last commit, a failed record aborts and the input is consumed again, and read_committed readers see
outputs only once, when committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import load_settings
from worker.local.kafka import LocalKafka
from worker.pipeline.clients import transactional_producer
from worker.pipeline.exactly_once import ExactlyOnceOutput
from worker.pipeline.kafka import TransactionalProducer
from worker.pipeline.transaction_errors import TransactionFatal
from worker.pipeline.types import Outbound

pytestmark = pytest.mark.integration


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


class Stack:
    """Topics and a group of one test, and the clients it made (all stopped at the end)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.queries, self.intents, self.group = _name("queries"), _name("intents"), _name("group")
        self.tp = TopicPartition(self.queries, 0)
        self.settings = load_settings(kafka_bootstrap=bootstrap, group_id=self.group)
        self._closing: list[AIOKafkaConsumer | ExactlyOnceOutput] = []

    async def create(self, intents_config: dict[str, str] | None = None) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(self.queries, 1, 1), NewTopic(self.intents, 1, 1, topic_configs=intents_config)]
            )
        finally:
            await admin.close()

    async def produce(self, values: Sequence[bytes]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(self.queries, value)
        finally:
            await producer.stop()

    def producer(self, transactional_id: str) -> TransactionalProducer:
        return transactional_producer(self.settings, transactional_id)

    async def owner(self) -> tuple[AIOKafkaConsumer, ExactlyOnceOutput]:
        """A replica's consumer (of the group, the partition assigned by hand) and output."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        consumer.assign([self.tp])
        output = ExactlyOnceOutput(
            consumer, self.producer, self.group, interval_s=0, backoff=lambda attempt: 0.0
        )
        self._closing += [output, consumer]
        await output.assign({self.tp})
        return consumer, output

    async def close(self) -> None:
        for thing in self._closing:
            if isinstance(thing, ExactlyOnceOutput):
                await thing.close(commit=False)
            else:
                await thing.stop()

    async def read(self, isolation_level: str) -> list[bytes]:
        """Every value of the intents topic a reader with ``isolation_level`` sees now."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", isolation_level=isolation_level
        )
        await reader.start()
        try:
            tp = TopicPartition(self.intents, 0)
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]  # the last stable offset for read_committed
            values: list[bytes] = []
            async with asyncio.timeout(20):
                while await reader.position(tp) < end:
                    batch = await reader.getmany(tp, timeout_ms=200)
                    values += [r.value for r in batch.get(tp, []) if r.value is not None]
            return values
        finally:
            await reader.stop()

    async def reaches(self, offset: int) -> None:
        """Wait until the intents topic holds ``offset`` records and markers (enqueue does not wait
        for acknowledgements, so a test that needs them in the log waits here)."""
        async with asyncio.timeout(20):
            while await self.end("read_uncommitted") < offset:  # noqa: ASYNC110 - the broker's state
                await asyncio.sleep(0.05)

    async def end(self, isolation_level: str) -> int:
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level=isolation_level)
        await reader.start()
        try:
            tp = TopicPartition(self.intents, 0)
            return (await reader.end_offsets([tp]))[tp]
        finally:
            await reader.stop()


async def fetch(consumer: AIOKafkaConsumer, output: ExactlyOnceOutput, count: int) -> list[tuple[int, bytes]]:
    """``count`` admitted records of the partition, from the consumer's position on."""
    got: list[tuple[int, bytes]] = []
    async with asyncio.timeout(20):
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=count - len(got))
            for tp, records in batch.items():
                if output.admits(tp):
                    got += [(r.offset, r.value or b"") for r in records]
    return got


async def deliver(
    stack: Stack, output: ExactlyOnceOutput, records: list[tuple[int, bytes]], pad: int = 0
) -> bool:
    stamp = output.stamp([stack.tp])
    outbounds = [Outbound(stack.intents, None, b"out-" + v + b"." * pad, origin=stack.tp) for _, v in records]
    return await output.enqueue(stamp, outbounds, {stack.tp: records[-1][0] + 1})


@pytest.fixture
async def stack(kafka_broker: LocalKafka) -> AsyncIterator[Stack]:
    made = Stack(kafka_broker.bootstrap)
    yield made
    await made.close()


async def test_a_new_owner_fences_the_zombie_and_resumes_from_its_last_commit(stack: Stack) -> None:
    await stack.create()
    inputs = [b"q%d" % i for i in range(10)]
    await stack.produce(inputs)
    zombie_consumer, zombie = await stack.owner()
    first = await fetch(zombie_consumer, zombie, 7)
    assert await deliver(stack, zombie, first[:4])
    await zombie.commit("test")
    assert await deliver(stack, zombie, first[4:])  # left open: the old owner stalls here
    await stack.reaches(8)  # 4 records, the commit marker, 3 records of the open transaction

    consumer, owner = await stack.owner()  # the group gave the partition to another replica

    # the new owner's producer ended the zombie's transaction at once (no transaction timeout):
    # read_committed readers see past it, and the new owner resumes at the zombie's last commit
    assert await stack.read("read_committed") == [b"out-q0", b"out-q1", b"out-q2", b"out-q3"]
    assert await consumer.position(stack.tp) == 4
    with pytest.raises(TransactionFatal, match="fenced"):
        await zombie.commit("test")

    rest = await fetch(consumer, owner, 6)
    assert [offset for offset, _ in rest] == [4, 5, 6, 7, 8, 9]
    assert await deliver(stack, owner, rest)
    await owner.commit("test")
    assert await stack.read("read_committed") == [b"out-" + q for q in inputs]
    # the zombie's aborted records are in the log, invisible to read_committed readers
    uncommitted = await stack.read("read_uncommitted")
    assert uncommitted.count(b"out-q4") == 2
    assert await consumer.committed(stack.tp) == 10


async def test_a_record_the_broker_refuses_aborts_and_the_input_is_consumed_again(stack: Stack) -> None:
    await stack.create({"max.message.bytes": "2048"})
    inputs = [b"q%d" % i for i in range(6)]
    await stack.produce(inputs)
    consumer, output = await stack.owner()
    records = await fetch(consumer, output, 6)
    assert await deliver(stack, output, records[:3])
    await output.commit("test")
    assert await deliver(stack, output, records[3:], pad=4096)  # too large for the topic
    await output.commit("test")  # the refused record aborts the transaction
    assert output.rewinds == 1
    assert await consumer.position(stack.tp) == 3  # back at the committed offset
    again = await fetch(consumer, output, 3)
    assert [offset for offset, _ in again] == [3, 4, 5]
    assert await deliver(stack, output, again)
    await output.commit("test")
    assert await stack.read("read_committed") == [b"out-" + q for q in inputs]
    assert await consumer.committed(stack.tp) == 6


async def test_read_committed_readers_see_outputs_only_once_committed(stack: Stack) -> None:
    await stack.create()
    await stack.produce([b"q0", b"q1", b"q2"])
    consumer, output = await stack.owner()
    records = await fetch(consumer, output, 3)
    assert await deliver(stack, output, records)
    await stack.reaches(3)
    assert await stack.end("read_uncommitted") == 3
    assert await stack.end("read_committed") == 0  # the open transaction holds them back
    assert await consumer.committed(stack.tp) is None
    await output.commit("test")
    assert await stack.end("read_committed") == 4  # three records and the commit marker
    assert await stack.read("read_committed") == [b"out-q0", b"out-q1", b"out-q2"]
    assert await consumer.committed(stack.tp) == 3
