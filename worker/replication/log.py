"""Reading the mutation log by assignment: its partitions, its end, its records up to that end.

:class:`MutationLog` is the one reader: a replica replays it into its store and then tails it,
`routes apply/list` fold it into the routes it holds (:func:`read_routes`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config import Settings
from worker.contracts import RouteDefinition
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
    """The next offset to be written on each partition, now. Leaves ``partitions`` assigned.

    ListOffsets is not enough on every Kafka-protocol broker (Tansu answers with the base offset of
    the last record batch, plus one), so the answer is checked against the high watermark of a
    fetch at the last listed offset; the larger wins. The fetched records are discarded: the
    caller seeks where it wants to read.
    """
    listed = {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
    consumer.assign(partitions)
    probed = [tp for tp in partitions if listed[tp.partition] > 0]
    for tp in probed:
        consumer.seek(tp, listed[tp.partition] - 1)
    ends = dict(listed)
    async with asyncio.timeout(timeout_s):
        while probed:
            await consumer.getmany(*probed, timeout_ms=100)
            for tp in list(probed):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp.partition] = max(ends[tp.partition], highwater)
                    probed.remove(tp)
    return ends


class MutationLog:
    """The mutation topic read by an assigned consumer, with its end offsets taken when opened.

    Use as ``async with MutationLog.opened(settings) as log``; :meth:`seek` where to start, then
    read :meth:`up_to_end` (the log as it was when opened) and :meth:`next_batch` (what came after).
    """

    def __init__(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[int, int]):
        self.consumer = consumer
        self.partitions = partitions
        #: partition -> next offset to be written, when the log was opened
        self.ends = ends

    @classmethod
    @asynccontextmanager
    async def opened(cls, settings: Settings) -> AsyncIterator[MutationLog]:
        """Open the log of ``settings.topic_mutations``; raises :class:`TopicMissing`."""
        async with running(AIOKafkaConsumer(**mutation_consumer_options(settings))) as consumer:
            partitions = await mutation_partitions(settings, settings.topic_mutations)
            yield cls(consumer, partitions, await log_end_offsets(consumer, partitions))

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


@dataclass(frozen=True, slots=True)
class LogState:
    """The routes the log holds (folded by key, tombstones applied) and where it ended."""

    routes: dict[str, RouteDefinition]
    end_offsets: dict[int, int]
    records: int
    skipped: int


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
    return LogState(routes, log.ends, folded.records, len(folded.skipped))


async def positions_reached(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[int, int]
) -> bool:
    """True when the consumer's position on every partition is at or past ``ends``."""
    for tp in partitions:
        if await consumer.position(tp) < ends[tp.partition]:
            return False
    return True
