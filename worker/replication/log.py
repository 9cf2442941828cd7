"""Reading the mutation log by assignment: its partitions, its end, its records up to that end.

:class:`MutationLog` is the one reader: a replica replays it into its store and then tails it,
`routes apply/list` fold it into the routes it holds (:func:`read_routes`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteDefinition
from worker.kafka_client import client_options
from worker.replication.errors import TopicMissing
from worker.replication.fold import FoldedMutations, LogRecord, fold
from worker.replication.kafka import mutation_consumer_options, running

logger = logging.getLogger(__name__)

#: longest wait of one fetch for new records (also how quickly a stop request is seen)
POLL_MS = 200


async def mutation_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, sorted; raises :class:`TopicMissing` if it does not exist.

    Asked with a Metadata request that names the topic: a consumer's own metadata covers only the
    topics it already reads (Tansu lists every topic there anyway; Apache Kafka does not). Only
    after the list of all topics holds it: Tansu creates a topic that a request names.
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        described: Any = await admin.describe_topics([topic]) if topic in await admin.list_topics() else []
    finally:
        await admin.close()
    partitions = sorted(
        int(p["partition"]) for d in described if d.get("error_code") == 0 for p in d.get("partitions", ())
    )
    if not partitions:
        raise TopicMissing(f"topic {topic!r} does not exist: create it with `routeworker topics create`")
    return [TopicPartition(topic, p) for p in partitions]


async def log_end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_s: float = 30.0
) -> dict[int, int]:
    """The end of each partition's committed log now: the next offset a ``read_committed`` reader
    gets to. Leaves ``partitions`` assigned, each with a position (the consumer resets none).

    ListOffsets is not enough on every Kafka-protocol broker (Tansu answers with the base offset of
    the last record batch, plus one), so the answer is checked against the last stable offset of a
    fetch at the last listed offset; the larger wins. (The last stable offset, not the high
    watermark: records of a transaction still open are not readable yet.) The fetched records are
    discarded: the caller seeks where it wants to read.
    """
    listed = {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
    starts = await log_start_offsets(consumer, partitions)
    consumer.assign(partitions)
    probed = [tp for tp in partitions if listed[tp.partition] > starts[tp.partition]]
    for tp in partitions:
        # every partition gets a position at once: with auto_offset_reset "none" the fetcher would
        # report a partition without one as an error
        consumer.seek(tp, listed[tp.partition] - 1 if tp in probed else listed[tp.partition])
    ends = dict(listed)
    async with asyncio.timeout(timeout_s):
        while probed:
            await consumer.getmany(*probed, timeout_ms=100)
            for tp in list(probed):
                stable = readable_end(consumer, tp)
                if stable is not None:
                    ends[tp.partition] = max(ends[tp.partition], stable)
                    probed.remove(tp)
    return ends


async def log_start_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[int, int]:
    """The first offset still in each partition's log (retention and DeleteRecords move it)."""
    return {tp.partition: offset for tp, offset in (await consumer.beginning_offsets(partitions)).items()}


def readable_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The end of ``tp``'s committed log as the last fetch response gave it (None: no fetch yet)."""
    stable = consumer.last_stable_offset(tp)
    if stable is not None and stable >= 0:
        return stable
    return consumer.highwater(tp)


