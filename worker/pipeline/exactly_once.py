"""Exactly-once output of one replica: a transaction per owned input partition, committed on a cadence.

A partition's life here (assignments, revocations and rewinds hold one lock, so they never
interleave):

- **owned** (on assignment, and again after a rewind): the partition is paused and its records
  are not admitted; a new producer of its transactional id is started, which fences the previous
  owner and makes the broker complete or abort the transaction that owner left open; only then is
  the group's committed offset read (before, a commit in flight could still move it), and in one
  step the consumer is moved there, the partition admitted and resumed. aiokafka fetches the
  committed offset on its own when partitions are assigned, concurrently with the listener, so its
  position may predate the fence: records fetched before the partition is admitted are dropped
  (:meth:`ExactlyOnceOutput.admits`) and the seek replaces that position.
- **revoked**: not admitted at once; the pipeline lets in-flight batches finish, then the open
  transaction is committed if all did (aborted if not) and the producer stopped.
- **rewound** (a record was not acknowledged, a commit failed): every owned partition is voided
  and not admitted, the batch being filled is dropped (``on_rewind``), the producers are stopped
  after aborting, and the partitions are owned again as above: the input is consumed again from
  the committed offsets, and nothing of the aborted transactions is ever visible to
  read_committed readers.

A batch is *stamped* with the transactions its partitions' records were admitted under; its
outputs go only into those same transactions, so the outputs of a batch from before a rewind or a
revocation are dropped. A batch is done once its outputs are handed over: its records'
acknowledgements are checked when the transaction commits, which a failed one rewinds, and records
handed over during a commit wait in the partition's backlog, so the pipeline never waits for a
commit. Fatal errors (:mod:`worker.pipeline.transaction_errors`) stop the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka.structs import TopicPartition

from worker.pipeline.cadence import CommitCadence
from worker.pipeline.kafka import QueryConsumer, TransactionalProducer
from worker.pipeline.produce import backoff_s
from worker.pipeline.transaction_errors import TRANSACTION_ERRORS, TransactionFatal, fatal_error, is_fatal
from worker.pipeline.transactions import PartitionTransaction, transactional_id
from worker.pipeline.types import Outbound
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)

ProducerFactory = Callable[[str], TransactionalProducer]
Stamp = Mapping[TopicPartition, PartitionTransaction]

# Rewinds in a row without a successful commit before the replica gives up.
MAX_REWINDS = 5


class ExactlyOnceOutput:
    """The transactions of every input partition this replica owns (see the module docstring).

    ``producers(transactional_id)`` makes a transactional producer (not started). ``start_timeout_s``
    bounds each producer's start (finding the coordinator, fencing); a start that fails or times out
    is fatal. ``commit_timeout_s`` bounds each commit; one that times out is aborted and rewound.
    """

    def __init__(
        self,
        consumer: QueryConsumer,
        producers: ProducerFactory,
        group_id: str,
        *,
        interval_s: float,
        on_rewind: Callable[[], None] = lambda: None,
        metrics: PipelineMetrics | None = None,
        start_timeout_s: float = 30.0,
        commit_timeout_s: float = 30.0,
        max_rewinds: int = MAX_REWINDS,
        backoff: Callable[[int], float] = backoff_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._producers = producers
        self.group_id = group_id
        self.cadence = CommitCadence(interval_s)
        self._on_rewind = on_rewind
        self._metrics = metrics
        self._start_timeout_s = start_timeout_s
        self._commit_timeout_s = commit_timeout_s
        self._max_rewinds = max_rewinds
        self._backoff = backoff
        self._clock = clock
        self._owned: dict[TopicPartition, PartitionTransaction] = {}
        self._admitted: set[TopicPartition] = set()
        self._ownership = asyncio.Lock()
        self._wake = asyncio.Event()  # set when a transaction opens, and on stop
        self._stopped = asyncio.Event()
        self._closed = False  # after close(): a late assignment owns nothing
        self._rewinds_in_a_row = 0
        self.rewinds = 0
        self.commits = 0

    # --- what the pipeline asks ----------------------------------------------------------------

    def admits(self, partition: TopicPartition) -> bool:
        """Whether records of ``partition`` fetched now may be processed (others are dropped)."""
        return partition in self._admitted

    def owned(self) -> dict[TopicPartition, PartitionTransaction]:
        """The owned partitions' transactions (for logs and tests)."""
        return dict(self._owned)

    def stamp(self, partitions: Iterable[TopicPartition]) -> Stamp:
        """The transactions a batch of these partitions' records, consumed just now, belongs to."""
        return {tp: self._owned[tp] for tp in partitions if tp in self._admitted}

    async def enqueue(
        self, stamp: Stamp, outbounds: Sequence[Outbound], offsets: Mapping[TopicPartition, int]
    ) -> bool:
        """Add a batch's outputs to the transactions of its stamp, with the batch's next offsets;
        False if some were dropped.

        Outputs of partitions whose transaction is no longer the one stamped (rewound, revoked)
        are dropped: that input is consumed again by whoever owns the partition now. Nobody waits
        for the acknowledgements: a transaction commits only once every record of it is
        acknowledged, and a failure rewinds it then (:meth:`commit`).
        """
        by_partition: dict[TopicPartition, list[Outbound]] = {tp: [] for tp in offsets}
        for outbound in outbounds:
            if outbound.origin not in by_partition:
                raise TransactionFatal(f"an output record without its batch's input partition: {outbound}")
            by_partition[outbound.origin].append(outbound)
        taken = True
        for tp, records in by_partition.items():
            txn = stamp.get(tp)
            if txn is None or txn is not self._owned.get(tp):
                taken = False
                continue
            try:
                sent = await txn.send(records, offsets[tp])
            except TRANSACTION_ERRORS as error:  # refused before it reached the broker
                await self._failed(error, [txn])
                return False
            taken = taken and sent
            self._wake.set()
        return taken

    # --- ownership -----------------------------------------------------------------------------

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Own newly assigned partitions (fence, read the committed offset, seek, admit)."""
        async with self._ownership:
            if self._closed:
                return
            await self._own({tp for tp in partitions if tp not in self._owned})

    def withdraw(self, partitions: Iterable[TopicPartition]) -> None:
        """Admit no more records of ``partitions`` (at once, when they are being revoked)."""
        self._admitted.difference_update(partitions)

    async def revoke(self, partitions: Iterable[TopicPartition], *, finished: bool) -> None:
        """Give partitions up: commit their transactions if ``finished`` (every in-flight batch
        done), else abort them; stop their producers."""
        async with self._ownership:
            leaving = [self._owned.pop(tp) for tp in sorted(set(partitions)) if tp in self._owned]
            self.withdraw(t.partition for t in leaving)
            await self._close(leaving, commit=finished, reason="revoke")

    async def close(self, *, commit: bool) -> None:
        """Give up every partition (on stop): commit (``commit``) or abort, stop the producers."""
        self.stop()
        async with self._ownership:
            self._closed = True
            leaving = [self._owned.pop(tp) for tp in sorted(self._owned)]
            self._admitted.clear()
            await self._close(leaving, commit=commit, reason="shutdown")

    async def _own(self, partitions: set[TopicPartition]) -> None:
        if not partitions:
            return
        consumer = self._consumer
        consumer.pause(*partitions)
        txns = {
            tp: PartitionTransaction(
                tp, self._producers(transactional_id(self.group_id, tp)), self.group_id, clock=self._clock
            )
            for tp in sorted(partitions)
        }
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await asyncio.gather(*(txn.start() for txn in txns.values()))
                committed = {tp: await consumer.committed(tp) for tp in txns}
                fresh = [tp for tp, offset in committed.items() if offset is None]
                starts = await consumer.beginning_offsets(fresh) if fresh else {}
        except BaseException as error:
            await asyncio.gather(
                *(txn.close(commit=False, timeout_s=self._commit_timeout_s) for txn in txns.values()),
                return_exceptions=True,
            )
            if isinstance(error, Exception):
                tp = next(iter(txns))
                if isinstance(error, TimeoutError):
                    raise TransactionFatal(
                        f"transactional producers of {len(txns)} partitions did not start within "
                        f"{self._start_timeout_s:g}s (no transaction coordinator?)"
                    ) from error
                raise fatal_error(tp, error) from error
            raise
        # one step, no await: the position, the ownership and the admission change together
        for tp, txn in txns.items():
            found = committed[tp]
            txn.committed = starts[tp] if found is None else found
            consumer.seek(tp, txn.committed)
            self._owned[tp] = txn
        self._admitted.update(txns)
        consumer.resume(*(tp for tp in txns if tp in consumer.assignment()))
        logger.info(
            "owning %d partitions with transactional producers (fenced any previous owner): %s",
            len(txns),
            ", ".join(f"{tp.topic}-{tp.partition}@{txn.committed}" for tp, txn in txns.items()),
        )

    async def _close(self, txns: list[PartitionTransaction], *, commit: bool, reason: str) -> None:
        results = await asyncio.gather(
            *(t.close(commit=commit, timeout_s=self._commit_timeout_s) for t in txns), return_exceptions=True
        )
        for txn, result in zip(txns, results, strict=True):
            if isinstance(result, BaseException):
                if is_fatal(result):
                    raise fatal_error(txn.partition, result) from result
                logger.warning(
                    "the transaction of %s-%d could not be committed (%s), aborted: its next owner "
                    "consumes that input again: %s",
                    txn.partition.topic,
                    txn.partition.partition,
                    reason,
                    result,
                )
            elif result is not None:
                self._count_commit(reason)

    # --- committing ----------------------------------------------------------------------------

    async def commit(self, reason: str) -> None:
        """Commit every open transaction now (each with its partition's offset)."""
        txns = [t for t in self._owned.values() if t.is_open]
        if not txns:
            return
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                results = await asyncio.gather(*(t.commit() for t in txns), return_exceptions=True)
        except TimeoutError as error:
            await self._failed(error, txns)
            return
        failed: list[PartitionTransaction] = []
        for txn, result in zip(txns, results, strict=True):
            if isinstance(result, BaseException):
                if is_fatal(result):
                    raise fatal_error(txn.partition, result) from result
                failed.append(txn)
            elif result is not None:
                self._count_commit(reason)
        if failed:
            first = next(r for r in results if isinstance(r, BaseException))
            await self._failed(first, failed)

    def _count_commit(self, reason: str) -> None:
        self.commits += 1
        self._rewinds_in_a_row = 0
        if self._metrics is not None:
            self._metrics.committed(reason)

    async def run(self) -> None:
        """Commit on the cadence until :meth:`close` (or :meth:`stop`)."""
        while not self._stopped.is_set():
            wait = self.cadence.wait_s((t.opened_at for t in self._owned.values()), self._clock())
            if wait is None:
                self._wake.clear()
                await self._wake.wait()  # a transaction opened, or stopping
                continue
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stopped.wait(), wait)
                except TimeoutError:
                    pass
                else:
                    return
            await self.commit("cadence")

    def stop(self) -> None:
        """End :meth:`run` (the final commit is :meth:`close`)."""
        self._stopped.set()
        self._wake.set()

    # --- failures ------------------------------------------------------------------------------

    async def _failed(self, error: BaseException, involved: Iterable[PartitionTransaction]) -> None:
        involved = list(involved)
        where = involved[0].partition if involved else TopicPartition("?", -1)
        if is_fatal(error):
            raise fatal_error(where, error) from error
        await self.rewind(error, involved)

    async def rewind(self, error: BaseException, involved: Iterable[PartitionTransaction]) -> None:
        """Abort every open transaction and consume again from the committed offsets.

        Does nothing when none of ``involved`` is still owned (another failure rewound first, or
        the partitions were revoked).
        """
        involved = list(involved)
        async with self._ownership:
            if not any(self._owned.get(t.partition) is t for t in involved):
                return
            self._rewinds_in_a_row += 1
            self.rewinds += 1
            if self._rewinds_in_a_row > self._max_rewinds:
                raise TransactionFatal(
                    f"transactions failed {self._rewinds_in_a_row} times in a row without a commit: "
                    f"{type(error).__name__}: {error}"
                ) from error
            partitions = set(self._owned)
            for txn in self._owned.values():
                txn.void()
            self.withdraw(partitions)
            self._on_rewind()
            logger.warning(
                "a transaction failed (%s: %s): aborting the transactions of %d partitions and "
                "consuming them again from their committed offsets (attempt %d)",
                type(error).__name__,
                error,
                len(partitions),
                self._rewinds_in_a_row,
            )
            leaving = [self._owned.pop(tp) for tp in sorted(partitions)]
            await self._close(leaving, commit=False, reason="rewind")
            await asyncio.sleep(self._backoff(self._rewinds_in_a_row - 1))
            if not self._closed:
                await self._own(partitions & self._consumer.assignment())
