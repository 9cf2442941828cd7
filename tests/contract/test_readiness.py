"""The replica composition in-process: readiness gates consumption; a failing part fails the worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import orjson
import pytest
from pipeline_harness import TopicReader, Topics, build_table, create_topics, produce

from worker.app import run_worker
from worker.config import Settings
from worker.contracts import RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.local.capabilities import BrokerService
from worker.routing import RouteTable, self_fit
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration


class ScriptedReplica:
    """A stand-in RouteReplica: a fixed table, readiness and failure set by the test."""

    def __init__(self, settings: Settings, encoder: Any) -> None:
        self._table = build_table(encoder)
        self.ready = asyncio.Event()
        self.fail = asyncio.Event()
        self._stopped = asyncio.Event()
        self.opened = False

    @property
    def table(self) -> RouteTable:
        return self._table

    async def open(self) -> None:
        self.opened = True

    async def run(self) -> None:
        stopped = asyncio.ensure_future(self._stopped.wait())
        failing = asyncio.ensure_future(self.fail.wait())
        await asyncio.wait({stopped, failing}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failing.cancel()
        if self.fail.is_set():
            raise RuntimeError("mutation log is corrupt")

    async def stop(self) -> None:
        self._stopped.set()


@pytest.fixture
def encoder_factory(model_spec: ModelSpec) -> Any:
    return lambda settings: EncoderPool(model_spec, pool_size=1, max_pending=4)


async def wait_for(condition: Any, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - state of the worker under test
            await asyncio.sleep(0.02)


async def test_queries_wait_for_the_route_table_then_flow(
    any_broker: BrokerService, encoder_factory: Any
) -> None:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    replicas: list[ScriptedReplica] = []

    def replica_factory(settings: Settings, encoder: Any) -> ScriptedReplica:
        replicas.append(ScriptedReplica(settings, encoder))
        return replicas[-1]

    telemetry = Telemetry()
    worker = asyncio.create_task(
        run_worker(topics.settings(any_broker.bootstrap), telemetry, replica_factory=replica_factory,
                   encoder_factory=encoder_factory)
    )  # fmt: skip
    try:
        async with TopicReader(any_broker.bootstrap, [topics.intents]) as reader:
            query = orjson.dumps({"id": "early", "text": "play some music"})
            await produce(any_broker.bootstrap, topics.queries, [(None, query, [])])
            await wait_for(lambda: bool(replicas) and replicas[0].opened)
            await wait_for(lambda: "catching up" in telemetry.health.readiness()[1])
            assert telemetry.health.readiness()[0] is False
            assert reader.records == []
            replicas[0].ready.set()
            records = await reader.wait_for(lambda rs: len(rs) == 1)
            assert RoutedIntent.model_validate_json(records[0].value).route == "music"
            assert telemetry.health.readiness() == (
                True,
                "ready: route table caught up, 2 partitions assigned",
            )
            # a calibration applied to the table (as a replica applies one from the log) is served,
            # and the head gauge says so
            table = replicas[0].table
            calibration = self_fit(list(table.snapshot().routes()))
            table.apply([], [], table.version, calibration=calibration)
            await wait_for(
                lambda: telemetry.registry.get_sample_value("routeworker_route_head_routes") == len(table)
            )
    finally:
        if not worker.done():  # run_worker's own handler turns it into a graceful stop
            os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(worker, 60) == 0


async def test_a_failing_replica_stops_the_worker_with_a_non_zero_status(
    any_broker: BrokerService, encoder_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics.fresh()
    await create_topics(any_broker.bootstrap, topics)
    replicas: list[ScriptedReplica] = []

    def replica_factory(settings: Settings, encoder: Any) -> ScriptedReplica:
        replicas.append(ScriptedReplica(settings, encoder))
        replicas[-1].ready.set()
        return replicas[-1]

    telemetry = Telemetry()
    worker = asyncio.create_task(
        run_worker(topics.settings(any_broker.bootstrap), telemetry, replica_factory=replica_factory,
                   encoder_factory=encoder_factory)
    )  # fmt: skip
    await wait_for(lambda: telemetry.health.readiness()[0])
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        replicas[0].fail.set()
        assert await asyncio.wait_for(worker, 60) == 1
    assert "mutation log is corrupt" in caplog.text
    assert telemetry.health.liveness()[0] is False
