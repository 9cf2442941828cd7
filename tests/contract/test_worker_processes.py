"""`routeworker run` processes against the real broker and model: signals, crashes, a group of two."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest
from pipeline_harness import (
    QUERY_TEXTS,
    Record,
    TopicReader,
    Topics,
    WorkerProcess,
    committed_offsets,
    create_topics,
    log_end,
    produce,
    publish_routes,
    route_definitions,
)

from worker.contracts import RoutedIntent
from worker.local.capabilities import BrokerService

pytestmark = pytest.mark.integration

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM = f"00-{UPSTREAM_TRACE}-00f067aa0ba902b7-01".encode()


def queries(start: int, count: int) -> list[Record]:
    return [
        (
            f"conv-{i % 13}".encode(),
            orjson.dumps({"id": f"q{i}", "text": QUERY_TEXTS[i % len(QUERY_TEXTS)]}),
            [],
        )
        for i in range(start, start + count)
    ]


def routed(records: list[object], topic: str) -> list[RoutedIntent]:
    return [RoutedIntent.model_validate_json(r.value) for r in records if r.topic == topic]  # type: ignore[attr-defined]


async def offsets_by_id(bootstrap: str, topic: str, count: int) -> dict[str, tuple[int, int]]:
    """query id -> (partition, offset) of every query record."""
    async with TopicReader(bootstrap, [topic]) as reader:
        records = await reader.wait_for(lambda rs: len(rs) >= count)
    return {orjson.loads(r.value)["id"]: (r.partition, r.offset) for r in records}


async def prepared(any_broker: BrokerService) -> Topics:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    await publish_routes(any_broker.bootstrap, topics.mutations, route_definitions())
    return topics


async def test_sigterm_stops_cleanly_after_committing_everything_it_produced(
    any_broker: BrokerService, tmp_path: Path
) -> None:
    topics = await prepared(any_broker)
    # batches of 32: the in-flight window (4 batches) stays far below the stream, so the stop lands
    # mid-stream on a fast machine too (with batches of 256 a worker could have all 2,000 in flight
    # by the time the reader has seen 100 intents, and finish them all before stopping)
    env = topics.env(any_broker.bootstrap, tmp_path / "store.sqlite3", replica_id="w1", batch_size=32)
    worker = WorkerProcess(env, tmp_path / "w1.log")
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents]) as reader:
            await produce(any_broker.bootstrap, topics.queries, queries(0, 2000))
            await reader.wait_for(lambda rs: len(rs) >= 100)
            worker.signal(signal.SIGTERM)
            assert await worker.wait(60) == 0, worker.log()
            committed = await committed_offsets(any_broker.bootstrap, topics.group, topics.queries)
            positions = await offsets_by_id(any_broker.bootstrap, topics.queries, 2000)
            # every record below the committed offsets is in the output, and nothing beyond them
            expected = {qid for qid, (p, o) in positions.items() if o < committed.get(p, 0)}
            await reader.wait_for(lambda rs: len(rs) >= len(expected), within=10)
            produced = Counter(i.query_id for i in routed(reader.records, topics.intents))
        assert set(produced) == expected
        assert all(n == 1 for n in produced.values())
        assert len(expected) < 2000  # it stopped mid-stream
        assert "stopped cleanly" in worker.log()
    finally:
        worker.close()


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    any_broker: BrokerService, tmp_path: Path
) -> None:
    topics = await prepared(any_broker)
    env = topics.env(any_broker.bootstrap, tmp_path / "store.sqlite3")
    first = WorkerProcess(env, tmp_path / "first.log")
    second: WorkerProcess | None = None
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents]) as reader:
            await produce(any_broker.bootstrap, topics.queries, queries(0, 1500))
            await reader.wait_for(lambda rs: len(rs) >= 150)
            first.signal(signal.SIGKILL)
            await first.wait(10)
            committed_at_crash = await committed_offsets(any_broker.bootstrap, topics.group, topics.queries)
            assert sum(committed_at_crash.values()) < 1500, "the crash came after the stream"
            second = WorkerProcess(env, tmp_path / "second.log")
            positions = await offsets_by_id(any_broker.bootstrap, topics.queries, 1500)
            await second.wait_for_log("worker.pipeline.app: assigned")
            await reader.wait_for(
                lambda rs: {i.query_id for i in routed(rs, topics.intents)} >= set(positions)
            )
            # every query has an intent by now, but maybe only from the first worker (its output
            # past its last commit): the second is done once the group has committed the log end
            end = await log_end(any_broker.bootstrap, topics.queries, 1500)
            async with asyncio.timeout(60):
                while await committed_offsets(any_broker.bootstrap, topics.group, topics.queries) != end:
                    assert second.proc.poll() is None, second.log()
                    await asyncio.sleep(0.1)
            second.signal(signal.SIGTERM)
            assert await second.wait(60) == 0, second.log()
            counts = Counter(i.query_id for i in routed(reader.records, topics.intents))
        assert set(counts) == set(positions)
        duplicated = {qid for qid, n in counts.items() if n > 1}
        # duplicates come only from work after the last commit before the crash
        for qid in duplicated:
            partition, offset = positions[qid]
            assert offset >= committed_at_crash.get(partition, 0), (qid, positions[qid], committed_at_crash)
        final = await committed_offsets(any_broker.bootstrap, topics.group, topics.queries)
        assert final == end, second.log()
    finally:
        first.close()
        if second is not None:
            second.close()


async def stream_queries(bootstrap: str, topic: str, stop: asyncio.Event, chunk: int = 20) -> int:
    """Produce queries in small paced chunks until ``stop``; returns how many were produced."""
    count = 0
    while not stop.is_set():
        await produce(bootstrap, topic, queries(count, chunk))
        count += chunk
        await asyncio.sleep(0.05)  # pacing, so the stream spans the second worker's arrival
    return count


async def test_a_second_worker_joining_mid_stream_loses_nothing(
    any_broker: BrokerService, tmp_path: Path
) -> None:
    topics = await prepared(any_broker)
    first = WorkerProcess(
        topics.env(any_broker.bootstrap, tmp_path / "a.sqlite3", replica_id="a"), tmp_path / "a.log"
    )
    second: WorkerProcess | None = None
    stop = asyncio.Event()
    stream = asyncio.create_task(stream_queries(any_broker.bootstrap, topics.queries, stop))
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents]) as reader:
            await reader.wait_for(lambda rs: len(rs) >= 50)
            second = WorkerProcess(
                topics.env(any_broker.bootstrap, tmp_path / "b.sqlite3", replica_id="b"), tmp_path / "b.log"
            )
            await second.wait_for_log("worker.pipeline.app: assigned", within=60)
            await reader.wait_for(lambda rs: any(i.worker == "b" for i in routed(rs, topics.intents)))
            stop.set()
            wanted = {f"q{i}" for i in range(await stream)}
            await reader.wait_for(
                lambda rs: {i.query_id for i in routed(rs, topics.intents)} >= wanted, within=90
            )
            for worker in (first, second):
                worker.signal(signal.SIGTERM)
            assert await first.wait(60) == 0, first.log()
            assert await second.wait(60) == 0, second.log()
            intents = routed(reader.records, topics.intents)
        assert {i.query_id for i in intents} == wanted
        assert {i.worker for i in intents} == {"a", "b"}
        assert await committed_offsets(any_broker.bootstrap, topics.group, topics.queries) == await log_end(
            any_broker.bootstrap, topics.queries, len(wanted)
        )
    finally:
        stop.set()
        await asyncio.gather(stream, return_exceptions=True)
        first.close()
        if second is not None:
            second.close()


async def test_a_routed_intent_continues_the_trace_of_its_query(
    any_broker: BrokerService, tmp_path: Path
) -> None:
    topics = await prepared(any_broker)
    worker = WorkerProcess(topics.env(any_broker.bootstrap, tmp_path / "store.sqlite3"), tmp_path / "w.log")
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents]) as reader:
            traced = orjson.dumps({"id": "traced", "text": "will it rain in london tomorrow"})
            await produce(
                any_broker.bootstrap,
                topics.queries,
                [(b"conv", traced, [("traceparent", UPSTREAM)]), *queries(0, 3)],
            )
            records = await reader.wait_for(lambda rs: len(rs) >= 4)
        (record,) = [r for r in records if orjson.loads(r.value)["query_id"] == "traced"]
        intent = RoutedIntent.model_validate_json(record.value)
        assert intent.route == "weather"
        assert record.key == b"conv"
        headers = dict(record.headers)
        _version, trace_id, span_id, _flags = headers["traceparent"].decode().split("-")
        assert trace_id == UPSTREAM_TRACE
        assert span_id != "00f067aa0ba902b7"  # a span of the worker, child of the upstream one
        others = [dict(r.headers)["traceparent"].decode().split("-")[1] for r in records if r is not record]
        assert UPSTREAM_TRACE not in others
        worker.signal(signal.SIGTERM)
        assert await worker.wait(60) == 0, worker.log()
    finally:
        worker.close()
