"""Record batches the client cannot decode: found, reported by partition and offset, dead-lettered, skipped.

aiokafka decodes a fetched partition batch by batch while ``getmany`` hands records out. When a
batch fails (``CorruptRecordException`` on a CRC mismatch, ``UnsupportedCodecError`` for a codec it
has no library for, a decompressor's own error), the exception leaves ``getmany`` and the
partition's position stays where that fetch began: every later call fetches the same bytes and
fails on the same batch, and a restarted replica fetches it again from the committed offset, so
the whole group crash-loops on one batch. Worse, records already drained from other partitions
in that call are dropped although their positions moved past them.

:class:`UndecodableBatches` is what the batcher calls with such an error. It puts the other
partitions back where the batcher's records ended, fetches every assigned partition's raw bytes
at its position (:mod:`worker.pipeline.raw_fetch`), decodes them batch by batch with aiokafka's own
record classes, and stops at the first batch that fails. The records before that batch are
returned as usual; the batch becomes one stand-in record (its bytes, its offsets, why) that the
decoding step turns into an ``undecodable_batch`` dead letter; the consumer seeks past it. Its
offsets are committed like any record's once the dead letter is acknowledged, so a restart does
not fetch it again. An error that no partition's bytes reproduce is not a bad batch: it is raised
as it came.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiokafka.errors import CorruptRecordException, IllegalStateError, KafkaError, UnsupportedCodecError
from aiokafka.record.memory_records import MemoryRecords

from worker.pipeline.kafka import QueryConsumer
from worker.pipeline.raw_fetch import RawFetch, RecordSet
from worker.pipeline.types import InputRecord, TopicPartition

logger = logging.getLogger(__name__)

# Every message format starts a batch with its base offset and its length after these 12 bytes;
# format 2 keeps its magic byte at 16 and the last offset's delta at 23.
_LOG_HEADER = struct.Struct(">qi")
_MAGIC_AT = 16
_LAST_OFFSET_DELTA = struct.Struct(">i")
_LAST_OFFSET_DELTA_AT = 23


def may_be_undecodable(error: Exception) -> bool:
    """Whether ``error`` from ``getmany`` can come from decoding a batch.

    Decoding raises aiokafka's two decoding errors, or errors that are not Kafka's at all (a
    decompressor's, ``struct``'s, a header key that is not UTF-8); every other ``KafkaError``
    is the broker's or the group's answer and passes through untouched.
    """
    return isinstance(error, CorruptRecordException | UnsupportedCodecError) or not isinstance(
        error, KafkaError
    )


@dataclass(frozen=True, slots=True)
class UndecodableBatch:
    """A record batch the client could not decode: where it sits, where reading goes on, why."""

    topic: str
    partition: int
    offset: int  # the batch's base offset
    next_offset: int  # the offset after its last record
    reason: str
    raw: bytes  # the batch as the broker sent it

    def stand_in(self) -> InputRecord:
        """The one record that takes the batch's place: committing it commits past the batch."""
        return InputRecord(
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            timestamp_ms=int(time.time() * 1000),
            key=None,
            value=self.raw,
            undecodable=f"record batch at offsets {self.offset}..{self.next_offset - 1} "
            f"({len(self.raw)} bytes, kept as the value) cannot be decoded: {self.reason}",
            batch_end=self.next_offset,
        )


@dataclass(frozen=True, slots=True)
class Scanned:
    """A partition's fetched bytes decoded up to the first batch that failed (if one did)."""

    records: list[InputRecord]
    bad: UndecodableBatch | None


