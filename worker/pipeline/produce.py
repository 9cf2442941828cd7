"""Produce step: send a batch's output records, await every broker acknowledgement, retry failures.

Nothing returns until every record is acknowledged, so the batch's offsets are never committed
past an unacknowledged output. Retries re-send only the failed records (after a back-off); a record
retried this way may land after later ones of its key, which consumers tolerate (they dedupe on
``query_id`` anyway, as at-least-once requires).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from worker.pipeline.kafka import OutputProducer
from worker.pipeline.types import Outbound

logger = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


def backoff_s(attempt: int) -> float:
    """0.1 s, 0.2 s, 0.4 s ... capped at 5 s."""
    return float(min(FIRST_BACKOFF_S * 2**attempt, MAX_BACKOFF_S))


class Delivery:
    """Sends :class:`Outbound` records through the producer."""

    def __init__(
        self,
        producer: OutputProducer,
        *,
        on_retry: Callable[[int], None] | None = None,
        backoff: Callable[[int], float] = backoff_s,
    ) -> None:
        self._producer = producer
        self._on_retry = on_retry
        self._backoff = backoff

    async def enqueue(self, records: Sequence[Outbound]) -> list[asyncio.Future[RecordMetadata]]:
        """Hand records to the producer in order; one acknowledgement future per record.

        A record the producer refuses right away gets an already-failed future, so it is retried
        like one the broker rejected.
        """
        futures: list[asyncio.Future[RecordMetadata]] = []
        for record in records:
            try:
                future = await self._producer.send(
                    record.topic, record.value, key=record.key, headers=record.headers or None
                )
            except KafkaError as error:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(error)
            futures.append(future)
        return futures

    async def confirm(
        self, records: Sequence[Outbound], futures: Sequence[asyncio.Future[RecordMetadata]]
    ) -> None:
        """Wait for every acknowledgement; re-send failed records with back-off until all are acked."""
        attempt = 0
        while True:
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [i for i, result in enumerate(results) if isinstance(result, BaseException)]
            if not failed:
                return
            first = results[failed[0]]
            logger.warning(
                "%d of %d output records not acknowledged (attempt %d, retrying): %s",
                len(failed),
                len(records),
                attempt + 1,
                first,
            )
            if self._on_retry is not None:
                self._on_retry(len(failed))
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            records = [records[i] for i in failed]
            futures = await self.enqueue(records)

    async def deliver(self, records: Sequence[Outbound]) -> None:
        """:meth:`enqueue` then :meth:`confirm`."""
        await self.confirm(records, await self.enqueue(records))
