"""A bounded sample of recent traffic on the queries topic: the last hour, or the last N records.

Read by assignment (no consumer group, nothing committed), committed records only. Each partition's
first offset of the window comes from offsets-for-times; the window's records are then capped at
``limit`` in all, shared between partitions in proportion to what each holds, keeping the most
recent of each. Records older than the window are dropped by their timestamp too: a broker whose
offsets-for-times is approximate (Tansu answers 0) then costs a longer read, not a wrong sample.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.config import Settings
from worker.contracts import Query, decode_query
from worker.errors import ContractError
from worker.kafka_client import client_options
from worker.replication.errors import ReplicationError
from worker.replication.kafka import running
from worker.replication.log import log_end_offsets, log_start_offsets, mutation_partitions

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SampleUnavailable(Exception):
    """The queries topic cannot be read (missing, not allowed, unreachable): ``reason`` says why."""


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """What to read: the records of the last ``window_s`` seconds, or the last ``count`` records;
    never more than ``limit``."""

    window_s: float | None = None
    count: int | None = None
    limit: int = 2_000

    @classmethod
    def parse(cls, text: str, limit: int = 2_000) -> SampleSpec:
        """``"1h"``, ``"30m"``, ``"90s"``, ``"2d"``: a window; ``"500"``: a count of records."""
        text = text.strip().lower()
        if text.isdigit():
            if int(text) < 1:
                raise ValueError("a count of records is at least 1")
            return cls(count=int(text), limit=limit)
        match = _DURATION.match(text)
        if match is None:
            raise ValueError(f"{text!r} is neither a duration (30m, 1h, 2d) nor a count of records")
        return cls(window_s=float(match.group(1)) * _UNIT_S[match.group(2)], limit=limit)

    def describe(self) -> str:
        if self.count is not None:
            return f"the last {min(self.count, self.limit)} records"
        window = self.window_s or 0.0
        for unit in ("d", "h", "m"):
            if window >= _UNIT_S[unit] and window % _UNIT_S[unit] == 0:
                return f"the last {window / _UNIT_S[unit]:g}{unit} (at most {self.limit} records)"
        return f"the last {window:g}s (at most {self.limit} records)"


@dataclass(frozen=True, slots=True)
class SampledQuery:
    """A query of the sample and where it came from (its metadata is dropped: never printed)."""

    id: str
    text: str
    top_n: int | None
    partition: int
    offset: int


@dataclass(slots=True)
class TrafficSample:
    """The sample: valid queries, and how many records were read and were malformed (by code)."""

    queries: list[SampledQuery] = field(default_factory=list)
    records: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    #: partition -> [first, end) offsets read
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    read_seconds: float = 0.0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


def share(available: Mapping[int, int], limit: int) -> dict[int, int]:
    """``limit`` records shared between partitions in proportion to ``available`` (largest
    remainders, deterministic); all of it when it fits."""
    total = sum(available.values())
    if total <= limit:
        return dict(available)
    exact = {p: n * limit / total for p, n in available.items()}
    taken = {p: int(x) for p, x in exact.items()}
    left = limit - sum(taken.values())
    for p in sorted(exact, key=lambda p: (taken[p] - exact[p], p))[:left]:
        taken[p] += 1
    return taken


async def read_sample(
    settings: Settings,
    spec: SampleSpec,
    *,
    now_ms: int | None = None,
    timeout_s: float = 60.0,
    on_record: Callable[[int], None] | None = None,
) -> TrafficSample:
    """Read ``spec``'s records of ``settings.topic_queries``; :class:`SampleUnavailable` if it cannot."""
    started = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since_ms = None if spec.window_s is None else now_ms - int(spec.window_s * 1000)
    topic = settings.topic_queries
    try:
        partitions = await mutation_partitions(settings, topic)
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            isolation_level="read_committed",
            fetch_max_bytes=settings.kafka_fetch_max_bytes,
        )
        async with running(consumer):
            ends = await log_end_offsets(consumer, partitions)
            starts = await log_start_offsets(consumer, partitions)
            if since_ms is not None:
                found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
                firsts = {
                    tp.partition: ends[tp.partition] if hit is None else max(hit.offset, starts[tp.partition])
                    for tp, hit in found.items()
                }
            else:
                firsts = dict(starts)
            limit = spec.limit if spec.count is None else min(spec.count, spec.limit)
            taken = share({p: max(ends[p] - firsts[p], 0) for p in ends}, limit)
            ranges = {p: (ends[p] - n, ends[p]) for p, n in taken.items() if n > 0}
            sample = TrafficSample(ranges=ranges)
            async with asyncio.timeout(timeout_s):
                await _read(consumer, topic, ranges, since_ms, settings, sample, on_record)
    except ReplicationError as error:  # the topic does not exist
        raise SampleUnavailable(str(error)) from error
    except KafkaError as error:
        raise SampleUnavailable(f"cannot read {topic}: {type(error).__name__}: {error}") from error
    except TimeoutError:
        raise SampleUnavailable(f"reading {topic} took longer than {timeout_s:g} s") from None
    sample.read_seconds = time.monotonic() - started
    logger.info(
        "sampled %d records of %s (%d valid, %d malformed) in %.2f s",
        sample.records,
        topic,
        len(sample.queries),
        sample.malformed_total,
        sample.read_seconds,
    )
    return sample


async def _read(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    since_ms: int | None,
    settings: Settings,
    sample: TrafficSample,
    on_record: Callable[[int], None] | None,
) -> None:
    pending = {TopicPartition(topic, p): end for p, (_, end) in ranges.items()}
    for tp in pending:
        consumer.seek(tp, ranges[tp.partition][0])
    others = [tp for tp in consumer.assignment() if tp not in pending]
    if others:
        consumer.pause(*others)
    limits = settings.limits
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                if record.offset >= pending.get(tp, -1):
                    continue
                if since_ms is not None and 0 <= record.timestamp < since_ms:
                    continue
                sample.records += 1
                try:
                    query: Query = decode_query(record.value, limits)
                except ContractError as error:
                    sample.malformed[error.code.value] = sample.malformed.get(error.code.value, 0) + 1
                    continue
                sample.queries.append(
                    SampledQuery(query.id, query.text, query.top_n, record.partition, record.offset)
                )
            if on_record is not None and records:
                on_record(len(records))
        for tp in list(pending):
            if await consumer.position(tp) >= pending[tp]:
                del pending[tp]
