"""Value types passed between the pipeline's steps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

from worker.pipeline.kafka import KafkaRecord

Headers = tuple[tuple[str, bytes | None], ...]
OutHeaders = list[tuple[str, bytes]]

__all__ = ["Headers", "InputRecord", "OutHeaders", "Outbound", "TopicPartition", "next_offsets"]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One consumed ``queries`` record: where it sits, when it was made, and its raw bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    # Set on the one record that stands in for a batch the client could not decode
    # (worker.pipeline.undecodable): why, and the offset after the batch's last record.
    undecodable: str | None = None
    batch_end: int | None = None

    @classmethod
    def from_kafka(cls, record: KafkaRecord) -> InputRecord:
        """Copy the fields the pipeline uses out of an aiokafka ``ConsumerRecord``."""
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
        )

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition this record came from."""
        return TopicPartition(self.topic, self.partition)

    @property
    def next_offset(self) -> int:
        """The offset to commit once this record is done: ``offset + 1``, or past its whole batch."""
        return self.batch_end if self.batch_end is not None else self.offset + 1


@dataclass(frozen=True, slots=True)
class Outbound:
    """One record to produce: a routed intent or a dead letter.

    ``source`` is the query a routed intent answers: should the intent not fit its topic, that
    query is dead-lettered instead. Dead letters have none. ``origin`` is the input partition of
    the record it answers: in exactly-once mode it is produced in that partition's transaction,
    with that partition's offsets.
    """

    topic: str
    key: bytes | None
    value: bytes
    headers: OutHeaders = field(default_factory=list)
    source: InputRecord | None = None
    origin: TopicPartition | None = None


def next_offsets(records: Iterable[InputRecord]) -> dict[TopicPartition, int]:
    """Per partition, the offset to commit once every record is done: the highest offset + 1."""
    positions: dict[TopicPartition, int] = {}
    for record in records:
        tp = record.topic_partition
        positions[tp] = max(positions.get(tp, 0), record.next_offset)
    return positions
