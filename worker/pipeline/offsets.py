"""In-flight batches in consumption order; only a finished head advances the committable offsets.

Batches finish out of order (they are processed concurrently), but an offset may be committed only
when every record before it is done. The deque's head gates progress, as in arroyo: finishing the
head pops it and every finished batch behind it, merging their next offsets into ``committable``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from worker.pipeline.types import TopicPartition


class InFlightBatch:
    """A consumed batch's commit positions (offset + 1 per partition) and whether it is done."""

    __slots__ = ("done", "offsets", "seq")

    def __init__(self, seq: int, offsets: Mapping[TopicPartition, int]) -> None:
        self.seq = seq
        self.offsets = dict(offsets)
        self.done = False

    def __repr__(self) -> str:
        return f"InFlightBatch(seq={self.seq}, done={self.done}, offsets={self.offsets})"


class OffsetTracker:
    """The deque of in-flight batches and the offsets that are safe to commit.

    ``changed`` is set on every change, so waiters re-check their condition (see :meth:`wait_until`).
    """

    def __init__(self) -> None:
        self._queue: deque[InFlightBatch] = deque()
        self._committable: dict[TopicPartition, int] = {}
        self._seq = 0
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        """Batches from the oldest unfinished one to the newest: the in-flight window."""
        return len(self._queue)

    def start(self, offsets: Mapping[TopicPartition, int]) -> InFlightBatch:
        """Register a newly consumed batch at the tail."""
        self._seq += 1
        batch = InFlightBatch(self._seq, offsets)
        self._queue.append(batch)
        self.changed.set()
        return batch

    def finish(self, batch: InFlightBatch) -> None:
        """Mark ``batch`` done (its output acknowledged) and advance past finished head batches."""
        batch.done = True
        while self._queue and self._queue[0].done:
            head = self._queue.popleft()
            for tp, offset in head.offsets.items():
                # max(): after a rebalance a partition may come back at an older position
                if offset > self._committable.get(tp, -1):
                    self._committable[tp] = offset
        self.changed.set()

    @property
    def has_committable(self) -> bool:
        """Whether some released offsets wait for a commit."""
        return bool(self._committable)

    def take_committable(self) -> dict[TopicPartition, int]:
        """Hand over (and forget) the offsets ready to commit."""
        ready, self._committable = self._committable, {}
        return ready

    def restore(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Put back offsets whose commit failed, unless newer ones arrived meanwhile."""
        for tp, offset in offsets.items():
            if offset > self._committable.get(tp, -1):
                self._committable[tp] = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> int:
        """Drop the offsets of partitions this consumer no longer owns: the committable ones, and
        those of batches still in flight, so a batch finishing after the revocation never commits
        over the partition's next owner. Returns how many in-flight batches lost offsets."""
        gone = set(partitions)
        for tp in gone:
            self._committable.pop(tp, None)
        late = 0
        for batch in self._queue:
            if gone & batch.offsets.keys():
                late += 1
                batch.offsets = {tp: o for tp, o in batch.offsets.items() if tp not in gone}
        return late

    def holding(self, partitions: Iterable[TopicPartition]) -> int:
        """In-flight batches with records of any of ``partitions``."""
        wanted = set(partitions)
        return sum(1 for batch in self._queue if wanted & batch.offsets.keys())

    def pending(self) -> list[InFlightBatch]:
        """The in-flight window, oldest first (for logs and tests)."""
        return list(self._queue)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; re-checked whenever the tracker changes or is poked."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def poke(self) -> None:
        """Wake every :meth:`wait_until` caller (e.g. because the worker is stopping)."""
        self.changed.set()
