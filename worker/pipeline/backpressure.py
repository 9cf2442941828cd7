"""Flow control: consumption pauses while the in-flight window is full, and resumes as it drains;
a new batch is formed only when the embedding stage can take it.

Waiting alone would already stop new batches; pausing the partitions also stops the consumer's
background fetches, so no more records pile up in its buffer while the window is full.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from worker.pipeline.kafka import QueryConsumer
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.types import TopicPartition
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)


class FlowControl:
    """Bounds the in-flight window of ``tracker`` at ``max_in_flight`` batches."""

    def __init__(
        self, consumer: QueryConsumer, tracker: OffsetTracker, max_in_flight: int, metrics: PipelineMetrics
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._consumer = consumer
        self._tracker = tracker
        self.max_in_flight = max_in_flight
        self._metrics = metrics
        self._paused: set[TopicPartition] = set()

    def has_room(self) -> bool:
        """Whether another batch may start."""
        return len(self._tracker) < self.max_in_flight

    async def wait_for_room(self, stopping: Callable[[], bool]) -> None:
        """Return when another batch may start (or the worker is stopping); pause meanwhile."""
        if self.has_room():
            return
        self._paused = set(self._consumer.assignment())
        self._consumer.pause(*self._paused)
        self._metrics.paused()
        logger.debug(
            "in-flight window full (%d batches): paused %d partitions", len(self._tracker), len(self._paused)
        )
        try:
            await self._tracker.wait_until(lambda: self.has_room() or stopping())
        finally:
            # a rebalance meanwhile may have taken some away (resuming those would raise)
            still_owned = self._paused & set(self._consumer.assignment())
            self._paused = set()
            self._consumer.resume(*still_owned)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions being revoked stay paused: never resume them when the window drains."""
        self._paused -= set(partitions)


#: batches in the embedding stage: the one being embedded and the next, ready
EMBED_PLACES = 2


class EmbedGate:
    """At most ``places`` batches in the embedding stage; the next batch is fetched only when one frees.

    The pipeline gives it two places (:data:`EMBED_PLACES`): one batch is embedded (the encoder pool
    shares each batch among all its sessions), one waits ready (decoded, looked up in the cache) so
    no session idles between batches, and the queries arriving meanwhile stay in the consumer's
    buffer until a place frees, to be taken all at once. Batches grow with the load (embedding per
    text is cheapest in big batches), and a query arriving at an idle worker is embedded at once,
    never behind a queue of tiny batches.
    """

    def __init__(self, places: int) -> None:
        if places < 1:
            raise ValueError("places must be at least 1")
        self._places = asyncio.Semaphore(places)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for a place (the consume loop, while every place is taken)."""
        return self._waiting

    async def enter(self) -> EmbedPass:
        """Wait for a place; the returned pass gives it back (once) when the batch is embedded."""
        self._waiting += 1
        try:
            await self._places.acquire()
        finally:
            self._waiting -= 1
        return EmbedPass(self._places)


class EmbedPass:
    """A batch's place in the embedding stage."""

    __slots__ = ("_places",)

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places: asyncio.Semaphore | None = places

    def leave(self) -> None:
        """Give the place back; later calls do nothing."""
        if self._places is not None:
            self._places.release()
            self._places = None
