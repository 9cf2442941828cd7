"""Queries that ask why: the intent carries an explanation; others do not; a setting explains all."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from pipeline_fakes import FakeConsumer, FakeProducer, HashingEncoder

from worker.config import Settings
from worker.contracts import RoutedIntent
from worker.pipeline import QueryPipeline
from worker.pipeline.search import SearchThread
from worker.routing import Router, RouteTable
from worker.telemetry import Telemetry


async def routed(
    settings: Settings,
    encoder: HashingEncoder,
    table: RouteTable,
    telemetry: Telemetry,
    queries: list[dict[str, object]],
) -> dict[str, RoutedIntent]:
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
    task = asyncio.create_task(pipeline.run())
    try:
        for query in queries:  # one at a time: a later one may reuse an earlier decision
            consumer.append(0, orjson.dumps(query))
            async with asyncio.timeout(5):
                while consumer.committed != consumer.end_offsets():  # noqa: ASYNC110 - state of the fakes
                    await asyncio.sleep(0.002)
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 5)
    intents = map(RoutedIntent.model_validate_json, (s.value for s in producer.acked))
    return {intent.query_id: intent for intent in intents}


async def test_only_queries_that_ask_are_explained_even_when_a_decision_is_remembered(
    settings: Settings, encoder: HashingEncoder, table: RouteTable, telemetry: Telemetry
) -> None:
    text = "play some jazz music"
    answers = await routed(
        settings,
        encoder,
        table,
        telemetry,
        [
            {"id": "plain", "text": text, "top_n": 3},
            {"id": "why", "text": text, "top_n": 3, "explain": True},  # the memo holds this decision
            {"id": "short", "text": text, "top_n": 1, "explain": True},
        ],
    )
    assert answers["plain"].explanation is None
    assert encoder.embedded.count(text) == 3  # an explained query is decided afresh, never remembered
    why = answers["why"].explanation
    assert why is not None
    assert why.rule == "matched"
    assert why.routes[0].route == answers["why"].route == "music"
    assert why.routes[0].nearest[0].utterance == text
    why = answers["short"].explanation
    assert why is not None
    assert why is not None
    assert why.gap_to_runner_up is not None  # the runner-up was decided too, though top_n is 1
    assert len(answers["short"].candidates) == 1
    assert why.routes_version == answers["short"].routes_version


async def test_a_setting_explains_every_query(
    settings: Settings, encoder: HashingEncoder, table: RouteTable, telemetry: Telemetry
) -> None:
    everything = settings.model_copy(update={"explain_all": True})
    answers = await routed(
        everything, encoder, table, telemetry, [{"id": "q", "text": "quantum chromodynamics"}]
    )
    why = answers["q"].explanation
    assert why is not None
    assert answers["q"].route is None
    assert why.rule in ("below_threshold", "no_candidates")


async def test_a_failing_explanation_leaves_the_answer_without_one(
    settings: Settings,
    encoder: HashingEncoder,
    table: RouteTable,
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: object) -> list[object]:
        raise RuntimeError("explainer bug")

    monkeypatch.setattr(SearchThread, "explain", broken)
    answers = await routed(
        settings, encoder, table, telemetry, [{"id": "q", "text": "play some jazz music", "explain": True}]
    )
    assert answers["q"].route == "music"
    assert answers["q"].explanation is None
    assert "explaining 1 decisions failed" in caplog.text
