"""Publishing route mutations: one record per route, keyed by name, each acknowledged by the broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from aiokafka import AIOKafkaProducer

from worker.config import Settings
from worker.contracts import RouteMutation, encode
from worker.kafka_client import client_options
from worker.routing import TableVersion, make_version

logger = logging.getLogger(__name__)

#: records sent before waiting for their acknowledgements (bounds the producer's memory)
_WINDOW = 256


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """Where the published records landed: a replica whose version reaches ``positions`` has them."""

    published: int
    #: partition -> next offset after the last acknowledged record
    positions: dict[int, int]

    @property
    def version(self) -> TableVersion:
        """The receipt as a route-table version (``(partition, next_offset)`` pairs)."""
        return make_version(self.positions)


def mutation_record(mutation: RouteMutation) -> tuple[bytes, bytes | None]:
    """Key and value of a mutation record (a tombstone has no value)."""
    value = None if mutation.definition is None else encode(mutation.definition)
    return mutation.name.encode("utf-8"), value


class MutationPublisher:
    """A producer of route mutations. Use as ``async with MutationPublisher(settings) as p``.

    Each record is acknowledged by all in-sync replicas before :meth:`publish` returns; a route's
    records always go to the same partition (key = name), so their order holds.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic_mutations
        fetch = max(settings.max_mutation_bytes, settings.kafka_fetch_max_bytes)
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            # Tansu rejects idempotent producers; order per key holds anyway: aiokafka keeps one batch
            # in flight per partition and retries it before sending the next
            enable_idempotence=False,
            max_request_size=fetch + 1024,
            max_batch_size=1024 * 1024,  # bulk applies: many routes per produce request
            linger_ms=settings.kafka_linger_ms,
            compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        )

    async def start(self) -> None:
        """Connect to the brokers."""
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # a failed start leaves sockets open otherwise
            raise

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def __aenter__(self) -> MutationPublisher:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish(
        self, mutations: Sequence[RouteMutation], on_acked: Callable[[int], None] | None = None
    ) -> PublishReceipt:
        """Send ``mutations`` in order and wait until every one is acknowledged.

        ``on_acked(n)`` is called as each window of ``n`` records is acknowledged (progress bars).
        """
        positions: dict[int, int] = {}
        for start in range(0, len(mutations), _WINDOW):
            window = mutations[start : start + _WINDOW]
            pending = []
            for mutation in window:
                key, value = mutation_record(mutation)
                pending.append(await self._producer.send(self.topic, value, key=key))
            for metadata in await asyncio.gather(*pending):
                positions[metadata.partition] = max(positions.get(metadata.partition, 0), metadata.offset + 1)
            if on_acked is not None:
                on_acked(len(window))
        logger.info("published %d route mutations to %s", len(mutations), self.topic)
        return PublishReceipt(len(mutations), positions)
