"""The decision memo: repeated texts reuse their decision only while the table is unchanged."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from aiokafka.structs import TopicPartition
from pipeline_fakes import DIM, FINGERPRINT, FakeConsumer, FakeProducer, HashingEncoder

from worker.config import Settings
from worker.contracts import RoutedIntent
from worker.pipeline import QueryPipeline
from worker.pipeline.decisions import DecisionMemo, router_state, same_state
from worker.routing import Decision, Route, Router, RouteTable, RouteVectors
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)


def decision(route: str) -> Decision:
    return Decision(route, 0.9, (), ((0, 1),))


def test_memo_serves_one_router_state_and_evicts_the_least_recent(router: Router) -> None:
    memo = DecisionMemo(2)
    state = router_state(router)
    memo.use(state)
    memo.put(("a", 3), decision("x"), state)
    memo.put(("b", 3), decision("y"), state)
    assert memo.get(("a", 3)) == decision("x")
    memo.put(("c", 3), decision("z"), state)
    assert memo.get(("b", 3)) is None
    assert memo.get(("a", 3)) == decision("x")
    assert memo.get(("a", 2)) is None  # another top_n is another key
    memo.use(router_state(router))  # nothing changed: same objects
    assert len(memo) == 2


def test_a_changed_table_or_head_forgets_everything_and_refuses_stale_decisions(router: Router) -> None:
    memo = DecisionMemo(10)
    before = router_state(router)
    memo.use(before)
    memo.put(("a", 3), decision("x"), before)
    router.table.apply([], ["music"], ((0, 4),))
    after = router_state(router)
    assert not same_state(before, after)
    memo.use(after)
    assert memo.get(("a", 3)) is None
    memo.put(("a", 3), decision("x"), before)  # made in the old state: not kept
    assert len(memo) == 0
    memo.put(("a", 3), decision("x"), after)
    router.head = object()  # type: ignore[assignment]  # a head swapped in by reference
    memo.use(router_state(router))
    assert len(memo) == 0
    assert len(DecisionMemo(0)) == 0


async def test_repeated_texts_skip_embedding_and_search_until_a_mutation(
    settings: Settings,
    encoder: HashingEncoder,
    table: RouteTable,
    telemetry: Telemetry,
) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    pipeline = QueryPipeline(
        settings,
        encoder=encoder,
        router=Router(table),
        telemetry=telemetry,
        consumer=consumer,
        producers=producer,
        remember_decisions=100,
    )

    def ask(i: int) -> None:
        consumer.append(0, orjson.dumps({"id": f"q{i}", "text": "play some jazz music"}))

    task = asyncio.create_task(pipeline.run())
    try:
        ask(0)
        await until_committed(consumer, 1)
        ask(1)
        await until_committed(consumer, 2)
        assert encoder.embedded == ["play some jazz music"]  # the second needed no vector at all
        # a mutation swaps the snapshot: the next one is decided afresh, on the new table
        jazz = Route("jazz", ("play some jazz music",), threshold=0.5)
        vectors = encoder.embed_sync(jazz.utterances)
        table.apply([RouteVectors(jazz, vectors, np.zeros((0, DIM), np.float32), FINGERPRINT)], [], ((0, 4),))
        ask(2)
        await until_committed(consumer, 3)
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 5)
    routed = {i.query_id: i for i in map(RoutedIntent.model_validate_json, (s.value for s in producer.acked))}
    assert routed["q0"].route == routed["q1"].route == "music"
    assert routed["q0"].routes_version == routed["q1"].routes_version == {"0": 3}
    assert routed["q2"].route == "jazz"
    assert routed["q2"].routes_version == {"0": 4}
    assert len(encoder.embedded) == 2
    assert telemetry.registry.get_sample_value("routeworker_decisions_remembered_total") == 1


async def until_committed(consumer: FakeConsumer, offset: int) -> None:
    async with asyncio.timeout(5):
        while consumer.committed.get(P0) != offset:  # noqa: ASYNC110 - state of the fakes under test
            await asyncio.sleep(0.002)
