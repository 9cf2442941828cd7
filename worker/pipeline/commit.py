"""Commit step: commit the tracker's finished offsets on a cadence, and on demand (revoke, stop)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import CommitFailedError, IllegalStateError

from worker.pipeline.kafka import QueryConsumer
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.types import TopicPartition
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)

# Pause between attempts of a final commit refused while the group rebalances.
_RETRY_S = 0.1


class Committer:
    """Commits ``offset + 1`` positions that the tracker released, for partitions still owned.

    A commit refused because the group is rebalancing is logged and its offsets kept for the next
    try (the commit on revoke); offsets of partitions given up are dropped: their new owner starts
    from the last committed offset, which only duplicates acknowledged work. Any other failure is
    fatal (raised).
    """

    def __init__(
        self, consumer: QueryConsumer, tracker: OffsetTracker, interval_s: float, metrics: PipelineMetrics
    ) -> None:
        self._consumer = consumer
        self._tracker = tracker
        self._interval_s = interval_s
        self._metrics = metrics
        self._lock = asyncio.Lock()  # one commit at a time keeps committed offsets monotonic
        self._stopped = asyncio.Event()
        self.committed: dict[TopicPartition, int] = {}

    async def commit(self, reason: str) -> dict[TopicPartition, int]:
        """Commit everything releasable now; returns what was committed."""
        async with self._lock:
            ready = self._tracker.take_committable()
            owned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in ready.items() if tp in owned}
            if len(offsets) < len(ready):
                logger.info(
                    "not committing offsets of partitions given up: %s",
                    sorted(tp for tp in ready if tp not in owned),
                )
            if not offsets:
                return {}
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as error:
                # kept for the commit on revoke, which runs before the partitions change hands
                self._tracker.restore(offsets)
                logger.warning("offset commit (%s) refused during a rebalance: %s", reason, error)
                return {}
            self.committed.update(offsets)
            self._metrics.committed(reason)
            logger.debug("committed (%s) %s", reason, offsets)
            return offsets

    async def commit_all(self, reason: str, within_s: float) -> None:
        """Commit until nothing releasable is left, retrying refusals (a rebalance in progress)
        for up to ``within_s``; raises :class:`TimeoutError` if offsets are still uncommitted."""
        async with asyncio.timeout(within_s):
            await self.commit(reason)
            while self._tracker.has_committable:
                await asyncio.sleep(_RETRY_S)
                await self.commit(reason)

    async def run(self) -> None:
        """Commit every ``interval_s`` until :meth:`stop`."""
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), self._interval_s)
            except TimeoutError:
                await self.commit("cadence")

    def stop(self) -> None:
        """End :meth:`run` (the final commit is the caller's, after draining)."""
        self._stopped.set()
