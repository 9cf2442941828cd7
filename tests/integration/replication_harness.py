"""Helpers of the mutation-log integration tests (and of the fault suite): topics, raw records,
running replicas, digests, and compaction made to happen within seconds."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition, RouteMutation, encode
from worker.embedding import EncoderPool
from worker.replication import (
    MutationPublisher,
    ReplayReason,
    ReplicaEvents,
    RouteReplica,
    TopicSpec,
    ensure_topics,
)
from worker.replication.fold import LogRecord
from worker.replication.kafka import running
from worker.replication.log import MutationLog
from worker.replication.topics import mutation_topic_configs
from worker.replication.vectors import shipped_vectors
from worker.routing import RouteVectors
from worker.routing.index import table_digest


def mutation_settings(bootstrap: str, **overrides: object) -> Settings:
    """Settings naming a mutation topic private to one test."""
    return load_settings(
        kafka_bootstrap=bootstrap, topic_mutations=f"mutations-{uuid.uuid4().hex[:8]}", **overrides
    )


async def create_mutation_topic(
    settings: Settings, partitions: int = 3, configs: Mapping[str, str] | None = None
) -> None:
    topic_configs = {**mutation_topic_configs(settings), **(configs or {})}
    await ensure_topics(settings, [TopicSpec(settings.topic_mutations, partitions, topic_configs)])


async def produce_raw(settings: Settings, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Write records as they are (malformed ones included), each acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False)
    async with running(producer):
        for key, value in records:
            await producer.send_and_wait(settings.topic_mutations, value, key=key)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110 - state of another process or of the replica
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def routes(count: int, prefix: str = "route", extra: str = "") -> list[RouteDefinition]:
    """``count`` route definitions of every shape: negatives, thresholds, metadata."""
    return [
        RouteDefinition(
            name=f"{prefix}-{i}",
            utterances=[f"{prefix} {i} alpha {extra}", f"{prefix} {i} beta", f"question number {i}"],
            negative_utterances=[f"not {prefix} {i}"] if i % 3 == 0 else [],
            threshold=0.4 if i % 2 else None,
            metadata={"index": i},
        )
        for i in range(count)
    ]


async def publish(settings: Settings, mutations: list[RouteMutation]) -> dict[int, int]:
    """Publish mutations (acknowledged); returns the log positions after them."""
    async with MutationPublisher(settings) as publisher:
        return (await publisher.publish(mutations)).positions


@asynccontextmanager
async def replica_running(
    settings: Settings,
    encoder: EncoderPool,
    store: Path,
    *,
    timeout_s: float = 30.0,
    events: ReplicaEvents | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RouteReplica]:
    """A replica replaying and tailing in the background, ready when the block starts."""
    replica = RouteReplica(settings, encoder, store_path=store, events=events, clock=clock)
    task = asyncio.create_task(replica.run())
    try:
        ready = asyncio.create_task(replica.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task in done:
            await task  # raises the replica's error
        assert replica.ready.is_set(), "replica not ready in time"
        yield replica
    finally:
        await replica.stop()
        await task


def folded_digest(routes: Mapping[str, RouteDefinition], fingerprint: str, dim: int) -> str:
    """Digest of a route table holding the log folded by key (every record ships vectors)."""
    vectors: list[RouteVectors] = []
    for definition in routes.values():
        rv = shipped_vectors(definition, fingerprint, dim)
        assert rv is not None, f"route {definition.name} carries no vectors of {fingerprint}"
        vectors.append(rv)
    return table_digest((rv.name, rv.digest) for rv in vectors)


class RecordedEvents(ReplicaEvents):
    """Replica events collected for assertions (thread-safe: some come from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.replays: list[tuple[ReplayReason, str]] = []
        self.replays_done: list[tuple[ReplayReason, int]] = []
        self.skipped: list[tuple[str, int, int]] = []
        self.unknown: int = 0
        self.rebuilds: list[BaseException | None] = []
        self.waits: list[float] = []

    def full_replay(self, reason: ReplayReason, detail: str) -> None:
        with self._lock:
            self.replays.append((reason, detail))

    def full_replay_done(self, reason: ReplayReason, routes: int, seconds: float) -> None:
        with self._lock:
            self.replays_done.append((reason, routes))

    def mutation_skipped(self, code: str, partition: int, offset: int) -> None:
        with self._lock:
            self.skipped.append((code, partition, offset))

    def unknown_fields(self, fields: int) -> None:
        with self._lock:
            self.unknown += fields

    def index_rebuild(self, error: BaseException | None) -> None:
        with self._lock:
            self.rebuilds.append(error)

    def apply_waited(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)


#: the log cleaner runs within a second or so, and drops a tombstone half a second after
#: the cleaning that first saw it
FAST_CLEANING = {
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.001",
    "delete.retention.ms": "500",
    "min.compaction.lag.ms": "0",
}


async def raw_keys(settings: Settings) -> list[bytes | None]:
    """Keys of every record of partition 0 now in the log, in order."""
    tp = TopicPartition(settings.topic_mutations, 0)
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    async with running(reader):
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        reader.seek(tp, (await reader.beginning_offsets([tp]))[tp])
        keys: list[bytes | None] = []
        async with asyncio.timeout(20):
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=300)
                keys += [r.key for r in batch.get(tp, [])]
        return keys


async def clean_until_gone(settings: Settings, key: bytes, timeout_s: float = 60.0) -> None:
    """Keep the cleaner busy (a record rolls the active segment, which is never cleaned) until no
    record of ``key`` is left in the log: its last one was a tombstone, now compacted away."""
    tick = encode(RouteDefinition(name="tick", utterances=["the clock ticks"]))
    deadline = time.monotonic() + timeout_s
    while key in await raw_keys(settings):
        assert time.monotonic() < deadline, f"{key!r} still in the log after {timeout_s} s"
        await produce_raw(settings, [(b"tick", tick)])
        await asyncio.sleep(0.3)


def replay_in_batches_of(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every log read up to the end (a replay) comes in batches of ``size`` records: many batches
    from a small log."""
    whole_batches = MutationLog.up_to_end

    async def in_batches(log: MutationLog, stopping: Any = lambda: False) -> AsyncIterator[list[LogRecord]]:
        async for records in whole_batches(log, stopping):
            for start in range(0, len(records), size):
                yield records[start : start + size]

    monkeypatch.setattr(MutationLog, "up_to_end", in_batches)
