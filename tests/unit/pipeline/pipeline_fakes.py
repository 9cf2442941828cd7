"""In-memory stand-ins for the aiokafka consumer and producer, and a deterministic encoder.

The consumer serves records appended to its partitions, tracks positions, pauses and commits, and
can be put through a rebalance; the producer acknowledges (or fails) sends when told to.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownError,
)
from aiokafka.structs import RecordMetadata, TopicPartition

from worker.pipeline.kafka import OutputProducer, ProducerFactory, QueryConsumer
from worker.routing import l2_normalise
from worker.routing.types import Vectors

if TYPE_CHECKING:
    from worker.pipeline.app import QueryPipeline

DIM = 64
FINGERPRINT = "hashing-bow@test:0"


class HashingEncoder:
    """Bag of words hashed into signed buckets; async like the encoder pool. Counts its texts."""

    dim = DIM
    fingerprint = FINGERPRINT

    def __init__(self) -> None:
        self.embedded: list[str] = []
        self.fail_on: Callable[[str], bool] = lambda text: False

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        rows = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            if self.fail_on(text):
                raise RuntimeError(f"cannot embed {text!r}")
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                rows[i, digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
        return l2_normalise(rows)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        vectors = self.embed_sync(texts)
        self.embedded.extend(texts)
        await asyncio.sleep(0)
        return vectors


async def _awaited(result: Awaitable[None] | None) -> None:
    # aiokafka awaits a listener's result when it is awaitable; so does the fake
    if result is not None:
        await result


@dataclass
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class CommittedOffsets(dict[TopicPartition, int]):
    """The group's committed offsets; also callable as aiokafka's ``await consumer.committed(tp)``."""

    async def __call__(self, tp: TopicPartition, /) -> int | None:
        return self.get(tp)


@dataclass
class FakeConsumer:
    """Partitions of one topic; ``getmany`` serves from each partition's position onwards."""

    topic: str = "queries"
    partitions: int = 2
    log: dict[int, list[ConsumerRecord]] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    listener: ConsumerRebalanceListener | None = None
    assigned: set[TopicPartition] = field(default_factory=set)
    paused_set: set[TopicPartition] = field(default_factory=set)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    committed: CommittedOffsets = field(default_factory=lambda: CommittedOffsets())
    pauses: int = 0
    fetches: int = 0

    def __post_init__(self) -> None:
        for p in range(self.partitions):
            self.log.setdefault(p, [])
        self._arrived = asyncio.Event()

    def append(self, partition: int, value: bytes | None, key: bytes | None = None, **kw: Any) -> None:
        records = self.log[partition]
        headers = tuple(kw.get("headers", ()))
        timestamp = int(kw.get("timestamp", 1_700_000_000_000))
        records.append(ConsumerRecord(self.topic, partition, len(records), timestamp, key, value, headers))
        self._arrived.set()

    def end_offsets(self) -> dict[TopicPartition, int]:
        return {TopicPartition(self.topic, p): len(r) for p, r in self.log.items() if r}

    # --- the aiokafka surface the pipeline uses ---
    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener | None = None) -> None:
        assert topics == [self.topic]
        self.listener = listener

    async def start(self) -> None:
        await self.assign({TopicPartition(self.topic, p) for p in range(self.partitions)})

    async def stop(self) -> None:
        self.assigned = set()

    async def assign(self, partitions: set[TopicPartition]) -> None:
        self.assigned = set(partitions)
        self.paused_set.clear()
        for tp in partitions:
            self.positions[tp] = self.committed.get(tp, 0)
        if self.listener is not None:
            await _awaited(self.listener.on_partitions_assigned(partitions))

    async def rebalance(self, partitions: set[TopicPartition]) -> None:
        """Eager rebalance: revoke everything (listener first), then assign ``partitions``."""
        if self.listener is not None:
            await _awaited(self.listener.on_partitions_revoked(set(self.assigned)))
        await self.assign(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.pauses += 1
        self.paused_set.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_set.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp.partition])

    def _available(self, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        left = max_records
        for tp in sorted(self.assigned - self.paused_set):
            if left <= 0:
                break
            start = self.positions[tp]
            chunk = self.log[tp.partition][start : start + left]
            if chunk:
                out[tp] = chunk
                self.positions[tp] = start + len(chunk)
                left -= len(chunk)
        return out

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.fetches += 1
        limit = max_records or 1_000_000
        found = self._available(limit)
        if found:
            return found
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        return self._available(limit)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp in offsets:
            assert tp in self.assigned, f"commit of unassigned {tp}"
        self.commits.append(dict(offsets))
        self.committed.update(offsets)

    async def position(self, tp: TopicPartition) -> int:
        assert tp in self.assigned, f"position of unassigned {tp}"
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned, f"seek of unassigned {tp}"
        self.positions[tp] = offset

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in partitions}


