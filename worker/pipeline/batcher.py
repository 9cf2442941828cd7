"""Consumption in batches: up to ``batch_size`` records, waiting at most ``batch_wait`` to fill one.

A batch starts with the first record that arrives and is handed over when full or when the wait
since that first record is over, whichever comes first: a lone query waits ``batch_wait`` at
most, and under load batches fill at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from worker.pipeline.kafka import QueryConsumer
from worker.pipeline.types import InputRecord, TopicPartition, next_offsets
from worker.pipeline.undecodable import UndecodableBatches

# How long one empty poll blocks: also how quickly an idle consumer notices a stop request.
DEFAULT_POLL_S = 0.2


class Batcher:
    """Pulls records from the consumer into batches.

    :meth:`revoke` (called when partitions are revoked) drops, from the batch being filled and
    from every fetch until the partitions are assigned again, the records of those partitions:
    they were not processed, and whoever owns the partitions next reads them again from the
    committed offset. Records fetched once the new assignment is in place are kept.

    A fetch that fails on a batch the client cannot decode is handed to ``undecodable``, whose
    records (a stand-in for the bad batch among them) take the failed fetch's place; without it,
    or when the error is not a bad batch, the error is raised.
    """

    #: records of a partition it does not admit, when fetched, are dropped (exactly-once mode:
    #: a partition whose transactional producer and position are not set yet)
    admits: Callable[[TopicPartition], bool] | None = None

    def __init__(
        self,
        consumer: QueryConsumer,
        batch_size: int,
        batch_wait_s: float,
        *,
        poll_s: float = DEFAULT_POLL_S,
        clock: Callable[[], float] = time.monotonic,
        undecodable: UndecodableBatches | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._consumer = consumer
        self.batch_size = batch_size
        self.batch_wait_s = max(batch_wait_s, 0.0)
        self._poll_ms = max(int(poll_s * 1000), 1)
        self._clock = clock
        # Every revoke and every assignment opens a new epoch; a record is kept only if it was
        # fetched in an epoch after the last revoke of its partition.
        self._epoch = 0
        self._revoked_in: dict[TopicPartition, int] = {}
        self._discarded_in = 0
        self._undecodable = undecodable
        # per partition, the offset after the last record fetched for this assignment
        self._handed_out: dict[TopicPartition, int] = {}

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions are being given up: their records fetched so far, or until :meth:`assigned`,
        are dropped."""
        self._epoch += 1
        for tp in partitions:
            self._revoked_in[tp] = self._epoch
            self._handed_out.pop(tp, None)

    def discard_pending(self) -> None:
        """Drop every record fetched so far and not yet handed over, of every partition (the
        consumer is being moved back: exactly-once rewinds); later fetches are kept."""
        self._epoch += 1
        self._discarded_in = self._epoch

    def assigned(self) -> None:
        """The new assignment is in place: what is fetched from now on is the new owner's."""
        self._epoch += 1

    async def _fetch(self, timeout_ms: int, max_records: int) -> list[tuple[int, InputRecord]]:
        try:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            records = [InputRecord.from_kafka(r) for records in fetched.values() for r in records]
        except Exception as error:
            if self._undecodable is None:
                raise
            records = await self._undecodable.recover(error, self._handed_out)  # or raises it
        admits = self.admits
        if admits is not None:
            records = [r for r in records if admits(r.topic_partition)]
        epoch = self._epoch  # when the records were handed over
        self._handed_out.update(next_offsets(self._kept([(epoch, r) for r in records])))
        return [(epoch, r) for r in records]

    def _kept(self, fetched: list[tuple[int, InputRecord]]) -> list[InputRecord]:
        revoked_in, discarded_in = self._revoked_in, self._discarded_in
        return [
            r
            for epoch, r in fetched
            if epoch > revoked_in.get(r.topic_partition, -1) and epoch >= discarded_in
        ]

    async def next_batch(self) -> list[InputRecord]:
        """The next batch, or an empty list when nothing (still owned) arrived within one poll."""
        fetched = await self._fetch(self._poll_ms, self.batch_size)
        if not fetched:
            return []
        deadline = self._clock() + self.batch_wait_s
        while len(fetched) < self.batch_size:
            left_ms = int((deadline - self._clock()) * 1000)
            if left_ms <= 0:
                break
            fetched += await self._fetch(left_ms, self.batch_size - len(fetched))
        return self._kept(fetched)
