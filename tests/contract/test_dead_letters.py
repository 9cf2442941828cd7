"""Malformed queries of every kind, interleaved with valid ones, through the real broker and model."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from pipeline_harness import (
    QUERY_TEXTS,
    Record,
    TopicReader,
    Topics,
    build_table,
    committed_offsets,
    create_topics,
    log_end,
    produce,
)

from worker.contracts import DeadLetter, RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.errors import ErrorCode
from worker.local.capabilities import BrokerService
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration

MALFORMED: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe\xfa not utf-8", "invalid_utf8"),
    (b"{not json", "invalid_json"),
    (b'["a", "list"]', "not_object"),
    (b'{"text": "no id"}', "schema"),
    (b'{"id": 5, "text": "id is a number"}', "schema"),
    (None, "schema"),
    (b'{"id": "x", "text": "hi", "top_n": 500}', "schema"),
    (b'{"id": "x", "text": "hi", "colour": "red"}', "unknown_field"),
    (b'{"id": "x", "text": "   "}', "empty_text"),
    (orjson.dumps({"id": "x", "text": "long " * 1000}), "too_large"),
    (b'{"id": "x", "text": "' + b"a" * 70_000 + b'"}', "too_large"),
]


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


async def test_malformed_queries_go_to_the_dlq_and_valid_ones_are_routed_once(
    any_broker: BrokerService, encoder: EncoderPool
) -> None:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    rng = random.Random(7)
    records: list[Record] = []
    for i in range(1000):
        text = QUERY_TEXTS[i % len(QUERY_TEXTS)] + f" #{i % 50}"
        records.append((f"conv-{i % 37}".encode(), orjson.dumps({"id": f"q{i}", "text": text}), []))
        value, code = MALFORMED[i % len(MALFORMED)]
        records.append((f"bad-{i}-{code}".encode(), value, [("origin", b"fuzz")]))
    rng.shuffle(records)

    telemetry = Telemetry(replica_id="dlq-test")
    pipeline = QueryPipeline(
        # strict: a field this version does not know dead-letters the query (tolerant routes it)
        topics.settings(any_broker.bootstrap, contract_mode="strict"),
        encoder=encoder,
        router=Router(build_table(encoder)),
        telemetry=telemetry,
    )
    running = asyncio.create_task(pipeline.run())
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents, topics.dlq]) as reader:
            await produce(any_broker.bootstrap, topics.queries, records)
            ends = await log_end(any_broker.bootstrap, topics.queries, 2000)

            async def all_committed() -> bool:
                return await committed_offsets(any_broker.bootstrap, topics.group, topics.queries) == ends

            async with asyncio.timeout(120):
                while not await all_committed():
                    assert not running.done(), "the pipeline stopped"
                    await asyncio.sleep(0.2)
            got = await reader.wait_for(lambda rs: len(rs) >= 2000)
            codes = {
                code.value: telemetry.registry.get_sample_value(
                    "routeworker_queries_dead_lettered_total", {"error_code": code.value}
                )
                for code in ErrorCode
            }
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 30)
        telemetry.shutdown()

    routed = [RoutedIntent.model_validate_json(r.value) for r in got if r.topic == topics.intents]
    assert Counter(i.query_id for i in routed) == Counter(f"q{i}" for i in range(1000))  # exactly once each
    dead = [r for r in got if r.topic == topics.dlq]
    assert len(dead) == 1000
    for record in dead:
        letter = DeadLetter.model_validate_json(record.value)
        key = base64.b64decode(letter.key_b64 or "").decode()
        assert record.key.decode() == key
        assert letter.error_code.value == key.split("-", 2)[2], letter.reason
        assert letter.source.topic == topics.queries
        assert [h.key for h in letter.headers] == ["origin"]
        index = int(key.split("-")[1])
        original = MALFORMED[index % len(MALFORMED)][0]
        expected = None if original is None else base64.b64encode(original).decode()
        assert letter.value_b64 == expected
    by_code = Counter(DeadLetter.model_validate_json(r.value).error_code.value for r in dead)
    assert {code: n for code, n in codes.items() if n} == by_code  # the metric counts what the DLQ holds
