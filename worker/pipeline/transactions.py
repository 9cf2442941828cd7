"""One input partition's transactional producer and the transaction open on it.

Exactly-once output means that a partition's routed intents and dead letters and the offset past
the records they answer are committed together, by a producer only the partition's current owner
can use. Kafka checks ownership through the producer's ``transactional_id``: starting a producer
(InitProducerId) bumps the id's epoch, which fences every older producer of the same id and
completes or aborts the transaction it left open. aiokafka's transactional offset commit carries
no group generation (no KIP-447), so the group cannot fence a zombie; the transactional id does it,
which is why every input partition has its own, derived from group, topic and partition.

A transaction holds a contiguous run of the partition's input: records are added in consumption
order, each call naming the offset past the last input it answers, and committing adds that offset
(``send_offsets_to_transaction``) before the commit. Nothing is committed unless every record of
the transaction was acknowledged: aiokafka would commit a transaction with a failed record in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka.structs import RecordMetadata, TopicPartition

from worker.pipeline.kafka import TransactionalProducer
from worker.pipeline.transaction_errors import TRANSACTION_ERRORS
from worker.pipeline.types import Outbound

logger = logging.getLogger(__name__)


def transactional_id(group_id: str, partition: TopicPartition) -> str:
    """``<group>/<topic>/<partition>``: one id per input partition of the group.

    Topic names cannot hold ``/``, so two (group, topic, partition) never share an id, and an ACL on
    the prefix ``<group>/`` covers every id of the group.
    """
    return f"{group_id}/{partition.topic}/{partition.partition}"


class PartitionTransaction:
    """The transactional producer of one owned input partition and its open transaction, if any.

    :meth:`send`, :meth:`commit` and :meth:`close` take :attr:`lock` in turn, so a commit cuts the
    partition's input at a point every record before which is in this transaction or an earlier one.
    A commit holds the lock for its round trips to the coordinator; records handed over meanwhile
    wait in a backlog (up to ``max_backlog`` of them, then the sender waits) and open the next
    transaction as soon as the commit is done, so a batch never waits for a commit. :meth:`void`
    (no lock, immediate) makes later sends drop their records: the owner calls it when the open
    transaction is going to be aborted and its input consumed again.
    """

    def __init__(
        self,
        partition: TopicPartition,
        producer: TransactionalProducer,
        group_id: str,
        *,
        max_backlog: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partition = partition
        self.group_id = group_id
        self.lock = asyncio.Lock()
        # the group's committed offset: where the partition's input resumes after an abort
        self.committed: int | None = None
        self.opened_at: float | None = None
        self._producer = producer
        self._max_backlog = max_backlog
        self._clock = clock
        self._live = True
        self._closed = False
        self._acks: list[asyncio.Future[RecordMetadata]] = []
        self._next_offset: int | None = None
        self._backlog: list[tuple[Sequence[Outbound], int]] = []
        self._backlog_records = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self.is_open else "idle"
        return f"PartitionTransaction({self.partition.topic}-{self.partition.partition}, {state})"

    @property
    def is_open(self) -> bool:
        """Whether a transaction is open (records or offsets were added since the last commit)."""
        return self.opened_at is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran: the producer is stopped."""
        return self._closed

    @property
    def live(self) -> bool:
        """Whether sends are still taken (not voided, not closed)."""
        return self._live and not self._closed

    async def start(self) -> None:
        """Start the producer: fences older producers of the id and ends their open transaction."""
        await self._producer.start()

    def void(self) -> None:
        """Refuse every later send: the open transaction is to be aborted."""
        self._live = False

    async def send(self, records: Sequence[Outbound], next_offset: int) -> bool:
        """Add ``records`` (answers to the partition's input before ``next_offset``) to the open
        transaction, opening one if needed; False when voided (the records are dropped).

        While a commit holds the lock they join the backlog instead (in order), unless it is full.
        """
        if not self.live:
            return False
        if self.lock.locked() and self._backlog_records < self._max_backlog:
            self._backlog.append((records, next_offset))
            self._backlog_records += len(records)
            return True
        async with self.lock:
            if self._refusing():  # voided or closed while waiting
                return False
            await self._flush()  # what waited behind a commit goes first
            await self._send_now(records, next_offset)
            return True

    def _refusing(self) -> bool:
        return not self.live

    async def _send_now(self, records: Sequence[Outbound], next_offset: int) -> None:
        if self.opened_at is None:
            await self._producer.begin_transaction()
            self.opened_at = self._clock()
        for r in records:
            self._acks.append(
                await self._producer.send(r.topic, r.value, key=r.key, headers=r.headers or None)
            )
        if self._next_offset is None or next_offset > self._next_offset:
            self._next_offset = next_offset

    async def _flush(self, *, keep: bool | None = None) -> None:
        """Send the backlog (``keep``, by default: unless voided) or drop it."""
        backlog, self._backlog, self._backlog_records = self._backlog, [], 0
        if self.live if keep is None else keep:
            for records, next_offset in backlog:
                await self._send_now(records, next_offset)

    async def commit(self) -> int | None:
        """Commit the open transaction with its offset; returns that offset (None: none open).

        Raises the first failure of a record's acknowledgement or of the commit itself; the
        transaction is then still open and must be aborted (see :meth:`close`). Records that
        joined the backlog meanwhile open the next transaction before the lock is released.
        """
        if self._closed or self.opened_at is None:
            return None
        # wait for what is in flight without the lock: sends go on meanwhile, and only those made
        # since are waited for inside it
        await asyncio.gather(*self._acks, return_exceptions=True)
        async with self.lock:
            if self.closed:  # while waiting
                return None
            offset = await self._commit()
            await self._flush()
            return offset

    async def _commit(self) -> int | None:
        if self.opened_at is None or self._next_offset is None:
            return None
        results = await asyncio.gather(*self._acks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        offset = self._next_offset
        await self._producer.send_offsets_to_transaction({self.partition: offset}, self.group_id)
        await self._producer.commit_transaction()
        self.committed = offset
        self._forget()
        return offset

    async def _abort(self) -> None:
        if self.opened_at is not None:
            await self._producer.abort_transaction()
            self._forget()

    def _forget(self) -> None:
        self.opened_at = None
        self._acks = []
        self._next_offset = None

    async def close(self, *, commit: bool, timeout_s: float = 30.0) -> int | None:
        """Commit (``commit``) or abort the open transaction, then stop the producer; returns the
        offset committed (None: nothing was).

        A commit that fails (or takes longer than ``timeout_s``) is aborted instead and re-raised;
        an abort that fails is logged only: the partition's next producer aborts what this one
        left open when it starts. The producer is stopped in every case.
        """
        voided = not self._live
        self._live = False  # senders waiting for the lock drop their records
        async with self.lock:
            if self._closed:
                return None
            self._closed = True
            try:
                if commit:
                    try:
                        async with asyncio.timeout(timeout_s):
                            await self._flush(keep=not voided)
                            return await self._commit()
                    except Exception:
                        await self._abort_quietly(timeout_s)
                        raise
                self._backlog, self._backlog_records = [], 0
                await self._abort_quietly(timeout_s)
                return None
            finally:
                await self._stop_producer(timeout_s)

    async def _stop_producer(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._producer.stop()
        except TimeoutError:  # its epoch is fenced by the partition's next producer anyway
            logger.warning(
                "the producer of %s-%d did not stop within %gs",
                self.partition.topic,
                self.partition.partition,
                timeout_s,
            )

    async def _abort_quietly(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._abort()
        # aiokafka refuses an abort from some states with an assertion (a commit under way, its
        # sender gone); the partition's next producer aborts whatever this one left open
        except TRANSACTION_ERRORS as error:
            logger.warning(
                "could not abort the transaction of %s-%d (its next producer will): %s",
                self.partition.topic,
                self.partition.partition,
                error,
            )
