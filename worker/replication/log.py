"""Reading the mutation log by assignment: its partitions, its end, and its folded content."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.config import Settings
from worker.contracts import RouteDefinition
from worker.replication.errors import TopicMissing
from worker.replication.fold import FoldedMutations, fold
from worker.replication.kafka import mutation_consumer_options, running

logger = logging.getLogger(__name__)


async def mutation_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, sorted; raises :class:`TopicMissing` if it does not exist."""
    await consumer.topics()  # refreshes the metadata: a topic created a moment ago is seen
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise TopicMissing(f"topic {topic!r} does not exist: create it with `routeworker topics create`")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


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


@dataclass(frozen=True, slots=True)
class LogState:
    """The routes the log holds (folded by key, tombstones applied) and where it ended."""

    routes: dict[str, RouteDefinition]
    end_offsets: dict[int, int]
    records: int
    skipped: int


async def read_routes(settings: Settings, *, timeout_s: float = 120.0) -> LogState:
    """Read the whole mutation log up to its current end and fold it (what `routes apply` diffs)."""
    async with running(AIOKafkaConsumer(**mutation_consumer_options(settings))) as consumer:
        partitions = await mutation_partitions(consumer, settings.topic_mutations)
        ends = await log_end_offsets(consumer, partitions)
        await consumer.seek_to_beginning(*partitions)
        folded = FoldedMutations()
        async with asyncio.timeout(timeout_s):
            while not await positions_reached(consumer, partitions, ends):
                batch = await consumer.getmany(timeout_ms=200)
                for tp in sorted(batch, key=lambda t: t.partition):
                    folded.merge(await asyncio.to_thread(fold, batch[tp], settings.limits))
    routes = {name: d for name, d in folded.changes.items() if d is not None}
    logger.info("read %d records of %s: %d routes", folded.records, settings.topic_mutations, len(routes))
    return LogState(routes, ends, folded.records, len(folded.skipped))


async def positions_reached(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[int, int]
) -> bool:
    """True when the consumer's position on every partition is at or past ``ends``."""
    for tp in partitions:
        if await consumer.position(tp) < ends[tp.partition]:
            return False
    return True