class MutationLog:
    """The mutation topic read by an assigned consumer, with its bounds taken when opened.

    Use as ``async with MutationLog.opened(settings) as log``; :meth:`seek` where to start, then
    read :meth:`up_to_end` (the log as it was when opened) and :meth:`next_batch` (what came after).
    :meth:`next_batch` raises :class:`aiokafka.errors.OffsetOutOfRangeError` when a position fell
    below its partition's log start (records were deleted before they were read): the consumer
    never resets a position by itself.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        ends: dict[int, int],
        starts: dict[int, int] | None = None,
        opened_at_ms: int | None = None,
    ):
        self.consumer = consumer
        self.partitions = partitions
        #: partition -> next offset to be written, when the log was opened
        self.ends = ends
        #: partition -> first offset still in the log, when it was opened
        self.starts = starts if starts is not None else {tp.partition: 0 for tp in partitions}
        #: unix ms just before the bounds were taken: every record past ``ends`` came later
        self.opened_at_ms = opened_at_ms if opened_at_ms is not None else int(time.time() * 1000)

    @classmethod
    @asynccontextmanager
    async def opened(cls, settings: Settings) -> AsyncIterator[MutationLog]:
        """Open the log of ``settings.topic_mutations``; raises :class:`TopicMissing`."""
        async with running(AIOKafkaConsumer(**mutation_consumer_options(settings))) as consumer:
            partitions = await mutation_partitions(settings, settings.topic_mutations)
            log = cls(consumer, partitions, {})
            await log.take_bounds()
            yield log

    async def take_bounds(self) -> None:
        """Take the log's start and end offsets again, now (a replica about to replay all of it)."""
        self.opened_at_ms = int(time.time() * 1000)
        self.ends = await log_end_offsets(self.consumer, self.partitions)
        self.starts = await log_start_offsets(self.consumer, self.partitions)

    async def seek(self, positions: Mapping[int, int]) -> None:
        """Read each partition from ``positions`` (partition -> next offset), else from its start."""
        fresh = []
        for tp in self.partitions:
            if tp.partition in positions:
                self.consumer.seek(tp, positions[tp.partition])
            else:
                fresh.append(tp)
        if fresh:
            await self.consumer.seek_to_beginning(*fresh)

    async def next_batch(self) -> list[LogRecord]:
        """The records fetched within one poll (maybe none), in log order per partition."""
        batch = await self.consumer.getmany(timeout_ms=POLL_MS)
        return [record for tp in sorted(batch) for record in batch[tp]]

    async def up_to_end(self, stopping: Callable[[], bool] = lambda: False) -> AsyncIterator[list[LogRecord]]:
        """Batches of records until every partition has reached :attr:`ends` (or ``stopping()``)."""
        while not stopping() and not await positions_reached(self.consumer, self.partitions, self.ends):
            records = await self.next_batch()
            if records:
                yield records

    async def caught_up_at_ms(self) -> int | None:
        """When this reader was last seen at the end of every partition: the oldest time of the
        fetch responses that showed it there (unix ms), or None if it is behind on one."""
        seen: list[int] = []
        for tp in self.partitions:
            end = readable_end(self.consumer, tp)
            polled = self.consumer.last_poll_timestamp(tp)
            if end is None or polled is None or await self.consumer.position(tp) < end:
                return None
            seen.append(polled)
        return min(seen, default=None)


@dataclass(frozen=True, slots=True)
class LogState:
    """The routes the log holds (folded by key, tombstones applied) and where it ended."""

    routes: dict[str, RouteDefinition]
    end_offsets: dict[int, int]
    records: int
    skipped: int
    #: the calibration record in the log (None: none, or withdrawn)
    calibration: RouteCalibrationRecord | None = None


async def read_routes(settings: Settings, *, timeout_s: float = 120.0) -> LogState:
    """Read the whole mutation log up to its current end and fold it (what `routes apply` diffs)."""
    folded = FoldedMutations()
    async with MutationLog.opened(settings) as log:
        await log.seek({})
        async with asyncio.timeout(timeout_s):
            async for records in log.up_to_end():
                folded.merge(await asyncio.to_thread(fold, records, settings.limits))
    routes = {name: d for name, d in folded.changes.items() if d is not None}
    logger.info("read %d records of %s: %d routes", folded.records, settings.topic_mutations, len(routes))
    calibration = folded.calibration.record if folded.calibration is not None else None
    return LogState(routes, log.ends, folded.records, len(folded.skipped), calibration)


async def positions_reached(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[int, int]
) -> bool:
    """True when the consumer's position on every partition is at or past ``ends``."""
    for tp in partitions:
        if await consumer.position(tp) < ends[tp.partition]:
            return False
    return True
