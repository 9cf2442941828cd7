"""Publishing route mutations: one record per route, keyed by name, each acknowledged by the broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer

from worker.config import Settings
from worker.contracts import RouteCalibrationRecord, RouteMutation, encode
from worker.kafka_client import client_options
from worker.replication.calibrations import calibration_mutation
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


#: how long a guarded publish may keep its transaction open (Kafka's default is one minute; a
#: large apply with vectors takes longer). Replicas read only committed records: they wait for it.
TRANSACTION_TIMEOUT_MS = 300_000


class MutationPublisher:
    """A producer of route mutations. Use as ``async with MutationPublisher(settings) as p``.

    Each record is acknowledged by all in-sync replicas before :meth:`publish` returns; a route's
    records always go to the same partition (key = name), so their order holds. With a
    ``transactional_id`` the records of :meth:`publish` go into the transaction begun by
    :meth:`begin_transaction` (see :mod:`worker.replication.guard`).
    """

    def __init__(self, settings: Settings, *, transactional_id: str | None = None) -> None:
        self.topic = settings.topic_mutations
        self.transactional_id = transactional_id
        fetch = max(settings.max_mutation_bytes, settings.kafka_fetch_max_bytes)
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            # Tansu rejects idempotent producers; order per key holds anyway: aiokafka keeps one batch
            # in flight per partition and retries it before sending the next (a transactional
            # producer is idempotent, as Kafka requires)
            enable_idempotence=transactional_id is not None,
            max_request_size=fetch + 1024,
            max_batch_size=1024 * 1024,  # bulk applies: many routes per produce request
            linger_ms=settings.kafka_linger_ms,
            compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
            transactional_id=transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        )

    async def begin_transaction(self) -> None:
        """Begin a transaction: first the producer id of ``transactional_id`` is taken, which fences
        every earlier producer of that id (their open transaction is aborted)."""
        await self._producer.begin_transaction()

    async def commit_transaction(self) -> None:
        """Commit the open transaction: its records become visible to committed readers at once."""
        await self._producer.commit_transaction()

    async def abandon_transaction(self) -> None:
        """End a transaction that will not be committed: aborted (committed readers never see its
        records), or, when this producer was fenced, left to the producer that fenced it (which
        aborted it already)."""
        # aiokafka keeps the fencing error in a future nobody awaits once a send has failed with it,
        # and cannot abort from that state (as its own transaction() context knows): read through it
        manager: Any = getattr(self._producer, "_txn_manager", None)
        if manager is not None and manager.is_fatal_error():
            manager.wait_for_transaction_end().exception()  # retrieved: no "never retrieved" at exit
            self._retrieve_failed_batches()
            return
        await self._producer.abort_transaction()

    def _retrieve_failed_batches(self) -> None:
        # When its sender dies (fenced), aiokafka fails the batches it still holds, and their drain
        # waiters with them, which nobody awaits any more: asyncio would log each as "exception never
        # retrieved" when it is collected (a traceback on the command line's stderr). Read them.
        accumulator: Any = getattr(self._producer, "_message_accumulator", None)
        if accumulator is None:
            return
        held = [*getattr(accumulator, "_pending_batches", ())]
        for batches in getattr(accumulator, "_batches", {}).values():
            held.extend(batches)
        for batch in held:
            for name in ("_drain_waiter", "future"):
                future = getattr(batch, name, None)
                if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
                    future.exception()

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
        self,
        mutations: Sequence[RouteMutation],
        on_acked: Callable[[int], None] | None = None,
        *,
        calibration: RouteCalibrationRecord | None = None,
    ) -> PublishReceipt:
        """Send ``mutations`` in order, then ``calibration``, and wait until every one is acknowledged.

        ``on_acked(n)`` is called as each window of ``n`` route records is acknowledged (progress bars).
        A calibration goes last: replicas that fetch it with the routes it was made for put both in
        service at once.
        """
        records = [mutation_record(mutation) for mutation in mutations]
        if calibration is not None:
            records.append(calibration_mutation(calibration))
        positions: dict[int, int] = {}
        for start in range(0, len(records), _WINDOW):
            window = records[start : start + _WINDOW]
            pending = []
            for key, value in window:
                pending.append(await self._producer.send(self.topic, value, key=key))
            for metadata in await asyncio.gather(*pending):
                positions[metadata.partition] = max(positions.get(metadata.partition, 0), metadata.offset + 1)
            if on_acked is not None:
                on_acked(min(len(window), max(len(mutations) - start, 0)))  # route records only
        logger.info(
            "published %d route mutations%s to %s",
            len(mutations),
            " and a calibration" if calibration is not None else "",
            self.topic,
        )
        return PublishReceipt(len(records), positions)
