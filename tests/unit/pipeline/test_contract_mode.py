"""An old reader against a new writer: queries with fields this version does not know (issue 13, item 7)."""

from __future__ import annotations

import asyncio
import base64
import logging

import orjson
import pytest
from pipeline_fakes import FakeConsumer, FakeProducer, HashingEncoder

from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry

#: what an upstream one version ahead sends: two fields this worker does not know
NEWER = {
    "id": "q1",
    "text": "play some jazz music",
    "metadata": {"n": 1},
    "locale": "de",
    "channel": {"a": 1},
}


async def _drain(settings: Settings, router: Router, telemetry: Telemetry, *values: bytes) -> FakeProducer:
    consumer, producer = FakeConsumer(), FakeProducer()
    for value in values:
        consumer.append(0, value, key=b"conversation-1")
    pipeline = QueryPipeline(
        settings,
        encoder=HashingEncoder(),
        router=router,
        telemetry=telemetry,
        consumer=consumer,
        producers=producer,
    )
    task = asyncio.create_task(pipeline.run())
    try:
        async with asyncio.timeout(5):
            while consumer.committed != consumer.end_offsets():  # noqa: ASYNC110 - state of the fakes
                await asyncio.sleep(0.002)
    finally:
        pipeline.stop()
    await asyncio.wait_for(task, 5)
    return producer


def _unknown_fields(telemetry: Telemetry) -> float | None:
    return telemetry.registry.get_sample_value(
        "routeworker_contracts_unknown_fields_total", {"topic": "queries"}
    )


async def test_tolerant_mode_routes_the_query_and_counts_its_unknown_fields(
    settings: Settings, router: Router, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.contract_mode == "tolerant"  # the default
    caplog.set_level(logging.INFO, logger="worker.pipeline.process")
    second = {**NEWER, "id": "q2"}
    producer = await _drain(settings, router, telemetry, orjson.dumps(NEWER), orjson.dumps(second))
    (intent_a, intent_b) = [
        RoutedIntent.model_validate_json(s.value) for s in producer.acked if s.topic == "routed-intents"
    ]
    assert [intent_a.query_id, intent_b.query_id] == ["q1", "q2"]
    assert intent_a.route == "music"
    assert intent_a.metadata == {"n": 1}  # metadata passes through; unknown fields do not
    assert b"locale" not in producer.acked[0].value
    assert b"channel" not in producer.acked[0].value
    assert not [s for s in producer.acked if s.topic == "queries.dlq"]
    assert _unknown_fields(telemetry) == 4  # two fields in each of two queries
    # each new field is logged once, not once per query
    assert caplog.text.count("'locale', unknown to this version") == 1
    assert caplog.text.count("'channel', unknown to this version") == 1


async def test_strict_mode_dead_letters_the_query_with_unknown_field(
    settings: Settings, router: Router, telemetry: Telemetry
) -> None:
    strict = settings.model_copy(update={"contract_mode": "strict"})
    known = {"id": "q2", "text": "play some jazz music"}
    producer = await _drain(strict, router, telemetry, orjson.dumps(NEWER), orjson.dumps(known))
    routed = [
        RoutedIntent.model_validate_json(s.value) for s in producer.acked if s.topic == "routed-intents"
    ]
    assert [i.query_id for i in routed] == ["q2"]
    (letter,) = [DeadLetter.model_validate_json(s.value) for s in producer.acked if s.topic == "queries.dlq"]
    assert letter.error_code.value == "unknown_field"
    assert "locale, channel" in letter.reason  # in the order written
    assert orjson.loads(base64.b64decode(letter.value_b64 or "")) == NEWER  # kept whole
    value = telemetry.registry.get_sample_value
    assert value("routeworker_queries_dead_lettered_total", {"error_code": "unknown_field"}) == 1
    assert not _unknown_fields(telemetry)  # refused, not ignored