def _decode(tp: TopicPartition, raw: bytes, position: int) -> list[InputRecord]:
    """The records of one batch from ``position`` on, as the consumer yields them; raises if it cannot."""
    batch = MemoryRecords(raw).next_batch()
    if batch is None:
        raise CorruptRecordException("no record batch in its bytes")
    if not batch.validate_crc():
        raise CorruptRecordException("CRC mismatch")
    if getattr(batch, "is_control_batch", False):  # transaction markers: never handed out
        return []
    return [
        InputRecord(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
        for r in batch
        if r.offset >= position
    ]


def _batch_end(raw: bytes, base: int, following: int | None, highwater: int) -> int:
    """The offset after a bad batch's last record, from its header, bounded by what comes next.

    The header's last-offset delta sits under the CRC, so it may be as corrupt as the rest: the
    next batch's base offset (or the partition's end) is an upper bound that never skips a record
    of another batch.
    """
    if len(raw) >= _LAST_OFFSET_DELTA_AT + _LAST_OFFSET_DELTA.size and raw[_MAGIC_AT] >= 2:
        end = base + 1 + int(_LAST_OFFSET_DELTA.unpack_from(raw, _LAST_OFFSET_DELTA_AT)[0])
    else:  # formats 0 and 1: one (wrapper) message, whose offset is the last one inside it
        end = base + 1
    limit = following if following is not None else highwater
    if limit > base:
        end = min(end, limit)
    return max(end, base + 1)


def scan(tp: TopicPartition, position: int, record_set: RecordSet) -> Scanned:
    """Decode a record set fetched at ``position`` batch by batch, up to the first that fails."""
    data = record_set.data
    records: list[InputRecord] = []
    pos = 0
    while len(data) - pos >= _LOG_HEADER.size:
        base, length = _LOG_HEADER.unpack_from(data, pos)
        end = pos + _LOG_HEADER.size + max(length, 0)
        if end > len(data):
            break  # a batch cut off by the fetch size: the next fetch brings it whole
        raw = data[pos:end]
        try:
            records += _decode(tp, raw, position)
        except Exception as error:  # noqa: BLE001 - whatever the decoder raises is the reason
            following = _LOG_HEADER.unpack_from(data, end)[0] if len(data) - end >= _LOG_HEADER.size else None
            text = str(error)  # aiokafka's errors name their class already, others do not
            reason = text if type(error).__name__ in text else f"{type(error).__name__}: {text}"
            next_offset = _batch_end(raw, base, following, record_set.highwater)
            return Scanned(records, UndecodableBatch(tp.topic, tp.partition, base, next_offset, reason, raw))
        pos = end
    return Scanned(records, None)


class UndecodableBatches:
    """Recovers the query consumer from a batch it cannot decode (see the module docstring).

    ``on_found`` hears of every bad batch (the pipeline counts it in a metric).
    """

    def __init__(
        self,
        consumer: QueryConsumer,
        raw: RawFetch,
        on_found: Callable[[UndecodableBatch], None] = lambda batch: None,
    ) -> None:
        self._consumer = consumer
        self._raw = raw
        self._on_found = on_found

    async def close(self) -> None:
        """Close the raw fetcher's connections (if it ever opened any)."""
        await self._raw.close()

    async def recover(self, error: Exception, handed_out: Mapping[TopicPartition, int]) -> list[InputRecord]:
        """Records to hand out instead of the failed fetch's, stand-ins for bad batches included.

        ``handed_out`` is, per partition, the offset after the last record handed out since the
        partitions were assigned. Raises ``error`` when it is not a bad batch.
        """
        if not may_be_undecodable(error):
            raise error
        positions: dict[TopicPartition, int] = {}
        for tp in sorted(self._consumer.assignment()):
            try:
                positions[tp] = await self._put_back(tp, handed_out.get(tp))
            except IllegalStateError:
                continue  # revoked meanwhile: its next owner reads it
        try:
            fetched = await self._raw.fetch(positions)
        except KafkaError as fetch_error:
            raise error from fetch_error  # the consumer's error is the one to report
        out: list[InputRecord] = []
        for tp, position in positions.items():
            if tp not in fetched or tp not in self._consumer.assignment():
                continue
            scanned = scan(tp, position, fetched[tp])
            bad = scanned.bad
            if bad is None:
                continue  # fine: the consumer reads it as usual
            logger.error(
                "undecodable record batch in %s[%d] at offset %d (next offset %d): %s; "
                "dead-lettered as undecodable_batch and skipped",
                bad.topic,
                bad.partition,
                bad.offset,
                bad.next_offset,
                bad.reason,
            )
            self._consumer.seek(tp, bad.next_offset)
            self._on_found(bad)
            out += scanned.records
            out.append(bad.stand_in())
        if not out:
            raise error
        return out

    async def _put_back(self, tp: TopicPartition, handed_out: int | None) -> int:
        """Seek ``tp`` back to where the handed-out records end; returns that position.

        aiokafka moved the positions of partitions it drained in the failed call, and dropped those
        records. With nothing handed out since the assignment, the partition began at its
        committed offset, or at its first one (the consumer resets to earliest).
        """
        position = await self._consumer.position(tp)
        start = handed_out
        if start is None:
            start = await self._consumer.committed(tp)
        if start is None:
            start = (await self._consumer.beginning_offsets([tp]))[tp]
        if position > start:
            self._consumer.seek(tp, start)
            return start
        return position
