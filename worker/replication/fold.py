"""Folding mutation records: last valid value per key, tombstones as deletes, malformed ones skipped.

Pure and synchronous (decoding is CPU work): replicas call it from a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from worker.contracts import Limits, RouteDefinition, decode_mutation
from worker.errors import ContractError
from worker.routing import RouteVectors

#: turns a decoded definition into its vectors when it can (shipped ones), raising ContractError when
#: the record is unusable; None means "embed it"
Resolver = Callable[[RouteDefinition], RouteVectors | None]

logger = logging.getLogger(__name__)

_YIELD_EVERY = 4


class LogRecord(Protocol):
    """What folding needs from a consumed record (aiokafka's ``ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch (the producer's or the broker's clock; -1 when unknown)."""
        ...


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A malformed mutation record: where it is and why it was not applied."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(slots=True)
class FoldedMutations:
    """The net effect of a run of records: each route's last valid definition, or None if deleted."""

    changes: dict[str, RouteDefinition | None] = field(default_factory=dict)
    #: vectors of changed routes that came resolved (shipped embeddings of this replica's model)
    vectors: dict[str, RouteVectors] = field(default_factory=dict)
    #: partition -> next offset (last record's offset + 1)
    offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)

    def add(self, record: LogRecord, limits: Limits, resolve: Resolver | None = None) -> None:
        """Fold one record in; a malformed record is logged with its position and skipped, so its
        route keeps the last valid definition."""
        self.records += 1
        self.offsets[record.partition] = max(self.offsets.get(record.partition, 0), record.offset + 1)
        try:
            mutation = decode_mutation(record.key, record.value, limits)
            vectors = None
            if mutation.definition is not None and resolve is not None:
                vectors = resolve(mutation.definition)
        except ContractError as error:
            skipped = SkippedRecord(record.topic, record.partition, record.offset, str(error))
            self.skipped.append(skipped)
            logger.warning(
                "skipped malformed mutation at %s[%d] offset %d: %s",
                record.topic,
                record.partition,
                record.offset,
                error,
            )
            return
        # re-inserting moves the key to the end: changes keep the order of their last record
        self.changes.pop(mutation.name, None)
        self.changes[mutation.name] = mutation.definition
        self.vectors.pop(mutation.name, None)
        if vectors is not None:
            self.vectors[mutation.name] = vectors

    def merge(self, later: FoldedMutations) -> None:
        """Fold ``later`` (records after these) into this one."""
        for name, definition in later.changes.items():
            self.changes.pop(name, None)
            self.changes[name] = definition
            self.vectors.pop(name, None)
        self.vectors.update(later.vectors)
        for partition, offset in later.offsets.items():
            self.offsets[partition] = max(self.offsets.get(partition, 0), offset)
        self.records += later.records
        self.skipped.extend(later.skipped)


def fold(records: Iterable[LogRecord], limits: Limits, resolve: Resolver | None = None) -> FoldedMutations:
    """Fold ``records`` (in log order per partition) into their net effect."""
    folded = FoldedMutations()
    for count, record in enumerate(records, start=1):
        folded.add(record, limits, resolve)
        if count % _YIELD_EVERY == 0:
            # Decoding is pure Python and holds the GIL; without a voluntary release, threads that
            # take the GIL back after each C call (searches, the event loop) wait a whole switch
            # interval (5 ms) every time, and query throughput collapses while mutations apply.
            time.sleep(0)
    return folded
