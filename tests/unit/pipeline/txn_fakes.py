"""In-memory transactions: a broker's side (epochs, open transactions, what read_committed readers
see, the group's committed offsets) and transactional producers that talk to it.

As on Kafka: starting a producer bumps its transactional id's epoch, which fences older producers
of the id and ends the transaction they left open (aborted, or committed if it was already being
committed); a fenced producer's calls fail with ProducerFenced. As in aiokafka, committing flushes
the sends and commits what was acknowledged, even when a send failed (the pipeline must not ask).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka.errors import IllegalOperation, KafkaTimeoutError, ProducerFenced
from aiokafka.structs import RecordMetadata, TopicPartition
from pipeline_fakes import Sent

from worker.pipeline.kafka import TransactionalProducer


@dataclass
class OpenTransaction:
    epoch: int
    records: list[Sent] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    committing: bool = False  # EndTxn(commit) accepted: a new epoch completes it instead of aborting


@dataclass
class FakeTransactions:
    """The broker side. ``group_offsets`` is the group's committed offsets (share the consumer's)."""

    group_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    visible: list[Sent] = field(default_factory=list)
    aborted: list[Sent] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)
    open: dict[str, OpenTransaction] = field(default_factory=dict)
    commits: list[tuple[str, dict[TopicPartition, int]]] = field(default_factory=list)
    # a send for which ``fail`` is true is not acknowledged (a timeout)
    fail: Callable[[Sent], bool] = lambda sent: False
    # a commit for which ``fail_commit`` is true raises it (once per call)
    fail_commit: Callable[[str], BaseException | None] = lambda transactional_id: None
    hold: asyncio.Event | None = None  # when set, acknowledgements wait for it
    # when set, a commit that the broker accepted waits for it before it completes (the markers)
    markers: asyncio.Event | None = None
    producers: list[FakeTransactionalProducer] = field(default_factory=list)

    def producer(self, transactional_id: str) -> FakeTransactionalProducer:
        """The factory the exactly-once output is given."""
        made = FakeTransactionalProducer(self, transactional_id)
        self.producers.append(made)
        return made

    def init(self, transactional_id: str) -> int:
        left = self.open.pop(transactional_id, None)
        if left is not None:
            self._end(transactional_id, left, commit=left.committing)
        self.epochs[transactional_id] = self.epochs.get(transactional_id, -1) + 1
        return self.epochs[transactional_id]

    def check(self, transactional_id: str, epoch: int) -> None:
        if self.epochs[transactional_id] != epoch:
            raise ProducerFenced()

    def _end(self, transactional_id: str, txn: OpenTransaction, *, commit: bool) -> None:
        if commit:
            self.visible += txn.records
            self.group_offsets.update(txn.offsets)
            self.commits.append((transactional_id, dict(txn.offsets)))
        else:
            self.aborted += txn.records

    def end(self, transactional_id: str, epoch: int, *, commit: bool) -> None:
        self.check(transactional_id, epoch)
        self._end(transactional_id, self.open.pop(transactional_id), commit=commit)

    def values(self, topic: str) -> list[bytes]:
        """What a read_committed reader of ``topic`` sees."""
        return [s.value for s in self.visible if s.topic == topic]


@dataclass
class FakeTransactionalProducer:
    cluster: FakeTransactions
    transactional_id: str
    epoch: int = -1
    started: bool = False
    stopped: bool = False
    txn: OpenTransaction | None = None  # the client's view: open until it commits or aborts
    _settling: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.epoch = self.cluster.init(self.transactional_id)
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def _txn(self) -> OpenTransaction:
        if self.txn is None:
            raise IllegalOperation("not in a transaction")
        return self.txn

    async def begin_transaction(self) -> None:
        assert self.started
        assert not self.stopped
        self.cluster.check(self.transactional_id, self.epoch)
        assert self.txn is None, "a transaction is already open"
        self.txn = self.cluster.open[self.transactional_id] = OpenTransaction(self.epoch)

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        txn = self._txn()
        record = Sent(topic, value, key, headers)
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()

        async def settle() -> None:
            if self.cluster.hold is not None:
                await self.cluster.hold.wait()
            if self.cluster.epochs[self.transactional_id] != self.epoch:
                future.set_exception(ProducerFenced())
            elif self.cluster.fail(record):
                future.set_exception(KafkaTimeoutError("simulated broker timeout"))
            else:
                txn.records.append(record)
                future.set_result(RecordMetadata(topic, 0, TopicPartition(topic, 0), 0, None, 0, None))

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        self.cluster.check(self.transactional_id, self.epoch)
        self._txn().offsets.update(offsets)

    async def commit_transaction(self) -> None:
        txn = self._txn()
        await asyncio.gather(*self._settling)
        self.cluster.check(self.transactional_id, self.epoch)
        failure = self.cluster.fail_commit(self.transactional_id)
        if failure is not None:
            raise failure
        txn.committing = True  # from now on a new epoch completes it instead of aborting it
        if self.cluster.markers is not None:
            await self.cluster.markers.wait()
        self.cluster.end(self.transactional_id, self.epoch, commit=True)
        self.txn = None

    async def abort_transaction(self) -> None:
        self._txn()
        await asyncio.gather(*self._settling)
        self.cluster.end(self.transactional_id, self.epoch, commit=False)
        self.txn = None


if TYPE_CHECKING:
    _producer: TransactionalProducer = FakeTransactionalProducer(FakeTransactions(), "id")
