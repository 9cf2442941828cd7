"""The route failpoint (the fault suite's poison query): off by default; when set, the queries it
names fail inside the router step and take the poison-query path, nothing else changes."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from aiokafka.structs import TopicPartition
from pipeline_fakes import FakeConsumer, FakeProducer, HashingEncoder

from worker.config import Settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.pipeline import QueryPipeline
from worker.pipeline.failpoints import ROUTE_QUERY_ENV, FailpointHit, RouteFailpoint, route_failpoint
from worker.routing import Router
from worker.telemetry import Telemetry

P0 = TopicPartition("queries", 0)


def query(i: int, text: str) -> bytes:
    return orjson.dumps({"id": f"q{i}", "text": text})


def test_it_is_off_unless_its_variable_is_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert route_failpoint({}) is None
        assert route_failpoint({ROUTE_QUERY_ENV: ""}) is None
        assert route_failpoint({"ROUTEWORKER_FAILPOINTS": "poison"}) is None  # only its own name
    assert caplog.records == []


def test_set_it_names_itself_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert route_failpoint({ROUTE_QUERY_ENV: "poison pill"}) == RouteFailpoint("poison pill")
    (warning,) = caplog.records
    assert "fault injection is ON" in warning.getMessage()
    assert ROUTE_QUERY_ENV in warning.getMessage()


def test_it_fires_on_a_text_containing_its_marker_only() -> None:
    failpoint = RouteFailpoint("poison pill")
    failpoint.check(["play some jazz", "poison", "pill"])
    failpoint.check([])
    with pytest.raises(FailpointHit, match="poison pill"):
        failpoint.check(["play some jazz", "a poison pill inside"])


async def until_committed(consumer: FakeConsumer, offsets: dict[TopicPartition, int]) -> None:
    async with asyncio.timeout(5):
        while consumer.committed != offsets:  # noqa: ASYNC110 - state of the fakes under test
            await asyncio.sleep(0.002)


async def test_a_named_query_is_dead_lettered_and_its_batch_routed(
    settings: Settings,
    encoder: HashingEncoder,
    router: Router,
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ROUTE_QUERY_ENV, "poison pill")
    consumer, producer = FakeConsumer(), FakeProducer()
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=router, telemetry=telemetry, consumer=consumer, producers=producer
    )
    consumer.append(0, query(0, "play some jazz music"))
    consumer.append(0, query(1, "a poison pill for the router"), key=b"bad")
    consumer.append(0, query(2, "send money"))
    task = asyncio.create_task(pipeline.run())
    try:
        await until_committed(consumer, {P0: 3})
        consumer.append(0, query(3, "poison pill alone in its batch"))  # the probe has no text
        await until_committed(consumer, {P0: 4})
    finally:
        pipeline.stop()
    await asyncio.wait_for(task, 5)  # no RouterBroken: the pipeline goes on
    routed = [
        RoutedIntent.model_validate_json(s.value) for s in producer.acked if s.topic == "routed-intents"
    ]
    dead = [DeadLetter.model_validate_json(s.value) for s in producer.acked if s.topic == "queries.dlq"]
    assert sorted(i.query_id for i in routed) == ["q0", "q2"]
    assert [(d.error_code.value, d.source.offset) for d in dead] == [
        ("routing_failed", 1),
        ("routing_failed", 3),
    ]
    assert f"routing failed: FailpointHit: failpoint {ROUTE_QUERY_ENV}" in dead[0].reason