@dataclass
class Sent:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    partition: int = 0


@dataclass
class FakeProducer:
    """Acknowledges every send on the next loop iteration unless ``fail`` says otherwise.

    It is also its own factory (``producer(idempotent=...)`` returns it, to be started again), so
    a pipeline or a producer session can open and reopen it; ``opened`` lists the idempotence of
    each start. ``refuse_idempotence`` makes an idempotent start fail the way Tansu's does.

    ``fail(record, attempt)`` returning True makes that send fail with a timeout error, returning
    an exception makes it fail with that. ``hold`` (when set) delays every acknowledgement until
    it is set. ``max_bytes`` is the broker's limit per topic (key + value): a larger record is
    refused, and when idempotent that breaks its partition's sequence as on Apache Kafka, every
    later send to it failing with OutOfOrderSequenceNumber until the producer is reopened.
    Records are spread over ``partitions`` by key.
    """

    sent: list[Sent] = field(default_factory=list)
    acked: list[Sent] = field(default_factory=list)
    fail: Callable[[Sent, int], bool | BaseException] = lambda record, attempt: False
    hold: asyncio.Event | None = None
    attempts: dict[bytes, int] = field(default_factory=dict)
    started: bool = False
    idempotent: bool = False
    refuse_idempotence: bool = False
    opened: list[bool] = field(default_factory=list)
    max_bytes: dict[str, int] = field(default_factory=dict)
    partitions: int = 1
    broken: set[tuple[str, int]] = field(default_factory=set)
    _settling: set[asyncio.Task[None]] = field(default_factory=set)
    _sent_more: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, *, idempotent: bool) -> FakeProducer:
        self.idempotent = idempotent
        return self

    async def sent_count(self, count: int) -> None:
        """Return once ``count`` sends were made (wrap it in a timeout)."""
        while len(self.sent) < count:
            self._sent_more.clear()
            await self._sent_more.wait()

    async def start(self) -> None:
        if self.idempotent and self.refuse_idempotence:
            raise UnknownError()
        self.broken = set()  # a new producer id: a fresh sequence everywhere
        self.opened.append(self.idempotent)
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def partition_of(self, key: bytes | None) -> int:
        return 0 if key is None else zlib.crc32(key) % self.partitions

    def _outcome(self, record: Sent, attempt: int) -> BaseException | None:
        where = (record.topic, record.partition)
        if where in self.broken:
            return OutOfOrderSequenceNumber()
        limit = self.max_bytes.get(record.topic)
        if limit is not None and len(record.value) + len(record.key or b"") > limit:
            if self.idempotent:
                self.broken.add(where)
            return MessageSizeTooLargeError()
        failure = self.fail(record, attempt)
        if failure is True:
            return KafkaTimeoutError("simulated broker timeout")
        return failure or None

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        assert self.started, "send on a producer that is not started"
        record = Sent(topic, value, key, headers, self.partition_of(key))
        self.sent.append(record)
        self._sent_more.set()
        attempt = self.attempts.get(value, 0)
        self.attempts[value] = attempt + 1
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()

        async def settle() -> None:
            if self.hold is not None:
                await self.hold.wait()
            error = self._outcome(record, attempt)
            if error is not None:
                future.set_exception(error)
            else:
                tp = TopicPartition(topic, record.partition)
                offset = sum(a.topic == topic and a.partition == record.partition for a in self.acked)
                self.acked.append(record)
                future.set_result(RecordMetadata(topic, record.partition, tp, offset, None, 0, None))

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return future


if TYPE_CHECKING:
    # `make typecheck` checks the fakes against the protocols the pipeline declares (and aiokafka's
    # clients are checked against the same protocols in worker/pipeline/clients.py).
    _consumer: QueryConsumer = FakeConsumer()
    _producer: OutputProducer = FakeProducer()
    _producers: ProducerFactory = FakeProducer()


# --- running a pipeline over the fakes ----------------------------------------------------------


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` (state of the fakes and the pipeline) until it holds; fail after ``within``."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - state of the fakes under test
            await asyncio.sleep(0.002)


@contextmanager
def running(pipeline: QueryPipeline) -> Iterator[asyncio.Task[None]]:
    """``pipeline`` running in a task for the ``with`` block; stopped when it ends."""
    task = asyncio.create_task(pipeline.run())
    try:
        yield task
    finally:
        pipeline.stop()
