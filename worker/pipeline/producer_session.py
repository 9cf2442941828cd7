"""The output producer's session: opened idempotent where the broker allows it, reopened on demand.

An idempotent producer keeps per-partition order through its own retries (the broker drops a
duplicate and refuses a gap by sequence number). Apache Kafka takes one; some Kafka-protocol
brokers (Tansu) refuse the producer id it asks for at start. With ``kafka_idempotence=auto`` that
refusal is detected at start and logged, and the session produces without idempotence: the
produce step then keeps per-key order itself (:mod:`worker.pipeline.produce`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    IncompatibleBrokerVersion,
    UnknownError,
    UnsupportedVersionError,
)

from worker.pipeline.kafka import OutputProducer, ProducerFactory
from worker.pipeline.produce_policy import ProduceError

logger = logging.getLogger(__name__)

IdempotenceMode = Literal["auto", "on", "off"]

# What a broker answers to the producer-id request of an idempotent producer it does not support:
# Tansu's "unknown error", an old broker's unsupported version, or an ACL-era broker that wants
# IdempotentWrite on the cluster.
_REFUSALS = (
    UnknownError,
    UnsupportedVersionError,
    IncompatibleBrokerVersion,
    ClusterAuthorizationFailedError,
)


class ProducerSession:
    """Owns the output producer: :meth:`open`, :meth:`reopen` (a fresh producer id), :meth:`close`."""

    def __init__(self, factory: ProducerFactory, idempotence: IdempotenceMode = "auto") -> None:
        self._factory = factory
        self._mode = idempotence
        self._producer: OutputProducer | None = None
        self.idempotent = False

    @property
    def producer(self) -> OutputProducer:
        """The open producer."""
        if self._producer is None:
            raise RuntimeError("the producer session is not open")
        return self._producer

    async def open(self) -> None:
        """Start a producer, idempotent unless the mode or the broker says otherwise."""
        if self._mode != "off":
            producer = self._factory(idempotent=True)
            try:
                await producer.start()
            except _REFUSALS as error:
                await producer.stop()
                if self._mode == "on":
                    raise ProduceError(
                        f"the broker refuses idempotent producers ({type(error).__name__}) and "
                        "ROUTEWORKER_KAFKA_IDEMPOTENCE=on"
                    ) from error
                logger.warning(
                    "the broker refuses idempotent producers (%s): producing without idempotence; "
                    "per-key order is kept by re-sending a failed record with every later one of its key",
                    type(error).__name__,
                )
            except BaseException:
                await producer.stop()
                raise
            else:
                self._producer, self.idempotent = producer, True
                logger.info("producing with an idempotent producer (per-partition order through retries)")
                return
        producer = self._factory(idempotent=False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer, self.idempotent = producer, False
        if self._mode == "off":
            logger.info("producing without idempotence (ROUTEWORKER_KAFKA_IDEMPOTENCE=off)")

    async def reopen(self) -> None:
        """Replace the producer by a new one in the same mode (call with nothing in flight)."""
        old, self._producer = self._producer, None
        if old is not None:
            await old.stop()
        producer = self._factory(idempotent=self.idempotent)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        logger.info("the output producer was replaced by a new one (a fresh producer id)")

    async def close(self, timeout_s: float) -> None:
        """Flush and stop the producer, waiting at most ``timeout_s`` (records still unsent then are
        dropped: their offsets were never committed)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await producer.stop()
        except TimeoutError:
            logger.error(
                "the output producer did not flush within %.1fs: its unsent records are dropped "
                "(their queries are processed again from the last committed offset)",
                timeout_s,
            )
