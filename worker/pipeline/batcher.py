"""Consumption in batches: up to ``batch_size`` records, waiting at most ``batch_wait`` to fill one.

A batch starts with the first record that arrives and is handed over when full or when the wait
since that first record is over, whichever comes first: a lone query waits ``batch_wait`` at
most, and under load batches fill at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.pipeline.kafka import QueryConsumer
from worker.pipeline.types import InputRecord, TopicPartition, next_offsets
from worker.pipeline.undecodable import UndecodableBatches

# How long one empty poll blocks: also how quickly an idle consumer notices a stop request.
DEFAULT_POLL_S = 0.2


class Batcher:
    """Pulls records from the consumer into batches.

    :meth:`discard_pending` (called when partitions are revoked) drops the records of the batch
    being filled that were fetched before the revocation: they were not processed, and whoever owns
    their partitions next reads them again from the committed offset.

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
        self._generation = 0
        self._undecodable = undecodable
        # per partition, the offset after the last record handed out since the assignment
        self._handed_out: dict[TopicPartition, int] = {}

    def discard_pending(self) -> None:
        """Drop the batch being filled (partitions were revoked under it)."""
        self._generation += 1
        self._handed_out.clear()

    async def _fetch(self, timeout_ms: int, max_records: int) -> list[InputRecord]:
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
        self._handed_out.update(next_offsets(records))
        return records

    async def next_batch(self) -> list[InputRecord]:
        """The next batch, or an empty list when nothing arrived within one poll."""
        records = await self._fetch(self._poll_ms, self.batch_size)
        if not records:
            return []
        generation = self._generation
        deadline = self._clock() + self.batch_wait_s
        while len(records) < self.batch_size:
            left_ms = int((deadline - self._clock()) * 1000)
            if left_ms <= 0:
                break
            more = await self._fetch(left_ms, self.batch_size - len(records))
            if generation != self._generation:
                # fetched under the revoked assignment; ``more`` arrived after the new one
                records, generation = [], self._generation
            records += more
        if generation != self._generation:
            return []
        return records
